//! Tests of `fake_quantize` against the same computation written with candle ops (the path
//! non-CPU devices take): values, and the gradients of the input and of the scale, per
//! tensor and per channel, with and without zero points.

use super::*;
use crate::exec::ops::quant::round_half_even;
use candle_core::{Device, Var};

type Res = anyhow::Result<()>;

fn lcg(seed: u64, n: usize, spread: f64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * spread as f32
        })
        .collect()
}

/// Composite candle ops: `clamp(round(x / s) + z)`, `s` and `z` shaped to broadcast.
fn reference(x: &Tensor, s: &Tensor, z: &Tensor, qmin: f64, qmax: f64) -> Result<Tensor> {
    let q = round_half_even(&x.broadcast_div(s)?).map_err(candle_core::Error::wrap)?;
    q.broadcast_add(z)?.clamp(qmin, qmax)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Runs both paths on `x: dims` with scales and zero points along `axis` (or per tensor)
/// and compares outputs and gradients of a weighted sum of the outputs.
fn compare(dims: &[usize], axis: Option<usize>, zero: f64, qmin: f64, qmax: f64) -> Res {
    let n: usize = dims.iter().product();
    let channels = axis.map_or(1, |a| dims[a]);
    // Values up to 3x past the clamp range, some exactly on rounding ties.
    let mut xv = lcg(1, n, 1.0);
    for (i, v) in xv.iter_mut().enumerate() {
        if i % 17 == 0 {
            *v = 0.5 * (i % 5) as f32 * 0.1;
        }
    }
    let sv: Vec<f32> = (0..channels).map(|c| 0.004 + 0.002 * c as f32).collect();
    let x = Var::from_vec(xv, dims, &Device::Cpu)?;
    let s = Var::from_vec(sv, channels, &Device::Cpu)?;
    let mut bshape = vec![1; dims.len()];
    if let Some(a) = axis {
        bshape[a] = channels;
    }
    let z = Tensor::full(zero as f32, channels, &Device::Cpu)?.reshape(bshape.as_slice())?;
    let w = Tensor::from_vec(lcg(2, n, 1.0), dims, &Device::Cpu)?;

    let grid = QuantGrid::new(dims, axis, vec![zero; channels], qmin, qmax);
    let fused = fake_quantize(x.as_tensor(), s.as_tensor(), grid)?;
    let plain = reference(
        x.as_tensor(),
        &s.as_tensor().reshape(bshape.as_slice())?,
        &z,
        qmin,
        qmax,
    )?;
    assert_eq!(
        max_diff(&fused, &plain)?,
        0.0,
        "forward differs for {dims:?}"
    );
    let clamped = plain
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|&&q| q == qmin as f32 || q == qmax as f32)
        .count();
    assert!(
        clamped > 0 && clamped < n,
        "the test must clamp some values"
    );

    // At exactly qmin or qmax (before clamping) candle's composite clamp passes half the
    // gradient (its maximum/minimum split ties), the fused op all of it: compare elsewhere,
    // weighting the outputs by `w` there and by 0 on those points.
    let unclamped = reference(
        x.as_tensor(),
        &s.as_tensor().reshape(bshape.as_slice())?,
        &z,
        f64::MIN,
        f64::MAX,
    )?;
    let edge = (unclamped.eq(qmin as f32)?.to_dtype(DType::F32)?
        + unclamped.eq(qmax as f32)?.to_dtype(DType::F32)?)?;
    let w = (w * (1.0 - edge)?)?;
    let gf = (&fused * &w)?.sum_all()?.backward()?;
    let gp = (&plain * &w)?.sum_all()?.backward()?;
    let (dxf, dxp) = (gf.get(&x).unwrap(), gp.get(&x).unwrap());
    assert!(max_diff(dxf, dxp)? < 1e-3, "dx differs");
    let (dsf, dsp) = (gf.get(&s).unwrap(), gp.get(&s).unwrap());
    let tol = 1e-4 * dsp.abs()?.max(0)?.to_scalar::<f32>()?.max(1.0);
    assert!(max_diff(dsf, dsp)? <= tol, "dscale differs: {dsf} vs {dsp}");
    Ok(())
}

#[test]
fn per_tensor_int8_matches_the_composite_ops() -> Res {
    compare(&[3, 4, 5, 7], None, 0.0, -128.0, 127.0)
}

#[test]
fn per_tensor_uint8_with_a_zero_point_matches() -> Res {
    compare(&[2, 3, 40, 41], None, 131.0, 0.0, 255.0)
}

#[test]
fn per_channel_weights_match() -> Res {
    compare(&[6, 3, 3, 3], Some(0), 0.0, -7.0, 7.0)?;
    compare(&[5, 8], Some(1), 128.0, 0.0, 255.0)
}

#[test]
fn reductions_over_many_chunks_are_reproducible() -> Res {
    let dims = [4, 16, 32, 32];
    let x = Var::from_vec(lcg(3, 65536, 1.0), &dims[..], &Device::Cpu)?;
    let s = Var::from_vec(vec![0.01f32], 1, &Device::Cpu)?;
    let grad = || -> Result<Vec<f32>> {
        let grid = QuantGrid::new(&dims, None, vec![0.0], -128.0, 127.0);
        let g = fake_quantize(x.as_tensor(), s.as_tensor(), grid)?
            .sqr()?
            .sum_all()?
            .backward()?;
        g.get(&s).unwrap().to_vec1::<f32>()
    };
    let first = grad()?;
    for _ in 0..5 {
        assert_eq!(grad()?, first);
    }
    Ok(())
}

#[test]
fn wrong_scale_length_is_an_error() {
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let s = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let grid = QuantGrid::new(&[2, 3], Some(1), vec![0.0], -128.0, 127.0);
    let err = fake_quantize(&x, &s, grid).unwrap_err().to_string();
    assert!(err.contains("2 scale entries for 3 channels"), "{err}");
}
