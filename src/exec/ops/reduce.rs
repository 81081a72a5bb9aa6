//! Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd,
//! ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp, and
//! ArgMax/ArgMin.
//!
//! `axes` is an attribute before opset 13 (ReduceSum) or 18 (the others) and
//! an input afterwards; either form is accepted at any opset. `keepdims`
//! defaults to 1; with no axes every axis is reduced unless
//! `noop_with_empty_axes` is set, in which case the input is returned
//! unchanged (as onnxruntime does). Integer inputs stay integer for Sum,
//! Max, Min, Prod, L1 and SumSquare; integer ReduceMean truncates toward
//! zero. Reducing an empty axis gives the reduction's identity (0, 1,
//! -inf/+inf). Float reductions are differentiable; LogSumExp subtracts a
//! detached maximum for stability. ArgMax/ArgMin (not differentiable) give
//! the first extreme index, or the last with `select_last_index`.

use candle_core::{DType as CDType, Tensor};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::DType;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

impl Kind {
    /// Whether integer inputs are reduced in integer arithmetic.
    fn keeps_integers(self) -> bool {
        matches!(
            self,
            Kind::Sum
                | Kind::Mean
                | Kind::Max
                | Kind::Min
                | Kind::Prod
                | Kind::L1
                | Kind::SumSquare
        )
    }

    /// Value of the reduction over no elements.
    fn identity(self) -> f64 {
        match self {
            Kind::Prod => 1.0,
            Kind::Max | Kind::LogSum | Kind::LogSumExp => f64::NEG_INFINITY,
            Kind::Min => f64::INFINITY,
            Kind::Mean => f64::NAN,
            _ => 0.0,
        }
    }
}

pub fn reduce_sum(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::Sum)
}
pub fn reduce_mean(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::Mean)
}
pub fn reduce_max(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::Max)
}
pub fn reduce_min(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::Min)
}
pub fn reduce_prod(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::Prod)
}
pub fn reduce_l1(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::L1)
}
pub fn reduce_l2(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::L2)
}
pub fn reduce_sum_square(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::SumSquare)
}
pub fn reduce_log_sum(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::LogSum)
}
pub fn reduce_log_sum_exp(ctx: &OpCtx) -> Result<Vec<Value>> {
    reduce(ctx, Kind::LogSumExp)
}

fn reduce(ctx: &OpCtx, kind: Kind) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let keepdims = ctx.node.int_or("keepdims", 1) != 0;
    let noop = ctx.node.int_or("noop_with_empty_axes", 0) != 0;
    let rank = v.rank();
    let axes = match ctx.ints_attr_or_input("axes", 1)? {
        Some(a) if !a.is_empty() => {
            let mut axes: Vec<usize> = a
                .iter()
                .map(|&a| ctx.axis(a, rank))
                .collect::<Result<_>>()?;
            axes.sort_unstable();
            axes.dedup();
            axes
        }
        _ if noop => return Ok(vec![v.clone()]),
        _ => (0..rank).collect(),
    };
    if rank == 0 {
        // A scalar reduces to itself through the reduction's element map.
        let t = reduce_keepdim(ctx, kind, &v.tensor.reshape(1)?, &[0])?;
        return Ok(vec![Value::new(t.reshape(())?, v.dtype)]);
    }
    let t = reduce_keepdim(ctx, kind, &v.tensor, &axes)?;
    let t = if keepdims {
        t
    } else {
        let dims: Vec<usize> = (0..rank)
            .filter(|a| !axes.contains(a))
            .map(|a| v.dims()[a])
            .collect();
        t.reshape(dims)?
    };
    Ok(vec![Value::new(t, v.dtype)])
}

