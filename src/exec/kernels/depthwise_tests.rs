//! Tests of `depthwise`: a naive reference, candle's grouped conv2d (values and autograd),
//! finite differences, non-contiguous inputs and errors.

use super::*;
use crate::exec::kernels::test_util::{rel_diff, Lcg};
use candle_core::{Device, Var};

type Res = anyhow::Result<()>;

/// `(x dims [N, C, H, W], M, KH, KW, params)`.
type Case = ([usize; 4], usize, usize, usize, DepthwiseParams);

fn p(stride: [usize; 2], dilation: [usize; 2], pads: [usize; 4]) -> DepthwiseParams {
    DepthwiseParams {
        stride,
        dilation,
        pads,
    }
}

fn grid() -> Vec<Case> {
    vec![
        ([2, 3, 8, 8], 1, 3, 3, p([1, 1], [1, 1], [1, 1, 1, 1])),
        ([1, 4, 9, 7], 1, 3, 3, p([2, 2], [1, 1], [1, 1, 1, 1])),
        ([2, 2, 8, 8], 1, 3, 3, p([2, 2], [1, 1], [0, 0, 1, 1])), // TF "SAME", stride 2
        ([1, 3, 11, 10], 1, 5, 5, p([1, 1], [1, 1], [2, 2, 2, 2])),
        ([3, 2, 13, 9], 1, 5, 5, p([2, 2], [1, 1], [1, 2, 2, 1])),
        ([1, 2, 10, 11], 1, 3, 3, p([1, 1], [2, 2], [2, 2, 2, 2])),
        ([2, 3, 7, 9], 2, 3, 3, p([1, 1], [1, 1], [0, 1, 2, 1])),
        ([1, 2, 9, 9], 3, 3, 3, p([2, 2], [2, 2], [1, 0, 0, 2])),
        ([1, 2, 6, 12], 1, 3, 3, p([1, 2], [1, 1], [1, 1, 1, 1])),
        ([1, 2, 12, 5], 2, 3, 2, p([2, 1], [1, 1], [0, 0, 0, 0])),
        ([1, 2, 5, 5], 1, 3, 3, p([1, 1], [1, 1], [3, 0, 0, 3])), // pads >= kernel
        ([1, 1, 2, 3], 1, 5, 5, p([1, 1], [1, 1], [2, 2, 2, 2])), // kernel > input
        ([2, 3, 1, 17], 1, 1, 3, p([1, 1], [1, 1], [0, 1, 0, 1])), // 1-D
        ([1, 2, 1, 16], 2, 1, 5, p([1, 3], [1, 2], [0, 2, 0, 3])), // 1-D, stride 3, dilation 2
        ([2, 16, 20, 20], 1, 3, 3, p([2, 2], [1, 1], [1, 1, 1, 1])), // several rayon tasks
    ]
}

/// 300 random small configurations (sizes, kernels, strides, dilations, pads up to 4).
fn random_cases() -> Vec<Case> {
    let mut rng = Lcg(42);
    let mut pick = |lo: usize, hi: usize| {
        lo + ((rng.vec(1)[0] + 1.0) / 2.0 * (hi - lo + 1) as f64) as usize % (hi - lo + 1)
    };
    let mut cases = Vec::new();
    while cases.len() < 300 {
        let (h, w, kh, kw) = (pick(1, 12), pick(1, 12), pick(1, 5), pick(1, 5));
        let prm = p(
            [pick(1, 3), pick(1, 3)],
            [pick(1, 3), pick(1, 3)],
            [pick(0, 4), pick(0, 4), pick(0, 4), pick(0, 4)],
        );
        let fits = |a: usize, len: usize, k: usize| {
            len + prm.pads[a] + prm.pads[a + 2] > prm.dilation[a] * (k - 1)
        };
        if fits(0, h, kh) && fits(1, w, kw) {
            cases.push(([pick(1, 3), pick(1, 4), h, w], pick(1, 3), kh, kw, prm));
        }
    }
    cases
}

fn tensors(case: &Case, dtype: DType, seed: u64) -> Result<(Tensor, Tensor)> {
    let ([n, c, h, w], m, kh, kw, _) = *case;
    let mut rng = Lcg(seed);
    let x = Tensor::from_vec(rng.vec(n * c * h * w), (n, c, h, w), &Device::Cpu)?;
    let wt = Tensor::from_vec(rng.vec(c * m * kh * kw), (c * m, 1, kh, kw), &Device::Cpu)?;
    Ok((x.to_dtype(dtype)?, wt.to_dtype(dtype)?))
}

