//! Indexing ops: Slice (starts/ends/axes attributes before opset 10; starts,
//! ends, axes, steps inputs from opset 10), Gather and GatherElements.
//!
//! Index arithmetic (negative indices, clamping, INT_MAX/INT_MIN bounds,
//! negative steps) follows onnxruntime and is done on the host; the data is
//! moved only with `narrow`, `index_select` and `gather`, which candle can
//! backpropagate through. Out-of-range Gather indices are an error.

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;

/// The elements one Slice axis keeps: first index, count and step.
#[derive(Debug, PartialEq)]
struct AxisSlice {
    first: i64,
    count: usize,
    step: i64,
}

/// Resolves (start, end, step) against a dimension of size `dim` the way
/// onnxruntime does: an end of INT_MAX means "to the far end" in either
/// direction, negative values count from the end, then start is
/// clamped to [0, dim] ([0, dim-1] when stepping backwards) and end to
/// [0, dim] ([-1, dim-1] when stepping backwards).
fn axis_slice(start: i64, end: i64, step: i64, dim: i64) -> AxisSlice {
    // onnxruntime reads an end of INT32_MAX or INT64_MAX as "past the last
    // element in the step direction", also when stepping backwards.
    let end = match end {
        e if (e == i64::MAX || e == i32::MAX as i64) && step < 0 => -dim - 1,
        e => e,
    };
    let wrap = |v: i64| if v < 0 { v + dim } else { v };
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let (s, e) = if step > 0 {
        (clamp(wrap(start), 0, dim), clamp(wrap(end), 0, dim))
    } else {
        (
            clamp(wrap(start), 0, dim - 1),
            clamp(wrap(end), -1, dim - 1),
        )
    };
    let span = if step > 0 {
        e as i128 - s as i128
    } else {
        s as i128 - e as i128
    };
    let count = if span > 0 {
        ((span - 1) / (step as i128).abs() + 1) as usize
    } else {
        0
    };
    AxisSlice {
        first: s,
        count,
        step,
    }
}

/// Takes `count` elements of `t` along `axis` starting at `first`, `step` apart.
fn take_strided(t: &Tensor, axis: usize, s: &AxisSlice) -> Result<Tensor> {
    if s.count == 0 {
        return Ok(t.narrow(axis, 0, 0)?);
    }
    if s.step == 1 {
        return Ok(t.narrow(axis, s.first as usize, s.count)?);
    }
    let ids: Vec<i64> = (0..s.count as i64).map(|k| s.first + k * s.step).collect();
    let ids = Tensor::from_vec(ids, s.count, t.device())?;
    Ok(t.contiguous()?.index_select(&ids, axis)?)
}

pub fn slice(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let rank = v.rank();
    let (starts, ends, axes, steps) = if ctx.node.attr("starts").is_some() || ctx.opset < 10 {
        let get = |name: &str| ctx.node.attr_ints(name).map(<[i64]>::to_vec);
        let starts = get("starts").ok_or_else(|| ctx.err("missing 'starts' attribute"))?;
        let ends = get("ends").ok_or_else(|| ctx.err("missing 'ends' attribute"))?;
        (starts, ends, get("axes"), None)
    } else {
        let starts = ctx
            .ints_input(1)?
            .ok_or_else(|| ctx.err("missing 'starts' input"))?;
        let ends = ctx
            .ints_input(2)?
            .ok_or_else(|| ctx.err("missing 'ends' input"))?;
        (starts, ends, ctx.ints_input(3)?, ctx.ints_input(4)?)
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(ctx.err(&format!(
            "starts ({n}), ends ({}), axes ({}) and steps ({}) differ in length",
            ends.len(),
            axes.len(),
            steps.len()
        )));
    }
    if rank == 0 && n > 0 {
        return Err(ctx.err("cannot slice a scalar"));
    }
    let mut seen = vec![false; rank];
    let mut t = v.tensor.clone();
    for i in 0..n {
        let axis = ctx.axis(axes[i], rank)?;
        if std::mem::replace(&mut seen[axis], true) {
            return Err(ctx.err(&format!("invalid or repeated axis {}", axes[i])));
        }
        if steps[i] == 0 {
            return Err(ctx.err("slice step cannot be 0"));
        }
        let dim = v.dims()[axis] as i64;
        let s = axis_slice(starts[i], ends[i], steps[i], dim);
        if !(s.step == 1 && s.first == 0 && s.count as i64 == dim) {
            t = take_strided(&t, axis, &s)?;
        }
    }
    Ok(vec![Value::new(t, v.dtype)])
}

