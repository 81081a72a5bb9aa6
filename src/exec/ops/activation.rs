//! Activations and normalizing maps: Relu, LeakyRelu, PRelu, Clip, Sigmoid,
//! HardSigmoid, HardSwish, Tanh, Erf, Gelu, Softmax, LogSoftmax.
//! All are built from differentiable candle ops (Relu on f32 CPU tensors: amct's kernel).

use candle_core::{Tensor, D};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;

fn unary(ctx: &OpCtx, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    Ok(vec![Value::new(f(&ctx.float_tensor(0)?)?, v.dtype)])
}

pub fn relu(ctx: &OpCtx) -> Result<Vec<Value>> {
    unary(ctx, crate::exec::kernels::relu::relu)
}

pub fn tanh(ctx: &OpCtx) -> Result<Vec<Value>> {
    unary(ctx, Tensor::tanh)
}

pub fn erf(ctx: &OpCtx) -> Result<Vec<Value>> {
    unary(ctx, Tensor::erf)
}

pub fn sigmoid(ctx: &OpCtx) -> Result<Vec<Value>> {
    unary(ctx, sigmoid_of)
}

fn sigmoid_of(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

pub fn leaky_relu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = ctx.node.float_or("alpha", 0.01) as f64;
    // relu(x) - alpha * relu(-x) equals x for x > 0 and alpha * x otherwise.
    unary(ctx, |x| x.relu()? - (x.neg()?.relu()? * alpha)?)
}

pub fn prelu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let slope = ctx.float_tensor(1)?;
    unary(ctx, |x| {
        x.relu()? - x.neg()?.relu()?.broadcast_mul(&slope)?
    })
}

pub fn hard_sigmoid(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = ctx.node.float_or("alpha", 0.2) as f64;
    let beta = ctx.node.float_or("beta", 0.5) as f64;
    unary(ctx, |x| x.affine(alpha, beta)?.clamp(0.0, 1.0))
}

pub fn hard_swish(ctx: &OpCtx) -> Result<Vec<Value>> {
    unary(ctx, |x| x * x.affine(1.0 / 6.0, 0.5)?.clamp(0.0, 1.0)?)
}

pub fn gelu(ctx: &OpCtx) -> Result<Vec<Value>> {
    match ctx.node.attr_string("approximate").as_deref() {
        None | Some("none") => unary(ctx, Tensor::gelu_erf),
        Some("tanh") => unary(ctx, Tensor::gelu),
        Some(other) => Err(ctx.unsupported(&format!("approximate='{other}'"))),
    }
}

/// Clip with bounds from attributes (opset < 11) or inputs 1 and 2. Bound
/// inputs stay tensors, so a trainable bound receives its gradient.
pub fn clip(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let mut t = v.tensor.clone();
    if ctx.opset < 11 {
        if let Some(lo) = ctx.node.attr_float("min") {
            t = t.maximum(lo as f64)?;
        }
        if let Some(hi) = ctx.node.attr_float("max") {
            t = t.minimum(hi as f64)?;
        }
    } else {
        if let Some(lo) = ctx.opt_input(1) {
            t = t.broadcast_maximum(&lo.tensor.to_dtype(t.dtype())?)?;
        }
        if let Some(hi) = ctx.opt_input(2) {
            t = t.broadcast_minimum(&hi.tensor.to_dtype(t.dtype())?)?;
        }
    }
    Ok(vec![Value::new(t, v.dtype)])
}

pub fn softmax(ctx: &OpCtx) -> Result<Vec<Value>> {
    along_axis(ctx, |x, d| {
        let m = x.max_keepdim(d)?.detach();
        let e = x.broadcast_sub(&m)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(d)?)
    })
}

pub fn log_softmax(ctx: &OpCtx) -> Result<Vec<Value>> {
    along_axis(ctx, |x, d| {
        let m = x.max_keepdim(d)?.detach();
        let shifted = x.broadcast_sub(&m)?;
        shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(d)?.log()?)
    })
}

/// Applies `f` along the softmax axis. Before opset 13 the input is viewed
/// as 2-D ([d0..axis), [axis..)) and `f` runs over the second dimension.
fn along_axis(
    ctx: &OpCtx,
    f: impl Fn(&Tensor, D) -> candle_core::Result<Tensor>,
) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let rank = x.rank();
    let out = if ctx.opset < 13 {
        let axis = ctx.axis(ctx.node.int_or("axis", 1), rank)?;
        let dims = x.dims().to_vec();
        let rows: usize = dims[..axis].iter().product();
        let flat = x.reshape((rows, x.elem_count() / rows.max(1)))?;
        f(&flat, D::Minus1)?.reshape(dims)?
    } else {
        let axis = ctx.axis(ctx.node.int_or("axis", -1), rank)?;
        if axis + 1 == rank {
            f(&x, D::Minus1)?
        } else {
            f(&x.transpose(axis, rank - 1)?, D::Minus1)?.transpose(axis, rank - 1)?
        }
    };
    Ok(vec![Value::new(out, v.dtype)])
}
