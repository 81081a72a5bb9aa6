//! Linear quantization: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear, per tensor or per axis (`axis`, default 1).
//!
//! QuantizeLinear computes saturate(round_half_to_even(x / scale) + zero_point)
//! with a true division in the compute float type, as onnxruntime does, so
//! results match it exactly. The output type is the zero point's type, else
//! opset 21's `output_dtype`, else uint8; int8, uint8, int16 and uint16 are
//! supported (stored as candle i64). DequantizeLinear computes
//! (x - zero_point) * scale, subtracting in integers first; its result has
//! the scale's float type and backpropagates to the scale. Blocked
//! quantization (`block_size` != 0) and float8/int4 types are reported
//! unsupported.

use candle_core::{DType as CDType, Tensor};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::kernels::fake_quant::{fake_quantize, QuantGrid};
use crate::exec::Value;
use crate::graph::{DType, Node};

/// Saturation bounds of an integer quantized type.
fn qrange(dtype: DType) -> Option<(f64, f64)> {
    Some(match dtype {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        _ => return None,
    })
}

fn check_block_size(node: &Node) -> std::result::Result<(), String> {
    match node.int_or("block_size", 0) {
        0 => Ok(()),
        b => Err(format!("blocked quantization (block_size={b})")),
    }
}

pub fn check_quantize(node: &Node) -> std::result::Result<(), String> {
    check_block_size(node)?;
    match node.int_or("output_dtype", 0) {
        0 => Ok(()),
        d if qrange(DType(d as i32)).is_some() => Ok(()),
        d => Err(format!("quantizing to {}", DType(d as i32))),
    }
}

pub fn check_dequantize(node: &Node) -> std::result::Result<(), String> {
    check_block_size(node)
}

/// Rounds half to even (ONNX's rounding), exactly, for every magnitude.
pub(crate) fn round_half_even(t: &Tensor) -> Result<Tensor> {
    let (t, back) = match t.dtype() {
        CDType::F32 | CDType::F64 => (t.clone(), None),
        other => (t.to_dtype(CDType::F32)?, Some(other)),
    };
    // Adding ±2^(mantissa bits) moves |v| < 2^p to where the unit in the last
    // place is 1, so the addition itself rounds to nearest even and the
    // subtraction is exact; larger magnitudes are integers already.
    let p = if t.dtype() == CDType::F64 {
        (1u64 << 52) as f64
    } else {
        (1u64 << 23) as f64
    };
    let plus = Tensor::full(p, t.shape(), t.device())?.to_dtype(t.dtype())?;
    let magic = t.ge(0.0)?.where_cond(&plus, &plus.neg()?)?;
    let r = ((&t + &magic)? - &magic)?;
    let r = t.abs()?.ge(p)?.where_cond(&t, &r)?;
    Ok(match back {
        Some(d) => r.to_dtype(d)?,
        None => r,
    })
}

/// A scale or zero point shaped to broadcast against `dims`: one element
/// for per-tensor, a 1-D tensor of dims[axis] elements for per-axis.
fn broadcastable(ctx: &OpCtx, p: &Tensor, dims: &[usize], what: &str) -> Result<Tensor> {
    let rank = dims.len();
    if p.elem_count() == 1 {
        return Ok(p.reshape(vec![1usize; rank])?);
    }
    let axis = ctx.axis(ctx.node.int_or("axis", 1), rank)?;
    if p.rank() != 1 || p.elem_count() != dims[axis] {
        return Err(ctx.err(&format!(
            "{what} of shape {:?} does not fit axis {axis} of {dims:?}",
            p.dims()
        )));
    }
    let mut shape = vec![1usize; rank];
    shape[axis] = dims[axis];
    Ok(p.reshape(shape)?)
}