/// Direct definition with bounds checks, in f64.
fn naive(x: &Tensor, w: &Tensor, p: &DepthwiseParams) -> Result<Tensor> {
    let g = Geom::new(p, x.dims(), w.dims())?;
    let (xv, wv) = (
        x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
        w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
    );
    let ((h, wd), (kh, kw), (oh, ow)) = (g.inp, g.k, g.out);
    let mut y = Vec::new();
    for n in 0..g.n {
        for o in 0..g.c * g.m {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0;
                    for i in 0..kh {
                        for j in 0..kw {
                            let r = (oy * p.stride[0] + i * p.dilation[0]) as isize
                                - p.pads[0] as isize;
                            let c = (ox * p.stride[1] + j * p.dilation[1]) as isize
                                - p.pads[1] as isize;
                            if (0..h as isize).contains(&r) && (0..wd as isize).contains(&c) {
                                let xi = ((n * g.c + o / g.m) * h + r as usize) * wd + c as usize;
                                s += xv[xi] * wv[(o * kh + i) * kw + j];
                            }
                        }
                    }
                    y.push(s);
                }
            }
        }
    }
    Tensor::from_vec(y, g.y_shape(), &Device::Cpu)
}

/// candle's path: zero pads, grouped conv2d with stride 1, then every stride-th row/column.
fn candle_ref(x: &Tensor, w: &Tensor, p: &DepthwiseParams) -> Result<Tensor> {
    assert_eq!(p.dilation[0], p.dilation[1], "candle needs one dilation");
    let [t, l, b, r] = p.pads;
    let xp = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
    let mut y = xp.conv2d(w, 0, 1, p.dilation[0], x.dim(1)?)?;
    for (a, s) in p.stride.into_iter().enumerate() {
        let idx: Vec<u32> = (0..y.dim(2 + a)? as u32).step_by(s).collect();
        y = y.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 2 + a)?;
    }
    Ok(y)
}

#[test]
fn forward_matches_naive_and_candle() -> Res {
    for (k, case) in grid().iter().enumerate() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (x, w) = tensors(case, dtype, k as u64)?;
            let y = depthwise_conv2d(&x, &w, &case.4)?;
            assert_eq!(y.dtype(), dtype);
            let d = rel_diff(&y, &naive(&x, &w, &case.4)?)?;
            assert!(d <= tol, "case {k} {dtype:?}: naive diff {d}");
            if case.4.dilation[0] == case.4.dilation[1] {
                let d = rel_diff(&y, &candle_ref(&x, &w, &case.4)?)?;
                assert!(d <= tol, "case {k} {dtype:?}: candle diff {d}");
            }
        }
    }
    Ok(())
}

#[test]
fn backward_matches_candle_autograd() -> Res {
    for (k, case) in grid().iter().enumerate() {
        if case.4.dilation[0] != case.4.dilation[1] {
            continue;
        }
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (x, w) = tensors(case, dtype, 100 + k as u64)?;
            let (x, w) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
            let y = depthwise_conv2d(&x, &w, &case.4)?;
            let r = Tensor::from_vec(Lcg(7).vec(y.elem_count()), y.shape(), &Device::Cpu)?
                .to_dtype(dtype)?;
            let grads = (y * &r)?.sum_all()?.backward()?;
            let ref_grads = (candle_ref(&x, &w, &case.4)? * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &w)] {
                let (a, b) = (grads.get(v), ref_grads.get(v));
                let (Some(a), Some(b)) = (a, b) else {
                    panic!("case {k}: no gradient for {name}")
                };
                let d = rel_diff(a, b)?;
                assert!(d <= tol, "case {k} {dtype:?}: d{name} diff {d}");
            }
        }
    }
    Ok(())
}

/// Central differences of `sum(y * r)` in f64 for every element of x and w.
/// Forward against the naive loops and both gradients against candle's autograd on the
/// candle path (where it applies: one dilation for both axes), on random configurations.
#[test]
fn random_configurations_match() -> Res {
    for (k, case) in random_cases().iter().enumerate() {
        let (x, w) = tensors(case, DType::F64, 300 + k as u64)?;
        let (x, w) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let y = depthwise_conv2d(&x, &w, &case.4)?;
        let d = rel_diff(&y, &naive(&x, &w, &case.4)?)?;
        assert!(d <= 1e-12, "case {k} {case:?}: naive diff {d}");
        if case.4.dilation[0] != case.4.dilation[1] {
            continue;
        }
        let r = Tensor::from_vec(Lcg(k as u64).vec(y.elem_count()), y.shape(), &Device::Cpu)?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        let ref_grads = (candle_ref(&x, &w, &case.4)? * &r)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let (a, b) = (grads.get(v).expect("grad"), ref_grads.get(v).expect("grad"));
            let d = rel_diff(a, b)?;
            assert!(d <= 1e-12, "case {k} {case:?}: gradient diff {d}");
        }
    }
    Ok(())
}