/// Normalizes indices against a dimension of size `dim` (negative counts
/// from the end); any index outside [-dim, dim) is an error.
fn normalize_indices(ctx: &OpCtx, raw: Vec<i64>, dim: usize) -> Result<Vec<i64>> {
    let d = dim as i64;
    raw.into_iter()
        .map(|i| {
            let j = if i < 0 { i + d } else { i };
            if j < 0 || j >= d {
                Err(ctx.err(&format!(
                    "index {i} is out of bounds for an axis of size {dim}"
                )))
            } else {
                Ok(j)
            }
        })
        .collect()
}

pub fn gather(ctx: &OpCtx) -> Result<Vec<Value>> {
    let data = ctx.input(0)?;
    let indices = ctx.input(1)?;
    if data.rank() == 0 {
        return Err(ctx.err("Gather needs data of rank >= 1"));
    }
    let axis = ctx.axis(ctx.node.int_or("axis", 0), data.rank())?;
    let dims = data.dims();
    let ids = normalize_indices(ctx, indices.to_i64_vec()?, dims[axis])?;
    let mut out_shape: Vec<usize> = dims[..axis].to_vec();
    out_shape.extend_from_slice(indices.dims());
    out_shape.extend_from_slice(&dims[axis + 1..]);
    let picked = if ids.is_empty() {
        data.tensor.narrow(axis, 0, 0)?
    } else {
        let n = ids.len();
        data.tensor
            .contiguous()?
            .index_select(&Tensor::from_vec(ids, n, ctx.device)?, axis)?
    };
    Ok(vec![Value::new(picked.reshape(out_shape)?, data.dtype)])
}