/// Reduces `x` over `axes`, keeping them as size-1 dimensions. Integer
/// inputs give integer results (float-only reductions truncate toward zero).
fn reduce_keepdim(ctx: &OpCtx, kind: Kind, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    let integer = !x.dtype().is_float();
    if integer && !kind.keeps_integers() {
        let r = reduce_keepdim(ctx, kind, &x.to_dtype(ctx.float)?, axes)?;
        return Ok(r.to_dtype(CDType::I64)?);
    }
    let x = x.clone();
    let mut out_dims = x.dims().to_vec();
    axes.iter().for_each(|&a| out_dims[a] = 1);
    if axes.iter().any(|&a| x.dims()[a] == 0) {
        let id = kind.identity();
        return Ok(if x.dtype().is_float() {
            Tensor::full(id, out_dims, ctx.device)?.to_dtype(x.dtype())?
        } else {
            let id = if id.is_infinite() {
                if id > 0.0 {
                    i64::MAX
                } else {
                    i64::MIN
                }
            } else {
                id as i64
            };
            Tensor::full(id, out_dims, ctx.device)?.to_dtype(x.dtype())?
        });
    }
    let count: usize = axes.iter().map(|&a| x.dims()[a]).product();
    let axes_v = axes.to_vec();
    Ok(match kind {
        Kind::Sum => x.sum_keepdim(axes_v)?,
        Kind::Mean if x.dtype().is_float() => (x.sum_keepdim(axes_v)? / count as f64)?,
        Kind::Mean => {
            // Integer mean truncates toward zero, like onnxruntime.
            let sums = x.sum_keepdim(axes_v)?;
            let q: Vec<i64> = sums
                .flatten_all()?
                .to_vec1::<i64>()?
                .iter()
                .map(|s| s / count as i64)
                .collect();
            Tensor::from_vec(q, sums.shape(), ctx.device)?
        }
        Kind::Max => fold_axes(&x, axes, |t, a| t.max_keepdim(a))?,
        Kind::Min => fold_axes(&x, axes, |t, a| t.min_keepdim(a))?,
        Kind::Prod => fold_axes(&x, axes, prod_keepdim)?,
        Kind::L1 => x.abs()?.sum_keepdim(axes_v)?,
        Kind::L2 => (&x * &x)?.sum_keepdim(axes_v)?.sqrt()?,
        Kind::SumSquare => (&x * &x)?.sum_keepdim(axes_v)?,
        Kind::LogSum => x.sum_keepdim(axes_v)?.log()?,
        Kind::LogSumExp => {
            let m = fold_axes(&x, axes, |t, a| t.max_keepdim(a))?.detach();
            // Rows that are all -inf (or hold +inf) keep a zero shift.
            let m = m
                .abs()?
                .lt(f64::INFINITY)?
                .where_cond(&m, &m.zeros_like()?)?;
            (x.broadcast_sub(&m)?.exp()?.sum_keepdim(axes_v)?.log()? + m)?
        }
    })
}