pub fn quantize_linear(ctx: &OpCtx) -> Result<Vec<Value>> {
    let x = ctx.float_tensor(0)?;
    let dims = x.dims().to_vec();
    let zp = ctx.opt_input(2);
    let out_dtype = match (zp, ctx.node.int_or("output_dtype", 0)) {
        (Some(z), _) => z.dtype,
        (None, 0) => DType::U8,
        (None, d) => DType(d as i32),
    };
    let (qmin, qmax) =
        qrange(out_dtype).ok_or_else(|| ctx.unsupported(&format!("quantizing to {out_dtype}")))?;
    if ctx.qat && x.device().is_cpu() {
        return Ok(vec![Value::new(
            fused_fake_quantize(ctx, &x, zp, qmin, qmax)?,
            out_dtype,
        )]);
    }
    let mut scale = broadcastable(
        ctx,
        &ctx.float_tensor(1)?.to_dtype(x.dtype())?,
        &dims,
        "scale",
    )?;
    if ctx.qat {
        scale = lsq_scaled(&scale, &dims, qmax)?;
    }
    // In QAT the rounding passes gradients straight through: `round_half_even` adds and
    // subtracts a constant, so its derivative is 1 (and the clamp's is 0 outside the range).
    let mut q = round_half_even(&x.broadcast_div(&scale)?)?;
    if let Some(z) = zp {
        let z = broadcastable(ctx, &z.tensor.to_dtype(x.dtype())?, &dims, "zero point")?;
        q = q.broadcast_add(&z)?;
    }
    let q = q.clamp(qmin, qmax)?;
    let q = if ctx.qat { q } else { q.to_dtype(CDType::I64)? };
    Ok(vec![Value::new(q, out_dtype)])
}

