//! Tensor generators and repeats: Range and Tile.
//!
//! Range computes its length as ceil((limit - start) / delta) (at least 0)
//! and accumulates `start + delta + delta ...` in the value's own precision,
//! as onnxruntime does, so float ranges match it bit for bit. Tile repeats
//! with `Tensor::repeat` (concatenations), which backpropagates.

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::DType;

/// Largest Range output amct agrees to build.
const MAX_RANGE: f64 = (1u64 << 31) as f64;

pub fn range(ctx: &OpCtx) -> Result<Vec<Value>> {
    let dtype = ctx.input(0)?.dtype;
    let scalar = |i: usize| -> Result<Value> {
        let v = ctx.input(i)?;
        if v.tensor.elem_count() != 1 {
            return Err(ctx.err(&format!("input #{i} must be a scalar")));
        }
        Ok(v.clone())
    };
    let (start, limit, delta) = (scalar(0)?, scalar(1)?, scalar(2)?);
    let out = if dtype.is_float() {
        let (s, l, d) = (
            start.to_f64_vec()?[0],
            limit.to_f64_vec()?[0],
            delta.to_f64_vec()?[0],
        );
        let n = count(
            ctx,
            if dtype == DType::F32 {
                (l as f32 - s as f32) as f64
            } else {
                l - s
            },
            d,
        )?;
        let values: Vec<f64> = if dtype == DType::F32 {
            let (mut v, d) = (s as f32, d as f32);
            (0..n)
                .map(|_| {
                    let cur = v;
                    v += d;
                    cur as f64
                })
                .collect()
        } else {
            let mut v = s;
            (0..n)
                .map(|_| {
                    let cur = v;
                    v += d;
                    cur
                })
                .collect()
        };
        Tensor::from_vec(values, n, ctx.device)?.to_dtype(ctx.float)?
    } else {
        let (s, l, d) = (
            start.to_i64_vec()?[0],
            limit.to_i64_vec()?[0],
            delta.to_i64_vec()?[0],
        );
        let n = count(ctx, l as f64 - s as f64, d as f64)?;
        let values: Vec<i64> = (0..n as i64)
            .map(|i| s.wrapping_add(i.wrapping_mul(d)))
            .collect();
        Tensor::from_vec(values, n, ctx.device)?
    };
    Ok(vec![Value::new(out, dtype)])
}

fn count(ctx: &OpCtx, span: f64, delta: f64) -> Result<usize> {
    if delta == 0.0 {
        return Err(ctx.err("Range delta cannot be 0"));
    }
    let n = (span / delta).ceil();
    if n.is_nan() || n > MAX_RANGE {
        return Err(ctx.err(&format!("Range would have {n} elements")));
    }
    Ok(n.max(0.0) as usize)
}

pub fn tile(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let repeats = ctx
        .ints_input(1)?
        .ok_or_else(|| ctx.err("missing 'repeats' input"))?;
    if repeats.len() != v.rank() || repeats.iter().any(|&r| r < 0) {
        return Err(ctx.err(&format!(
            "repeats {repeats:?} do not fit input of rank {}",
            v.rank()
        )));
    }
    if repeats.is_empty() || repeats.iter().all(|&r| r == 1) {
        return Ok(vec![v.clone()]);
    }
    let reps: Vec<usize> = repeats.iter().map(|&r| r as usize).collect();
    let t = if reps.contains(&0) {
        let dims: Vec<usize> = v.dims().iter().zip(&reps).map(|(d, r)| d * r).collect();
        Tensor::zeros(dims, v.tensor.dtype(), ctx.device)?
    } else {
        v.tensor.repeat(reps)?
    };
    Ok(vec![Value::new(t, v.dtype)])
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::graph::DType;

    #[test]
    fn range_float_accumulates_like_onnxruntime() {
        let n = node("Range", &["a", "b", "c"]);
        let s = |v: f32| f32v(&[], &[v]);
        let y = run1(&n, 17, &[("a", &s(0.1)), ("b", &s(1.0)), ("c", &s(0.3))]);
        // onnxruntime: [0.1, 0.4, 0.70000005]
        assert_eq!(f32s(&y), vec![0.1, 0.4, 0.700_000_05]);
        let y = run1(&n, 17, &[("a", &s(1.0)), ("b", &s(1.0)), ("c", &s(0.3))]);
        assert_eq!(y.dims(), &[0]);
    }

    #[test]
    fn range_int_negative_delta() {
        let n = node("Range", &["a", "b", "c"]);
        let s = |v: i64| intv(&[], &[v], DType::I32);
        let y = run1(&n, 17, &[("a", &s(10)), ("b", &s(1)), ("c", &s(-3))]);
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(i64s(&y), vec![10, 7, 4]);
        assert!(run_node(&n, 17, &[("a", &s(0)), ("b", &s(1)), ("c", &s(0))]).is_err());
    }

    #[test]
    fn tile_repeats() {
        let x = f32v(&[2, 2], &[1., 2., 3., 4.]);
        let n = node("Tile", &["x", "r"]);
        let y = run1(&n, 13, &[("x", &x), ("r", &ints(&[2, 3]))]);
        assert_eq!(y.dims(), &[4, 6]);
        assert_eq!(
            f32s(&y),
            vec![
                1., 2., 1., 2., 1., 2., 3., 4., 3., 4., 3., 4., 1., 2., 1., 2., 1., 2., 3., 4., 3.,
                4., 3., 4.
            ]
        );
        let y = run1(&n, 13, &[("x", &x), ("r", &ints(&[0, 2]))]);
        assert_eq!(y.dims(), &[0, 4]);
        assert!(run_node(&n, 13, &[("x", &x), ("r", &ints(&[2]))]).is_err());
        grad_check(&n, 13, &[("x", &x), ("r", &ints(&[2, 3]))], "x");
    }
}
