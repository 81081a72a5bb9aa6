//! Tests of `batch_norm_train` against the same formula written with candle ops (values and
//! autograd), for 2-D and 4-D inputs.

use super::*;
use candle_core::{Device, Var};

type Res = anyhow::Result<()>;

fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 1.0
        })
        .collect()
}

/// Batch-statistics BatchNorm with candle ops (differentiable through the statistics).
fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    let mean = x.mean_keepdim(axes.clone())?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(axes)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    x.broadcast_sub(&mean)?
        .broadcast_mul(&inv)?
        .broadcast_mul(&g.reshape(shape.as_slice())?)?
        .broadcast_add(&b.reshape(shape.as_slice())?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

#[test]
fn matches_candle_ops_forward_and_backward() -> Res {
    for (k, dims) in [
        vec![4, 3, 5, 6],
        vec![8, 5],
        vec![2, 4, 7],
        vec![1, 2, 3, 3],
    ]
    .into_iter()
    .enumerate()
    {
        let c = dims[1];
        let n: usize = dims.iter().product();
        let dev = &Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(lcg(k as u64, n), dims.as_slice(), dev)?)?;
        let g = Var::from_tensor(&Tensor::from_vec(lcg(10 + k as u64, c), c, dev)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(lcg(20 + k as u64, c), c, dev)?)?;
        let (y, mean, var) = batch_norm_train(&x, &g, &b, 1e-5)?;
        let want = reference(&x, &g, &b, 1e-5)?;
        assert!(max_diff(&y, &want)? < 1e-12, "{dims:?}: forward");
        let axes: Vec<usize> = (0..dims.len()).filter(|&a| a != 1).collect();
        let m = x.mean_keepdim(axes.clone())?;
        assert!(
            max_diff(&mean, &m.flatten_all()?)? < 1e-12,
            "{dims:?}: mean"
        );
        let v = x.broadcast_sub(&m)?.sqr()?.mean_keepdim(axes)?;
        assert!(
            max_diff(&var, &v.flatten_all()?)? < 1e-12,
            "{dims:?}: variance"
        );
        let r = Tensor::from_vec(lcg(30 + k as u64, n), dims.as_slice(), dev)?;
        let got = (y * &r)?.sum_all()?.backward()?;
        let exp = (want * &r)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
            let d = max_diff(got.get(v).expect("grad"), exp.get(v).expect("grad"))?;
            assert!(d < 1e-10, "{dims:?}: d{name} differs by {d}");
        }
    }
    Ok(())
}

#[test]
fn f32_and_bad_arguments() -> Res {
    let dev = &Device::Cpu;
    let x = Tensor::from_vec(
        lcg(1, 96).iter().map(|&v| v as f32).collect::<Vec<_>>(),
        (4, 3, 8),
        dev,
    )?;
    let (g, b) = (
        Tensor::ones(3, DType::F32, dev)?,
        Tensor::zeros(3, DType::F32, dev)?,
    );
    let (y, _, _) = batch_norm_train(&x, &g, &b, 1e-5)?;
    assert!(max_diff(&y, &reference(&x, &g, &b, 1e-5)?)? < 1e-5);
    assert!(batch_norm_train(&x, &Tensor::ones(4, DType::F32, dev)?, &b, 1e-5).is_err());
    assert!(batch_norm_train(&x, &g.to_dtype(DType::F64)?, &b, 1e-5).is_err());
    assert!(batch_norm_train(&x.flatten_all()?, &g, &b, 1e-5).is_err());
    Ok(())
}

#[test]
fn one_pass_moments_match_two_passes_with_offsets_and_outliers() -> Res {
    // x: [N=3, C=2, 11]: 33 values per channel over three planes of 11 (8 in the lanes, 3 in
    // the remainder). Channel 0 sits at 1000 with spread 0.01; channel 1 starts with an
    // outlier of 1e4 among values near 0.
    const I: usize = 11;
    let base = lcg(5, 6 * I);
    let mut x = vec![0f64; 6 * I];
    for n in 0..3 {
        for i in 0..I {
            x[n * 2 * I + i] = 1000.0 + 0.01 * base[n * 2 * I + i];
            x[n * 2 * I + I + i] = base[n * 2 * I + I + i];
        }
    }
    x[I] = 1e4;
    let p = Planes::of(&[3, 2, I])?;
    let (mean, var) = moments(p, &x);
    for c in 0..2 {
        let vals: Vec<f64> = (0..3)
            .flat_map(|n| x[(2 * n + c) * I..][..I].to_vec())
            .collect();
        let m = vals.len() as f64;
        let mu = vals.iter().sum::<f64>() / m;
        let v = vals.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / m;
        assert!(
            (mean[c] - mu).abs() <= 1e-12 * mu.abs().max(1.0),
            "mean {c}"
        );
        assert!(
            (var[c] - v).abs() <= 1e-9 * v,
            "variance {c}: {} vs {v}",
            var[c]
        );
    }
    Ok(())
}