pub fn gather_elements(ctx: &OpCtx) -> Result<Vec<Value>> {
    let data = ctx.input(0)?;
    let indices = ctx.input(1)?;
    let rank = data.rank();
    if rank == 0 || indices.rank() != rank {
        return Err(ctx.err("GatherElements needs data and indices of the same rank >= 1"));
    }
    let axis = ctx.axis(ctx.node.int_or("axis", 0), rank)?;
    for (i, (&d, &k)) in data.dims().iter().zip(indices.dims()).enumerate() {
        if i != axis && k > d {
            return Err(ctx.err(&format!(
                "indices shape {:?} exceeds data shape {:?}",
                indices.dims(),
                data.dims()
            )));
        }
    }
    let ids = normalize_indices(ctx, indices.to_i64_vec()?, data.dims()[axis])?;
    if ids.is_empty() {
        let empty = Tensor::zeros(indices.dims(), data.tensor.dtype(), ctx.device)?;
        return Ok(vec![Value::new(empty, data.dtype)]);
    }
    let ids = Tensor::from_vec(ids, indices.dims(), ctx.device)?;
    // candle's gather needs equal shapes off the axis: keep only the leading
    // block of data that the indices address.
    let mut src = data.tensor.clone();
    for (i, &k) in indices.dims().iter().enumerate() {
        if i != axis && k < src.dims()[i] {
            src = src.narrow(i, 0, k)?;
        }
    }
    let out = src.contiguous()?.gather(&ids, axis)?;
    Ok(vec![Value::new(out, data.dtype)])
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use super::*;
    use crate::graph::DType;

    #[test]
    fn axis_slice_matches_onnxruntime_clamping() {
        let s = |a, b, c| {
            let r = axis_slice(a, b, c, 5);
            (r.first, r.count)
        };
        assert_eq!(s(1, i64::MAX, 1), (1, 4));
        assert_eq!(s(-10, -10, -1), (0, 1)); // start clamps to 0, end to -1
        assert_eq!(s(10, -20, -2), (4, 3));
        assert_eq!(s(1, i64::MAX, i64::MAX), (1, 1));
        assert_eq!(s(4, i64::MIN, i64::MIN), (4, 1));
        assert_eq!(s(-1, 0, 1), (4, 0));
        // INT_MAX ends with negative steps run to the front (onnxruntime).
        assert_eq!(s(2, i64::MAX, -1), (2, 3));
        assert_eq!(s(2, i32::MAX as i64, -1), (2, 3));
        assert_eq!(s(2, 1 << 40, -1), (2, 0));
        assert_eq!(axis_slice(0, -1, -1, 0).count, 0);
    }

    #[test]
    fn slice_negative_steps_and_int_min() {
        let x = f32v(&[3, 4], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
        let n = node("Slice", &["x", "s", "e", "a", "st"]);
        let y = run1(
            &n,
            17,
            &[
                ("x", &x),
                ("s", &ints(&[2, -1])),
                ("e", &ints(&[-10, i64::MIN])),
                ("a", &ints(&[0, 1])),
                ("st", &ints(&[-1, -2])),
            ],
        );
        assert_eq!(y.dims(), &[3, 2]);
        assert_eq!(f32s(&y), vec![11.0, 9.0, 7.0, 5.0, 3.0, 1.0]);
    }

    #[test]
    fn slice_defaults_negative_axes_and_int_max() {
        let x = i64v(&[2, 5], &(0..10).collect::<Vec<_>>());
        let n = node("Slice", &["x", "s", "e", "a"]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &ints(&[1])),
                ("e", &ints(&[i64::MAX])),
                ("a", &ints(&[-1])),
            ],
        );
        assert_eq!(y.dims(), &[2, 4]);
        assert_eq!(y.dtype, DType::I64);
        assert_eq!(i64s(&y), vec![1, 2, 3, 4, 6, 7, 8, 9]);
        // No axes input: axes are 0..n; step 2 forward.
        let n = node("Slice", &["x", "s", "e", "", "st"]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &ints(&[0, 0])),
                ("e", &ints(&[2, 5])),
                ("st", &ints(&[1, 2])),
            ],
        );
        assert_eq!(i64s(&y), vec![0, 2, 4, 5, 7, 9]);
        // Empty result.
        let n = node("Slice", &["x", "s", "e"]);
        let y = run1(
            &n,
            13,
            &[("x", &x), ("s", &ints(&[0, 3])), ("e", &ints(&[2, 3]))],
        );
        assert_eq!(y.dims(), &[2, 0]);
    }

    #[test]
    fn slice_opset9_attributes() {
        let x = f32v(&[2, 3], &[0., 1., 2., 3., 4., 5.]);
        let mut n = node("Slice", &["x"]);
        n.set_ints("starts", &[0, -2]);
        n.set_ints("ends", &[1, 1000]);
        let y = run1(&n, 9, &[("x", &x)]);
        assert_eq!(y.dims(), &[1, 2]);
        assert_eq!(f32s(&y), vec![1.0, 2.0]);
        n.set_ints("axes", &[1]);
        n.set_ints("starts", &[-1]);
        n.set_ints("ends", &[i64::MAX]);
        let y = run1(&n, 9, &[("x", &x)]);
        assert_eq!(f32s(&y), vec![2.0, 5.0]);
    }

    #[test]
    fn slice_errors() {
        let x = f32v(&[3], &[0., 1., 2.]);
        let n = node("Slice", &["x", "s", "e", "a", "st"]);
        let zero_step = run_node(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &ints(&[0])),
                ("e", &ints(&[3])),
                ("a", &ints(&[0])),
                ("st", &ints(&[0])),
            ],
        );
        assert!(zero_step.is_err());
        let dup = run_node(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &ints(&[0, 0])),
                ("e", &ints(&[3, 3])),
                ("a", &ints(&[0, -1])),
                ("st", &ints(&[1, 1])),
            ],
        );
        assert!(dup.is_err());
    }

    #[test]
    fn gather_axis_negative_and_scalar_indices() {
        let x = f32v(&[2, 3], &[0., 1., 2., 3., 4., 5.]);
        let mut n = node("Gather", &["x", "i"]);
        n.set_int("axis", 1);
        let y = run1(&n, 13, &[("x", &x), ("i", &i64v(&[2, 2], &[-1, 0, 1, 1]))]);
        assert_eq!(y.dims(), &[2, 2, 2]);
        assert_eq!(f32s(&y), vec![2., 0., 1., 1., 5., 3., 4., 4.]);
        // Scalar index drops the axis.
        let y = run1(&n, 13, &[("x", &x), ("i", &i64v(&[], &[-2]))]);
        assert_eq!(y.dims(), &[2]);
        assert_eq!(f32s(&y), vec![1., 4.]);
        // Default axis 0, int data, int32-typed indices.
        let xi = i64v(&[3, 2], &[10, 11, 20, 21, 30, 31]);
        let n0 = node("Gather", &["x", "i"]);
        let y = run1(
            &n0,
            13,
            &[("x", &xi), ("i", &intv(&[2], &[2, 0], DType::I32))],
        );
        assert_eq!(i64s(&y), vec![30, 31, 10, 11]);
        // Empty indices.
        let y = run1(&n0, 13, &[("x", &xi), ("i", &i64v(&[0], &[]))]);
        assert_eq!(y.dims(), &[0, 2]);
        // Out of range.
        assert!(run_node(&n0, 13, &[("x", &xi), ("i", &ints(&[3]))]).is_err());
        assert!(run_node(&n0, 13, &[("x", &xi), ("i", &ints(&[-4]))]).is_err());
    }

    #[test]
    fn gather_elements_smaller_indices() {
        // onnx example: data [[1,2],[3,4]], indices [[0,0],[1,0]], axis 1.
        let x = f32v(&[2, 2], &[1., 2., 3., 4.]);
        let mut n = node("GatherElements", &["x", "i"]);
        n.set_int("axis", 1);
        let y = run1(&n, 13, &[("x", &x), ("i", &i64v(&[2, 2], &[0, 0, 1, 0]))]);
        assert_eq!(f32s(&y), vec![1., 1., 4., 3.]);
        // Indices smaller than data in the other axis, negative index, axis 0.
        let x = f32v(&[3, 3], &(1..=9).map(|v| v as f32).collect::<Vec<_>>());
        let mut n = node("GatherElements", &["x", "i"]);
        n.set_int("axis", 0);
        let y = run1(&n, 13, &[("x", &x), ("i", &i64v(&[2, 2], &[1, 2, -3, 0]))]);
        assert_eq!(f32s(&y), vec![4., 8., 1., 2.]);
        // Indices smaller than data before and after the axis (rank 3, axis 1).
        let x = f32v(&[3, 3, 2], &(0..18).map(|v| v as f32).collect::<Vec<_>>());
        n.set_int("axis", 1);
        let y = run1(&n, 13, &[("x", &x), ("i", &i64v(&[2, 1, 1], &[2, -1]))]);
        // out[i][0][k] = x[i][idx][k]: x[0][2][0] = 4, x[1][2][0] = 10.
        assert_eq!(f32s(&y), vec![4., 10.]);
    }

    #[test]
    fn gradients_flow() {
        let x = f32v(
            &[3, 4],
            &(0..12).map(|v| v as f32 * 0.5).collect::<Vec<_>>(),
        );
        let n = node("Slice", &["x", "s", "e", "a", "st"]);
        let feeds = [
            ("x", &x),
            ("s", &ints(&[-1])),
            ("e", &ints(&[i64::MIN])),
            ("a", &ints(&[1])),
            ("st", &ints(&[-2])),
        ];
        grad_check(&n, 13, &feeds, "x");
        let mut g = node("Gather", &["x", "i"]);
        g.set_int("axis", 1);
        let idx = i64v(&[3], &[0, 0, -1]);
        grad_check(&g, 13, &[("x", &x), ("i", &idx)], "x");
        let ge = node("GatherElements", &["x", "i"]);
        let idx = i64v(&[2, 4], &[0, 2, 1, 0, 2, 2, 0, 1]);
        grad_check(&ge, 13, &[("x", &x), ("i", &idx)], "x");
        let mut ge1 = ge.clone();
        ge1.set_int("axis", 1);
        let idx = i64v(&[2, 3], &[3, 0, 3, -1, 1, 1]);
        grad_check(&ge1, 13, &[("x", &x), ("i", &idx)], "x");
    }
}