fn fold_axes(
    x: &Tensor,
    axes: &[usize],
    f: impl Fn(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let mut t = x.clone();
    for &a in axes {
        t = f(&t, a)?;
    }
    Ok(t)
}

/// Product along `axis` as a chain of multiplies (differentiable, and in
/// onnxruntime's sequential order).
fn prod_keepdim(t: &Tensor, axis: usize) -> candle_core::Result<Tensor> {
    let n = t.dim(axis)?;
    let mut acc = t.narrow(axis, 0, 1)?;
    for i in 1..n {
        acc = (acc * t.narrow(axis, i, 1)?)?;
    }
    Ok(acc)
}

pub fn arg_max(ctx: &OpCtx) -> Result<Vec<Value>> {
    arg_extreme(ctx, true)
}

pub fn arg_min(ctx: &OpCtx) -> Result<Vec<Value>> {
    arg_extreme(ctx, false)
}

fn arg_extreme(ctx: &OpCtx, max: bool) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    if v.rank() == 0 {
        return Err(ctx.err("needs an input of rank >= 1"));
    }
    let axis = ctx.axis(ctx.node.int_or("axis", 0), v.rank())?;
    let keepdims = ctx.node.int_or("keepdims", 1) != 0;
    let last = ctx.node.int_or("select_last_index", 0) != 0;
    let n = v.dims()[axis];
    if n == 0 {
        return Err(ctx.err("cannot take the arg-extreme of an empty axis"));
    }
    let x = v.tensor.detach();
    let x = if last { x.flip(&[axis])? } else { x };
    let idx = if max {
        x.argmax_keepdim(axis)?
    } else {
        x.argmin_keepdim(axis)?
    };
    let idx = idx.to_dtype(CDType::I64)?;
    let idx = if last {
        Tensor::full((n - 1) as i64, idx.shape(), ctx.device)?.sub(&idx)?
    } else {
        idx
    };
    let idx = if keepdims { idx } else { idx.squeeze(axis)? };
    Ok(vec![Value::new(idx, DType::I64)])
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::exec::Value;
    use crate::graph::{DType, Node};

    fn x23() -> Value {
        f32v(&[2, 3], &[1., -2., 3., 4., 5., -6.])
    }

    fn red(op: &str, axes: Option<&[i64]>, keepdims: i64) -> Node {
        let mut n = node(op, &["x"]);
        if let Some(a) = axes {
            n.set_ints("axes", a);
        }
        n.set_int("keepdims", keepdims);
        n
    }

    #[test]
    fn axes_attribute_and_input() {
        // Attribute form (opset 11/17), input form (opset 13 ReduceSum / 18 others).
        let y = run1(&red("ReduceMean", Some(&[1]), 1), 17, &[("x", &x23())]);
        assert_eq!(y.dims(), &[2, 1]);
        assert_close(&f32s(&y), &[2.0 / 3.0, 1.0], 1e-6);
        let mut n = node("ReduceSum", &["x", "a"]);
        n.set_int("keepdims", 0);
        let y = run1(&n, 13, &[("x", &x23()), ("a", &ints(&[-2]))]);
        assert_eq!(y.dims(), &[3]);
        assert_eq!(f32s(&y), vec![5., 3., -3.]);
        let mut n = node("ReduceMax", &["x", "a"]);
        n.set_int("keepdims", 0);
        let y = run1(&n, 18, &[("x", &x23()), ("a", &ints(&[1]))]);
        assert_eq!(f32s(&y), vec![3., 5.]);
        // No axes: reduce all; keepdims keeps rank.
        let y = run1(&red("ReduceMin", None, 1), 17, &[("x", &x23())]);
        assert_eq!(y.dims(), &[1, 1]);
        assert_eq!(f32s(&y), vec![-6.]);
        let y = run1(&red("ReduceSum", None, 0), 11, &[("x", &x23())]);
        assert_eq!(y.dims(), &[] as &[usize]);
        assert_eq!(f32s(&y), vec![5.]);
    }

    #[test]
    fn noop_with_empty_axes() {
        let mut n = node("ReduceSum", &["x", "a"]);
        n.set_int("noop_with_empty_axes", 1);
        let y = run1(&n, 13, &[("x", &x23()), ("a", &i64v(&[0], &[]))]);
        assert_eq!(y.dims(), &[2, 3]);
        assert_eq!(f32s(&y), f32s(&x23()));
        let mut n = node("ReduceL2", &["x"]);
        n.set_int("noop_with_empty_axes", 1);
        let y = run1(&n, 18, &[("x", &x23())]);
        assert_eq!(f32s(&y), f32s(&x23()));
        // Without noop an empty axes input reduces everything.
        let n = node("ReduceSum", &["x", "a"]);
        let y = run1(&n, 13, &[("x", &x23()), ("a", &i64v(&[0], &[]))]);
        assert_eq!(f32s(&y), vec![5.]);
    }

    #[test]
    fn all_kinds() {
        let x = x23();
        let get = |op: &str| f32s(&run1(&red(op, Some(&[1]), 0), 13, &[("x", &x)]));
        assert_eq!(get("ReduceProd"), vec![-6., -120.]);
        assert_eq!(get("ReduceL1"), vec![6., 15.]);
        assert_close(&get("ReduceL2"), &[14f32.sqrt(), 77f32.sqrt()], 1e-6);
        assert_eq!(get("ReduceSumSquare"), vec![14., 77.]);
        assert_close(&get("ReduceLogSum"), &[2f32.ln(), 3f32.ln()], 1e-6);
        let lse = |v: &[f32]| v.iter().map(|a| (*a as f64).exp()).sum::<f64>().ln() as f32;
        assert_close(
            &get("ReduceLogSumExp"),
            &[lse(&[1., -2., 3.]), lse(&[4., 5., -6.])],
            1e-6,
        );
        // Large values stay finite.
        let big = f32v(&[2], &[1000., 1000.]);
        let y = run1(&red("ReduceLogSumExp", None, 0), 13, &[("x", &big)]);
        assert_close(&f32s(&y), &[1000.0 + 2f32.ln()], 1e-6);
        // Multiple axes on rank 3.
        let x3 = f32v(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let y = run1(&red("ReduceMax", Some(&[0, 2]), 1), 13, &[("x", &x3)]);
        assert_eq!(y.dims(), &[1, 2, 1]);
        assert_eq!(f32s(&y), vec![6., 8.]);
        let y = run1(&red("ReduceProd", Some(&[2, 0]), 0), 13, &[("x", &x3)]);
        assert_eq!(f32s(&y), vec![60., 672.]);
    }

    #[test]
    fn integers_and_empty() {
        let xi = intv(&[2, 2], &[1, 2, 3, 5], DType::I32);
        let y = run1(&red("ReduceSum", Some(&[1]), 0), 11, &[("x", &xi)]);
        assert_eq!(y.dtype, DType::I32);
        assert!(!y.is_float());
        assert_eq!(i64s(&y), vec![3, 8]);
        let y = run1(&red("ReduceMax", Some(&[0]), 0), 13, &[("x", &xi)]);
        assert_eq!(i64s(&y), vec![3, 5]);
        let y = run1(&red("ReduceL2", Some(&[1]), 0), 13, &[("x", &xi)]);
        assert!(!y.is_float());
        assert_eq!(i64s(&y), vec![2, 5]); // sqrt(5), sqrt(34) truncated
        let xn = intv(&[2, 2], &[-1, -2, 3, 5], DType::I32);
        let y = run1(&red("ReduceMean", Some(&[1]), 1), 13, &[("x", &xn)]);
        assert_eq!(i64s(&y), vec![-1, 4]);
        let empty = f32v(&[2, 0], &[]);
        let y = run1(&red("ReduceMax", Some(&[1]), 1), 13, &[("x", &empty)]);
        assert_eq!(y.dims(), &[2, 1]);
        assert_eq!(f32s(&y), vec![f32::NEG_INFINITY; 2]);
        let y = run1(&red("ReduceSum", Some(&[1]), 1), 11, &[("x", &empty)]);
        assert_eq!(f32s(&y), vec![0.; 2]);
    }

    #[test]
    fn arg_max_min() {
        let x = f32v(&[2, 3], &[1., 3., 3., 2., 2., 1.]);
        let mut n = node("ArgMax", &["x"]);
        n.set_int("axis", 1);
        let y = run1(&n, 13, &[("x", &x)]);
        assert_eq!(y.dims(), &[2, 1]);
        assert_eq!(y.dtype, DType::I64);
        assert_eq!(i64s(&y), vec![1, 0]);
        n.set_int("select_last_index", 1);
        n.set_int("keepdims", 0);
        let y = run1(&n, 13, &[("x", &x)]);
        assert_eq!(y.dims(), &[2]);
        assert_eq!(i64s(&y), vec![2, 1]);
        let mut n = node("ArgMin", &["x"]);
        n.set_int("keepdims", 0);
        let y = run1(&n, 13, &[("x", &i64v(&[2, 3], &[5, 0, 7, 5, 1, -7]))]);
        assert_eq!(i64s(&y), vec![0, 0, 1]);
        n.set_int("select_last_index", 1);
        let y = run1(&n, 13, &[("x", &i64v(&[2, 3], &[5, 0, 7, 5, 1, -7]))]);
        assert_eq!(i64s(&y), vec![1, 0, 1]);
    }

    #[test]
    fn gradients_flow() {
        let x = f32v(&[2, 3], &[0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
        for op in [
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceSumSquare",
            "ReduceLogSumExp",
        ] {
            grad_check(&red(op, Some(&[1]), 0), 13, &[("x", &x)], "x");
            grad_check(&red(op, None, 1), 13, &[("x", &x)], "x");
        }
        let pos = f32v(&[2, 3], &[0.5, 1.0, 2.0, 1.5, 0.25, 0.75]);
        grad_check(&red("ReduceLogSum", Some(&[0]), 1), 13, &[("x", &pos)], "x");
    }
}
