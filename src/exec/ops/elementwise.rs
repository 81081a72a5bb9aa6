//! Element-wise arithmetic with numpy broadcasting: Add, Sub, Mul, Div, Pow,
//! Sqrt, Max, Min, Sum, Mean, Where. Integer inputs stay integer (candle
//! i64); the result keeps the first input's ONNX type.

use candle_core::{DType as CDType, Tensor};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::kernels::add_act::add_activate;
use crate::exec::kernels::conv2d::FusedActivation;
use crate::exec::Value;

fn binary(
    ctx: &OpCtx,
    f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<Value>> {
    let (a, b) = (ctx.input(0)?, ctx.input(1)?);
    let (ta, tb) = same_storage(ctx, &a.tensor, &b.tensor)?;
    Ok(vec![Value::new(f(&ta, &tb)?, a.dtype)])
}

/// Brings two tensors to one candle type (float wins over integer).
fn same_storage(ctx: &OpCtx, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok(match (a.dtype().is_float(), b.dtype().is_float()) {
        (true, false) => (a.clone(), b.to_dtype(a.dtype())?),
        (false, true) => (a.to_dtype(b.dtype())?, b.clone()),
        _ if a.dtype() != b.dtype() => (a.to_dtype(ctx.float)?, b.to_dtype(ctx.float)?),
        _ => (a.clone(), b.clone()),
    })
}

pub fn add(ctx: &OpCtx) -> Result<Vec<Value>> {
    if ctx.activation != FusedActivation::None {
        // An Add fused with its Relu/Clip reader by the executor (forward-only runs).
        let (a, b) = (ctx.input(0)?, ctx.input(1)?);
        if let Some(y) = add_activate(&a.tensor, &b.tensor, ctx.activation)? {
            return Ok(vec![Value::new(y, a.dtype)]);
        }
        let y = binary(ctx, Tensor::broadcast_add)?.remove(0);
        let t = match ctx.activation {
            FusedActivation::Relu => y.tensor.relu()?,
            FusedActivation::Clip(lo, hi) => y.tensor.clamp(lo, hi)?,
            FusedActivation::None => y.tensor,
        };
        return Ok(vec![Value::new(t, y.dtype)]);
    }
    binary(ctx, Tensor::broadcast_add)
}

pub fn sub(ctx: &OpCtx) -> Result<Vec<Value>> {
    binary(ctx, Tensor::broadcast_sub)
}

pub fn mul(ctx: &OpCtx) -> Result<Vec<Value>> {
    binary(ctx, Tensor::broadcast_mul)
}

pub fn div(ctx: &OpCtx) -> Result<Vec<Value>> {
    binary(ctx, Tensor::broadcast_div)
}

/// Pow: a scalar exponent uses `powf` (correct for negative bases with
/// integral exponents); a tensor exponent uses exp(y * ln x).
pub fn pow(ctx: &OpCtx) -> Result<Vec<Value>> {
    let base = ctx.input(0)?;
    let exponent = ctx.input(1)?;
    let x = ctx.float_tensor(0)?;
    let y = if exponent.tensor.elem_count() == 1 {
        let e = exponent.to_f64_vec()?[0];
        if e == 2.0 {
            x.sqr()?
        } else if e == 1.0 {
            x
        } else {
            x.powf(e)?
        }
    } else {
        // |x|^e, negated where x < 0 and e is an odd integer.
        let e = ctx.float_tensor(1)?;
        let magnitude = x.abs()?.log()?.broadcast_mul(&e)?.exp()?;
        let odd = ((&e * 0.5)?.floor()? * 2.0)?.ne(&e)?.to_dtype(x.dtype())?;
        let negative = x.lt(0.0)?.to_dtype(x.dtype())?;
        let flip = (negative.broadcast_mul(&odd)? * -2.0)?.affine(1.0, 1.0)?;
        magnitude.broadcast_mul(&flip)?
    };
    let y = if base.is_float() {
        y
    } else {
        y.round()?.to_dtype(CDType::I64)?
    };
    Ok(vec![Value::new(y, base.dtype)])
}

pub fn sqrt(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    Ok(vec![Value::new(ctx.float_tensor(0)?.sqrt()?, v.dtype)])
}

fn variadic(
    ctx: &OpCtx,
    f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<(Tensor, usize)> {
    let mut acc = ctx.tensor(0)?.clone();
    let mut count = 1;
    for i in 1..ctx.inputs.len() {
        if let Some(v) = ctx.opt_input(i) {
            let (a, b) = same_storage(ctx, &acc, &v.tensor)?;
            acc = f(&a, &b)?;
            count += 1;
        }
    }
    Ok((acc, count))
}

pub fn max(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (t, _) = variadic(ctx, Tensor::broadcast_maximum)?;
    Ok(vec![Value::new(t, ctx.input(0)?.dtype)])
}

pub fn min(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (t, _) = variadic(ctx, Tensor::broadcast_minimum)?;
    Ok(vec![Value::new(t, ctx.input(0)?.dtype)])
}

pub fn sum(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (t, _) = variadic(ctx, Tensor::broadcast_add)?;
    Ok(vec![Value::new(t, ctx.input(0)?.dtype)])
}

pub fn mean(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (t, n) = variadic(ctx, Tensor::broadcast_add)?;
    Ok(vec![Value::new((t / n as f64)?, ctx.input(0)?.dtype)])
}

/// Where(cond, x, y) with broadcasting of all three.
pub fn where_op(ctx: &OpCtx) -> Result<Vec<Value>> {
    let cond = ctx.tensor(0)?;
    let x = ctx.input(1)?;
    let (tx, ty) = same_storage(ctx, &x.tensor, ctx.tensor(2)?)?;
    let shape = cond
        .shape()
        .broadcast_shape_binary_op(tx.shape(), "Where")?
        .broadcast_shape_binary_op(ty.shape(), "Where")?;
    let pred = cond.ne(0i64)?.broadcast_as(&shape)?;
    let out = pred.where_cond(&tx.broadcast_as(&shape)?, &ty.broadcast_as(&shape)?)?;
    Ok(vec![Value::new(out, x.dtype)])
}
