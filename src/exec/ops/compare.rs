//! Comparisons and logic with numpy broadcasting: Equal, Less, LessOrEqual,
//! Greater, GreaterOrEqual, And, Or, Xor, Not, IsNaN, IsInf.
//!
//! Results are ONNX BOOL stored as candle i64 0/1. Mixed float/integer
//! operands are compared in the compute float type. Logic ops treat any
//! non-zero value as true. None of these are differentiable (their outputs
//! are booleans).

use candle_core::{DType as CDType, Tensor};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::DType;

fn boolean(t: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::new(t.to_dtype(CDType::I64)?, DType::BOOL)])
}

/// Both operands in one candle type (float wins over integer).
fn operands(ctx: &OpCtx) -> Result<(Tensor, Tensor)> {
    let (a, b) = (ctx.tensor(0)?.detach(), ctx.tensor(1)?.detach());
    Ok(match (a.dtype().is_float(), b.dtype().is_float()) {
        (true, false) => {
            let b = b.to_dtype(a.dtype())?;
            (a, b)
        }
        (false, true) => (a.to_dtype(b.dtype())?, b),
        _ if a.dtype() != b.dtype() => (a.to_dtype(ctx.float)?, b.to_dtype(ctx.float)?),
        _ => (a, b),
    })
}

fn compare(
    ctx: &OpCtx,
    f: fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<Value>> {
    let (a, b) = operands(ctx)?;
    boolean(f(&a, &b)?)
}

pub fn equal(ctx: &OpCtx) -> Result<Vec<Value>> {
    compare(ctx, Tensor::broadcast_eq)
}

pub fn less(ctx: &OpCtx) -> Result<Vec<Value>> {
    compare(ctx, Tensor::broadcast_lt)
}

pub fn less_or_equal(ctx: &OpCtx) -> Result<Vec<Value>> {
    compare(ctx, Tensor::broadcast_le)
}

pub fn greater(ctx: &OpCtx) -> Result<Vec<Value>> {
    compare(ctx, Tensor::broadcast_gt)
}

pub fn greater_or_equal(ctx: &OpCtx) -> Result<Vec<Value>> {
    compare(ctx, Tensor::broadcast_ge)
}

/// Both operands as i64 0/1 truth values.
fn truths(ctx: &OpCtx) -> Result<(Tensor, Tensor)> {
    let t = |i: usize| -> Result<Tensor> {
        Ok(ctx.tensor(i)?.detach().ne(0.0)?.to_dtype(CDType::I64)?)
    };
    Ok((t(0)?, t(1)?))
}

pub fn and(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (a, b) = truths(ctx)?;
    boolean(a.broadcast_minimum(&b)?)
}

pub fn or(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (a, b) = truths(ctx)?;
    boolean(a.broadcast_maximum(&b)?)
}

pub fn xor(ctx: &OpCtx) -> Result<Vec<Value>> {
    let (a, b) = truths(ctx)?;
    boolean(a.broadcast_ne(&b)?)
}

pub fn not(ctx: &OpCtx) -> Result<Vec<Value>> {
    boolean(ctx.tensor(0)?.detach().eq(0.0)?)
}

pub fn is_nan(ctx: &OpCtx) -> Result<Vec<Value>> {
    let x = ctx.tensor(0)?.detach();
    if !x.dtype().is_float() {
        return boolean(x.zeros_like()?);
    }
    boolean(x.ne(&x)?)
}

pub fn is_inf(ctx: &OpCtx) -> Result<Vec<Value>> {
    let x = ctx.tensor(0)?.detach();
    if !x.dtype().is_float() {
        return boolean(x.zeros_like()?);
    }
    let pos = ctx.node.int_or("detect_positive", 1) != 0;
    let neg = ctx.node.int_or("detect_negative", 1) != 0;
    let hit = |v: f64, on: bool| -> Result<Tensor> {
        Ok(if on {
            x.eq(v)?.to_dtype(CDType::I64)?
        } else {
            x.zeros_like()?.to_dtype(CDType::I64)?
        })
    };
    boolean(hit(f64::INFINITY, pos)?.broadcast_maximum(&hit(f64::NEG_INFINITY, neg)?)?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::graph::DType;

    fn cmp(op: &str, a: &crate::exec::Value, b: &crate::exec::Value) -> crate::exec::Value {
        run1(&node(op, &["a", "b"]), 17, &[("a", a), ("b", b)])
    }

    #[test]
    fn comparisons_broadcast() {
        let a = f32v(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f32v(&[3], &[2., 2., 7.]);
        let y = cmp("Equal", &a, &b);
        assert_eq!(y.dtype, DType::BOOL);
        assert_eq!(y.dims(), &[2, 3]);
        assert_eq!(i64s(&y), vec![0, 1, 0, 0, 0, 0]);
        assert_eq!(i64s(&cmp("Less", &a, &b)), vec![1, 0, 1, 0, 0, 1]);
        assert_eq!(i64s(&cmp("LessOrEqual", &a, &b)), vec![1, 1, 1, 0, 0, 1]);
        assert_eq!(i64s(&cmp("Greater", &a, &b)), vec![0, 0, 0, 1, 1, 0]);
        assert_eq!(i64s(&cmp("GreaterOrEqual", &a, &b)), vec![0, 1, 0, 1, 1, 0]);
        let ai = i64v(&[3], &[5, -1, 7]);
        let bi = intv(&[], &[5], DType::I32);
        assert_eq!(i64s(&cmp("Equal", &ai, &bi)), vec![1, 0, 0]);
        assert_eq!(i64s(&cmp("Greater", &ai, &bi)), vec![0, 0, 1]);
    }

    #[test]
    fn logic() {
        let a = intv(&[4], &[0, 0, 1, 1], DType::BOOL);
        let b = intv(&[4], &[0, 1, 0, 1], DType::BOOL);
        assert_eq!(i64s(&cmp("And", &a, &b)), vec![0, 0, 0, 1]);
        assert_eq!(i64s(&cmp("Or", &a, &b)), vec![0, 1, 1, 1]);
        assert_eq!(i64s(&cmp("Xor", &a, &b)), vec![0, 1, 1, 0]);
        let y = run1(&node("Not", &["x"]), 17, &[("x", &a)]);
        assert_eq!(y.dtype, DType::BOOL);
        assert_eq!(i64s(&y), vec![1, 1, 0, 0]);
    }

    #[test]
    fn nan_and_inf() {
        let x = f32v(&[4], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0]);
        assert_eq!(
            i64s(&run1(&node("IsNaN", &["x"]), 17, &[("x", &x)])),
            vec![1, 0, 0, 0]
        );
        let mut n = node("IsInf", &["x"]);
        assert_eq!(i64s(&run1(&n, 17, &[("x", &x)])), vec![0, 1, 1, 0]);
        n.set_int("detect_negative", 0);
        assert_eq!(i64s(&run1(&n, 17, &[("x", &x)])), vec![0, 1, 0, 0]);
    }
}