/// QuantizeLinear in QAT mode on the CPU: the fused kernel, with the same straight-through
/// gradients as the composite ops below and LSQ's scaling of the scale's gradient.
fn fused_fake_quantize(
    ctx: &OpCtx,
    x: &Tensor,
    zp: Option<&Value>,
    qmin: f64,
    qmax: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    let scale = ctx.float_tensor(1)?.to_dtype(x.dtype())?.flatten_all()?;
    let axis = if scale.elem_count() == 1 {
        None
    } else {
        let a = ctx.axis(ctx.node.int_or("axis", 1), dims.len())?;
        if scale.elem_count() != dims[a] {
            return Err(ctx.err(&format!(
                "scale of {} elements does not fit axis {a} of {dims:?}",
                scale.elem_count()
            )));
        }
        Some(a)
    };
    let zero_point = match zp {
        Some(z) => z
            .tensor
            .to_dtype(CDType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?,
        None => vec![0.0],
    };
    let scale = lsq_scaled(&scale, dims, qmax)?;
    let grid = QuantGrid::new(dims, axis, zero_point, qmin, qmax);
    Ok(fake_quantize(x, &scale, grid)?)
}

/// LSQ's gradient scaling (Esser et al., 2020): the same value as `scale`, with its gradient
/// multiplied by `1 / sqrt(n * qmax)`, where `n` is the number of values one scale element
/// quantizes (per sample for a per-tensor activation), so that scales and weights learn at
/// comparable rates.
fn lsq_scaled(scale: &Tensor, dims: &[usize], qmax: f64) -> Result<Tensor> {
    let per_scale = dims.iter().product::<usize>() / scale.elem_count().max(1);
    let n = if scale.elem_count() == 1 && dims.len() >= 2 {
        per_scale / dims[0].max(1)
    } else {
        per_scale
    };
    let g = 1.0 / ((n.max(1) as f64) * qmax.max(1.0)).sqrt();
    let scaled = (scale * g)?;
    Ok(((scale - &scaled)?.detach() + scaled)?)
}

pub fn dequantize_linear(ctx: &OpCtx) -> Result<Vec<Value>> {
    let x = ctx.input(0)?;
    let scale = ctx.input(1)?;
    // A QAT QuantizeLinear's output holds its integers in a float tensor (ONNX type int).
    if x.dtype.is_float() || (x.is_float() && !ctx.qat) {
        return Err(ctx.unsupported(&format!("dequantizing {}", x.dtype)));
    }
    let dims = x.dims().to_vec();
    let float_held = x.tensor.dtype().is_float();
    let mut diff = x.tensor.clone();
    if let Some(z) = ctx.opt_input(2) {
        let zd = if float_held {
            x.tensor.dtype()
        } else {
            CDType::I64
        };
        let z = broadcastable(ctx, &z.tensor.to_dtype(zd)?, &dims, "zero point")?;
        diff = diff.broadcast_sub(&z)?;
    }
    let mut s = broadcastable(ctx, &ctx.float_tensor(1)?, &dims, "scale")?;
    if ctx.qat {
        if let Some((_, qmax)) = qrange(x.dtype) {
            s = lsq_scaled(&s, &dims, qmax)?;
        }
    }
    let y = diff.to_dtype(s.dtype())?.broadcast_mul(&s)?;
    let dtype = if scale.dtype.is_float() {
        scale.dtype
    } else {
        DType::F32
    };
    Ok(vec![Value::new(y, dtype)])
}

/// uint8 quantization with scale and zero point from the data range
/// (extended to include 0), as onnxruntime computes them in f32.
pub fn dynamic_quantize_linear(ctx: &OpCtx) -> Result<Vec<Value>> {
    let x = ctx.float_tensor(0)?;
    let (lo, hi) = if x.elem_count() == 0 {
        (0f32, 0f32)
    } else {
        let flat = x.flatten_all()?.detach();
        let get =
            |t: Tensor| -> Result<f32> { Ok(t.to_dtype(CDType::F64)?.to_scalar::<f64>()? as f32) };
        (get(flat.min(0)?)?, get(flat.max(0)?)?)
    };
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale: f32 = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    let scale_t = Tensor::new(scale, ctx.device)?.to_dtype(x.dtype())?;
    let q = round_half_even(&x.broadcast_div(&scale_t)?)?;
    let q = (q + zp as f64)?.clamp(0.0, 255.0)?.to_dtype(CDType::I64)?;
    Ok(vec![
        Value::new(q, DType::U8),
        Value::new(scale_t, DType::F32),
        Value::new(Tensor::new(zp as i64, ctx.device)?, DType::U8),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::exec::Value;
    use crate::graph::{DType, Node};

    fn xs() -> Value {
        let v = [
            0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300., -300., 3.4999, 127.5, -128.5, 1e10, -1e10,
        ];
        f32v(&[13], &v)
    }

    fn scalar(v: f32) -> Value {
        f32v(&[], &[v])
    }

    #[test]
    fn ties_to_even_and_saturation() {
        // Expected values from onnxruntime 1.23.
        let n = node("QuantizeLinear", &["x", "s", "z"]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &xs()),
                ("s", &scalar(1.0)),
                ("z", &intv(&[], &[0], DType::I8)),
            ],
        );
        assert_eq!(y.dtype, DType::I8);
        assert_eq!(
            i64s(&y),
            vec![0, 2, 2, 0, -2, -2, 127, -128, 3, 127, -128, 127, -128]
        );
        let y = run1(
            &n,
            13,
            &[
                ("x", &xs()),
                ("s", &scalar(1.0)),
                ("z", &intv(&[], &[3], DType::U8)),
            ],
        );
        assert_eq!(y.dtype, DType::U8);
        assert_eq!(i64s(&y), vec![3, 5, 5, 3, 1, 1, 255, 0, 6, 131, 0, 255, 0]);
        // No zero point: uint8.
        let n2 = node("QuantizeLinear", &["x", "s"]);
        let y = run1(&n2, 13, &[("x", &xs()), ("s", &scalar(1.0))]);
        assert_eq!(y.dtype, DType::U8);
        assert_eq!(i64s(&y), vec![0, 2, 2, 0, 0, 0, 255, 0, 3, 128, 0, 255, 0]);
        // Opset 21 output_dtype.
        let mut n3 = n2.clone();
        n3.set_int("output_dtype", 3);
        let y = run1(&n3, 21, &[("x", &xs()), ("s", &scalar(1.0))]);
        assert_eq!(y.dtype, DType::I8);
        assert_eq!(
            i64s(&y),
            vec![0, 2, 2, 0, -2, -2, 127, -128, 3, 127, -128, 127, -128]
        );
        // 16-bit types with a non-unit scale.
        let y = run1(
            &n,
            21,
            &[
                ("x", &xs()),
                ("s", &scalar(0.1)),
                ("z", &intv(&[], &[-5], DType::I16)),
            ],
        );
        assert_eq!(
            i64s(&y),
            vec![0, 10, 20, -10, -20, -30, 2995, -3005, 30, 1270, -1290, 32767, -32768]
        );
        let y = run1(
            &n,
            21,
            &[
                ("x", &xs()),
                ("s", &scalar(0.1)),
                ("z", &intv(&[], &[5], DType::U16)),
            ],
        );
        assert_eq!(
            i64s(&y),
            vec![10, 20, 30, 0, 0, 0, 3005, 0, 40, 1280, 0, 65535, 0]
        );
        // Division, not multiplication by the reciprocal: 0.25/0.1 = 2.5 -> 2, 0.35/0.1 = 3.5 -> 4.
        let x = f32v(&[4], &[0.3, 0.1, 0.25, 0.35]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &scalar(0.1)),
                ("z", &intv(&[], &[0], DType::I8)),
            ],
        );
        assert_eq!(i64s(&y), vec![3, 1, 2, 4]);
    }

    #[test]
    fn per_axis() {
        let n = {
            let mut n = node("QuantizeLinear", &["x", "s", "z"]);
            n.set_int("axis", 0);
            n
        };
        let x = f32v(
            &[2, 4],
            &[0.3, -1.26, 2.5, 100., 0.05, -0.049, 0.15, -1000.],
        );
        let s = f32v(&[2], &[0.1, 0.05]);
        let z = intv(&[2], &[3, -2], DType::I8);
        let y = run1(&n, 13, &[("x", &x), ("s", &s), ("z", &z)]);
        assert_eq!(i64s(&y), vec![6, -10, 28, 127, -1, -3, 1, -128]);
        // Default axis 1, and axis -1, on rank 3.
        let x3 = f32v(&[1, 2, 2], &[0.3, -1.26, 2.5, 100.]);
        let s = f32v(&[2], &[0.1, 0.5]);
        let z = intv(&[2], &[128, 10], DType::U8);
        let plain = node("QuantizeLinear", &["x", "s", "z"]);
        let y = run1(&plain, 13, &[("x", &x3), ("s", &s), ("z", &z)]);
        assert_eq!(i64s(&y), vec![131, 115, 15, 210]);
        let mut last = plain.clone();
        last.set_int("axis", -1);
        let y = run1(&last, 13, &[("x", &x3), ("s", &s), ("z", &z)]);
        assert_eq!(i64s(&y), vec![131, 7, 153, 210]);
        // Mismatched per-axis length.
        let bad = f32v(&[3], &[0.1, 0.1, 0.1]);
        assert!(run_node(&plain, 13, &[("x", &x3), ("s", &bad), ("z", &z)]).is_err());
    }

    #[test]
    fn dequantize() {
        let mut n = node("DequantizeLinear", &["x", "s", "z"]);
        n.set_int("axis", 0);
        let x = intv(&[2, 3], &[0, 255, 128, 1, 2, 3], DType::U8);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &f32v(&[2], &[0.1, 0.25])),
                ("z", &intv(&[2], &[128, 2], DType::U8)),
            ],
        );
        assert_eq!(y.dtype, DType::F32);
        assert_eq!(f32s(&y), vec![-12.8, 12.7, 0.0, -0.25, 0.0, 0.25]);
        let n = node("DequantizeLinear", &["x", "s", "z"]);
        let x = intv(&[3], &[-128, 127, 5], DType::I8);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &scalar(0.5)),
                ("z", &intv(&[], &[-3], DType::I8)),
            ],
        );
        assert_eq!(f32s(&y), vec![-62.5, 65.0, 4.0]);
        let n = node("DequantizeLinear", &["x", "s"]);
        let x = intv(&[3], &[2147483647, -2147483647, 7], DType::I32);
        let y = run1(&n, 13, &[("x", &x), ("s", &scalar(0.001))]);
        assert_eq!(f32s(&y), vec![2_147_483.8, -2_147_483.8, 0.007]);
        let x = intv(&[2], &[10, 200], DType::U8);
        let y = run1(&n, 13, &[("x", &x), ("s", &scalar(0.02))]);
        assert_eq!(f32s(&y), vec![0.199_999_99, 4.0]);
        // The scale receives gradients.
        let n = node("DequantizeLinear", &["x", "s", "z"]);
        let x = intv(&[3], &[-128, 127, 5], DType::I8);
        grad_check(
            &n,
            13,
            &[
                ("x", &x),
                ("s", &scalar(0.5)),
                ("z", &intv(&[], &[-3], DType::I8)),
            ],
            "s",
        );
    }

    #[test]
    fn dynamic_quantize() {
        let n = Node::new("n", "DynamicQuantizeLinear", &["x"], &["y", "s", "z"]);
        let check = |x: &[f32], q: &[i64], s: f32, z: i64| {
            let outs = run_node(&n, 13, &[("x", &f32v(&[x.len()], x))]).unwrap();
            assert_eq!(outs[0].dtype, DType::U8);
            assert_eq!(i64s(&outs[0]), q);
            assert_eq!(f32s(&outs[1]), vec![s]);
            assert_eq!(outs[2].dtype, DType::U8);
            assert_eq!(i64s(&outs[2]), vec![z]);
        };
        check(&[0., 0., 0.], &[0, 0, 0], 1.0, 0);
        check(&[1., 2.5, 3.], &[85, 212, 255], 0.011_764_706, 0);
        check(
            &[-1., 2.5, -3., 0.7, 1000.],
            &[1, 2, 0, 1, 255],
            3.933_333_4,
            1,
        );
        check(
            &[-1., -2.5, -3., -0.7],
            &[170, 43, 0, 196],
            0.011_764_706,
            255,
        );
    }

    #[test]
    fn unsupported_forms() {
        let mut n = node("QuantizeLinear", &["x", "s"]);
        n.set_int("block_size", 32);
        assert!(super::check_quantize(&n).is_err());
        let mut n = node("QuantizeLinear", &["x", "s"]);
        n.set_int("output_dtype", 17);
        assert!(super::check_quantize(&n).is_err());
        let mut n = node("DequantizeLinear", &["x", "s"]);
        n.set_int("block_size", 32);
        assert!(super::check_dequantize(&n).is_err());
    }

    #[test]
    fn round_half_even_f32_and_f64() {
        use candle_core::{Device, Tensor};
        let v = [
            0.5f64,
            1.5,
            2.5,
            -0.5,
            -2.5,
            3.49999,
            1e7 + 0.5,
            -4194303.5,
            4194305.5,
            1e30,
            -0.3,
        ];
        let want = [
            0.0, 2.0, 2.0, 0.0, -2.0, 3.0, 1e7, -4194304.0, 4194306.0, 1e30, 0.0,
        ];
        for dt in [candle_core::DType::F32, candle_core::DType::F64] {
            let t = Tensor::new(&v, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let r = super::round_half_even(&t)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let want: Vec<f64> = want
                .iter()
                .map(|&w| {
                    if dt == candle_core::DType::F32 {
                        w as f32 as f64
                    } else {
                        w
                    }
                })
                .collect();
            assert_eq!(r, want, "{dt:?}");
        }
    }
}