#[test]
fn backward_matches_finite_differences() -> Res {
    for (k, case) in grid().iter().enumerate().filter(|(_, c)| c.0[3] <= 13) {
        let (x, w) = tensors(case, DType::F64, 200 + k as u64)?;
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let y = depthwise_conv2d(&xv, &wv, &case.4)?;
        let r = Tensor::from_vec(Lcg(9).vec(y.elem_count()), y.shape(), &Device::Cpu)?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        let loss = |x: &Tensor, w: &Tensor| -> Result<f64> {
            (depthwise_conv2d(x, w, &case.4)? * &r)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        for (which, var) in [(0, &xv), (1, &wv)] {
            let base = var.flatten_all()?.to_vec1::<f64>()?;
            let an = grads.get(var).expect("gradient").flatten_all()?;
            let an = an.to_vec1::<f64>()?;
            for i in (0..base.len()).step_by(base.len() / 60 + 1) {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
                    if which == 0 {
                        loss(&t, &w)
                    } else {
                        loss(&x, &t)
                    }
                };
                let num = (at(1e-6)? - at(-1e-6)?) / 2e-6;
                let tol = 1e-7 * (1.0 + num.abs());
                assert!(
                    (an[i] - num).abs() <= tol,
                    "case {k} arg {which}[{i}]: {} vs {num}",
                    an[i]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_operands() -> Res {
    let case = &grid()[6];
    let (x, w) = tensors(case, DType::F32, 3)?;
    let want = depthwise_conv2d(&x, &w, &case.4)?;
    // Same values, transposed storage; and a narrowed view with a start offset.
    let xt = x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    let wt = w.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    assert!(!xt.is_contiguous() && !wt.is_contiguous());
    assert_eq!(rel_diff(&depthwise_conv2d(&xt, &wt, &case.4)?, &want)?, 0.0);
    // The op itself on a non-contiguous layout (the wrapper makes inputs contiguous first).
    let y = xt.apply_op2(
        &wt,
        DwConv {
            p: case.4,
            act: FusedActivation::None,
        },
    )?;
    assert_eq!(rel_diff(&y, &want)?, 0.0);
    let big = Tensor::cat(&[&x, &x], 0)?.narrow(0, 1, 2)?;
    let y = depthwise_conv2d(&big, &w, &case.4)?;
    let d = rel_diff(&y, &depthwise_conv2d(&big.contiguous()?, &w, &case.4)?)?;
    assert_eq!(d, 0.0);
    // Gradients flow back through the non-contiguous views.
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
    let xt = xv.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    let grads = depthwise_conv2d(&xt, &wv, &case.4)?.sum_all()?.backward()?;
    let ref_grads = candle_ref(&xv, &wv, &case.4)?.sum_all()?.backward()?;
    for v in [&xv, &wv] {
        let (a, b) = (grads.get(v).expect("grad"), ref_grads.get(v).expect("grad"));
        assert!(rel_diff(a, b)? <= 1e-5);
    }
    Ok(())
}

#[test]
fn rejects_bad_arguments() -> Res {
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &Device::Cpu)?;
    let ok = DepthwiseParams::default();
    let w = |o: usize, i: usize, k: usize| Tensor::zeros((o, i, k, k), DType::F32, &Device::Cpu);
    assert!(depthwise_conv2d(&x, &w(4, 1, 3)?, &ok).is_ok());
    assert!(depthwise_conv2d(&x, &w(6, 1, 3)?, &ok).is_err()); // 6 % 4 != 0
    assert!(depthwise_conv2d(&x, &w(4, 2, 3)?, &ok).is_err()); // not depthwise
    assert!(depthwise_conv2d(&x, &w(4, 1, 7)?, &ok).is_err()); // kernel > padded input
    let zero_stride = p([0, 1], [1, 1], [0; 4]);
    assert!(depthwise_conv2d(&x, &w(4, 1, 3)?, &zero_stride).is_err());
    let w64 = w(4, 1, 3)?.to_dtype(DType::F64)?;
    assert!(depthwise_conv2d(&x, &w64, &ok).is_err()); // mixed dtypes
    let xi = x.to_dtype(DType::U8)?;
    assert!(depthwise_conv2d(&xi, &w(4, 1, 3)?.to_dtype(DType::U8)?, &ok).is_err());
    Ok(())
}

#[test]
fn fused_bias_and_activation_match_separate_ops() -> Res {
    let acts = [
        FusedActivation::None,
        FusedActivation::Relu,
        FusedActivation::Clip(-0.3, 0.4),
    ];
    for (k, case) in grid().iter().enumerate() {
        for act in acts {
            let (x, w) = tensors(case, DType::F64, 500 + k as u64)?;
            let o = w.dim(0)?;
            let b = Tensor::from_vec(Lcg(k as u64).vec(o), o, &Device::Cpu)?;
            let (x, w, b) = (
                Var::from_tensor(&x)?,
                Var::from_tensor(&w)?,
                Var::from_tensor(&b)?,
            );
            let fused = depthwise_conv2d_fused(&x, &w, Some(&b), act, &case.4)?;
            let plain =
                depthwise_conv2d(&x, &w, &case.4)?.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
            let plain = match act {
                FusedActivation::None => plain,
                FusedActivation::Relu => plain.relu()?,
                FusedActivation::Clip(lo, hi) => plain.clamp(lo, hi)?,
            };
            assert!(
                rel_diff(&fused, &plain)? <= 1e-12,
                "case {k} {act:?}: forward"
            );
            let r = Tensor::from_vec(Lcg(3).vec(fused.elem_count()), fused.shape(), &Device::Cpu)?;
            let g1 = (fused * &r)?.sum_all()?.backward()?;
            let g2 = (plain * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let d = rel_diff(g1.get(v).expect("grad"), g2.get(v).expect("grad"))?;
                assert!(d <= 1e-12, "case {k} {act:?}: d{name} diff {d}");
            }
        }
    }
    Ok(())
}
