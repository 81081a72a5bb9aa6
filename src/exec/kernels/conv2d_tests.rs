//! Tests of `conv2d`: a naive reference (forward), candle's conv2d under autograd (gradients of
//! input, weight and bias, fused activations included), finite differences, both batch
//! schedules, non-contiguous inputs and errors.

use super::*;
use crate::exec::kernels::test_util::{best_ms, rel_diff, Lcg};
use candle_core::{Device, Var};

type Res = anyhow::Result<()>;

/// `(x dims [N, C_in, H, W], C_out, KH, KW, params)`.
type Case = ([usize; 4], usize, usize, usize, Conv2dParams);

fn p(stride: [usize; 2], dilation: [usize; 2], pads: [usize; 4], groups: usize) -> Conv2dParams {
    Conv2dParams {
        stride,
        dilation,
        pads,
        groups,
        activation: FusedActivation::None,
    }
}

fn grid() -> Vec<Case> {
    vec![
        ([2, 3, 8, 8], 4, 3, 3, p([1, 1], [1, 1], [1, 1, 1, 1], 1)),
        ([1, 4, 9, 7], 6, 3, 3, p([2, 2], [1, 1], [1, 1, 1, 1], 1)), // batch 1: threads inside gemm
        ([3, 4, 8, 8], 4, 3, 3, p([2, 2], [1, 1], [0, 0, 1, 1], 2)), // odd batch, groups
        ([4, 6, 7, 7], 8, 1, 1, p([1, 1], [1, 1], [0; 4], 1)),       // pointwise: no im2col
        ([2, 6, 7, 7], 9, 1, 1, p([1, 1], [1, 1], [0; 4], 3)),       // grouped pointwise
        ([2, 4, 9, 9], 8, 1, 1, p([2, 2], [1, 1], [0; 4], 1)),       // strided 1x1 (downsample)
        ([1, 3, 11, 10], 2, 5, 5, p([1, 1], [1, 1], [2, 2, 2, 2], 1)),
        ([2, 2, 13, 9], 4, 5, 3, p([2, 1], [1, 1], [1, 2, 2, 1], 2)),
        ([1, 2, 10, 11], 3, 3, 3, p([1, 1], [2, 2], [2, 2, 2, 2], 1)),
        ([1, 2, 9, 9], 2, 3, 3, p([2, 3], [2, 1], [1, 0, 0, 2], 1)),
        ([1, 2, 5, 5], 2, 3, 3, p([1, 1], [1, 1], [3, 0, 0, 3], 1)), // pads >= kernel
        ([1, 1, 2, 3], 2, 5, 5, p([1, 1], [1, 1], [2, 2, 2, 2], 1)), // kernel > input
        ([2, 3, 1, 17], 2, 1, 3, p([1, 1], [1, 1], [0, 1, 0, 1], 1)), // 1-D
        ([2, 4, 6, 6], 4, 3, 3, p([1, 1], [1, 1], [1, 1, 1, 1], 4)), // depthwise as groups
        (
            [8, 16, 20, 20],
            24,
            3,
            3,
            p([1, 1], [1, 1], [1, 1, 1, 1], 1),
        ), // several tasks
        ([2, 3, 30, 30], 8, 7, 7, p([2, 2], [1, 1], [3, 3, 3, 3], 1)), // ResNet stem shape
        // Under `BATCH_BELOW_PIXELS` output pixels: the batch as one product.
        ([3, 5, 3, 3], 7, 1, 1, p([1, 1], [1, 1], [0; 4], 1)), // pointwise
        ([2, 6, 2, 2], 9, 1, 1, p([1, 1], [1, 1], [0; 4], 3)), // grouped pointwise
        ([2, 4, 6, 6], 8, 3, 3, p([2, 2], [1, 1], [1, 1, 1, 1], 1)), // 3x3 outputs
    ]
}

fn tensors(case: &Case, dtype: DType, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let ([n, c, h, w], o, kh, kw, prm) = *case;
    let mut rng = Lcg(seed);
    let dev = &Device::Cpu;
    let x = Tensor::from_vec(rng.vec(n * c * h * w), (n, c, h, w), dev)?;
    let cg = c / prm.groups;
    let wt = Tensor::from_vec(rng.vec(o * cg * kh * kw), (o, cg, kh, kw), dev)?;
    let b = Tensor::from_vec(rng.vec(o), o, dev)?;
    Ok((x.to_dtype(dtype)?, wt.to_dtype(dtype)?, b.to_dtype(dtype)?))
}

fn act_f64(a: FusedActivation, v: f64) -> f64 {
    match a {
        FusedActivation::None => v,
        FusedActivation::Relu => v.max(0.0),
        FusedActivation::Clip(lo, hi) => v.clamp(lo, hi),
    }
}

/// Direct definition with bounds checks, in f64.
fn naive(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2dParams) -> Result<Tensor> {
    let g = Geom::new(p, x.dims(), w.dims())?;
    let v = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
    let (xv, wv) = (v(x)?, v(w)?);
    let bv = b.map(v).transpose()?;
    let ((h, wd), (kh, kw), (oh, ow), cin) = (g.inp, g.k, g.out, g.cin_g * g.groups);
    let mut y = Vec::new();
    for n in 0..g.n {
        for o in 0..g.cout() {
            let grp = o / g.cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.as_ref().map_or(0.0, |b| b[o]);
                    for ci in 0..g.cin_g {
                        for i in 0..kh {
                            for j in 0..kw {
                                let r = (oy * p.stride[0] + i * p.dilation[0]) as isize
                                    - p.pads[0] as isize;
                                let c = (ox * p.stride[1] + j * p.dilation[1]) as isize
                                    - p.pads[1] as isize;
                                if (0..h as isize).contains(&r) && (0..wd as isize).contains(&c) {
                                    let ch = grp * g.cin_g + ci;
                                    let xi = ((n * cin + ch) * h + r as usize) * wd + c as usize;
                                    s += xv[xi] * wv[((o * g.cin_g + ci) * kh + i) * kw + j];
                                }
                            }
                        }
                    }
                    y.push(act_f64(p.activation, s));
                }
            }
        }
    }
    Tensor::from_vec(y, g.y_shape(), &Device::Cpu)
}

/// candle's path (one dilation): zero pads, grouped conv2d with stride 1, every stride-th
/// row/column, bias, then the activation; differentiable.
fn candle_ref(x: &Tensor, w: &Tensor, b: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    assert_eq!(p.dilation[0], p.dilation[1], "candle needs one dilation");
    let [t, l, bo, r] = p.pads;
    let xp = x.pad_with_zeros(2, t, bo)?.pad_with_zeros(3, l, r)?;
    let mut y = xp.conv2d(w, 0, 1, p.dilation[0], p.groups)?;
    for (a, s) in p.stride.into_iter().enumerate() {
        let idx: Vec<u32> = (0..y.dim(2 + a)? as u32).step_by(s).collect();
        y = y.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 2 + a)?;
    }
    y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
    match p.activation {
        FusedActivation::None => Ok(y),
        FusedActivation::Relu => y.relu(),
        FusedActivation::Clip(lo, hi) => y.clamp(lo, hi),
    }
}

const ACTIVATIONS: [FusedActivation; 3] = [
    FusedActivation::None,
    FusedActivation::Relu,
    FusedActivation::Clip(-0.5, 0.7),
];

#[test]
fn forward_matches_naive() -> Res {
    for (k, case) in grid().iter().enumerate() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (x, w, b) = tensors(case, dtype, k as u64)?;
            for (a, act) in ACTIVATIONS.into_iter().enumerate() {
                let prm = Conv2dParams {
                    activation: act,
                    ..case.4
                };
                let bias = (a != 0).then_some(&b); // with and without a bias
                let y = conv2d(&x, &w, bias, &prm)?;
                assert_eq!(y.dtype(), dtype);
                let d = rel_diff(&y, &naive(&x, &w, bias, &prm)?)?;
                assert!(d <= tol, "case {k} {dtype:?} {act:?}: naive diff {d}");
            }
        }
    }
    Ok(())
}

#[test]
fn residual_is_added_before_the_activation_exactly_as_unfused() -> Res {
    for (k, case) in grid().iter().enumerate() {
        for dtype in [DType::F64, DType::F32] {
            let (x, w, b) = tensors(case, dtype, 40 + k as u64)?;
            let plain = conv2d(&x, &w, Some(&b), &case.4)?;
            let mut rng = Lcg(90 + k as u64);
            let r = Tensor::from_vec(rng.vec(plain.elem_count()), plain.shape(), &Device::Cpu)?
                .to_dtype(dtype)?;
            for act in ACTIVATIONS {
                let prm = Conv2dParams {
                    activation: act,
                    ..case.4
                };
                let fused = conv2d_add(&x, &w, Some(&b), &r, &prm)?.expect("same shape");
                let sum = (&plain + &r)?;
                let want = match act {
                    FusedActivation::None => sum,
                    FusedActivation::Relu => sum.relu()?,
                    FusedActivation::Clip(lo, hi) => sum.clamp(lo, hi)?,
                };
                let d = (fused - want)?.abs()?.flatten_all()?.max(0)?;
                let d = d.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                assert_eq!(d, 0.0, "case {k} {dtype:?} {act:?}");
            }
            // A residual of another shape (a broadcast) is left to the caller.
            let other = Tensor::zeros(1, dtype, &Device::Cpu)?;
            assert!(conv2d_add(&x, &w, None, &other, &case.4)?.is_none());
        }
    }
    Ok(())
}

#[test]
fn a_batch_gives_each_image_the_values_it_gets_alone() -> Res {
    // Images under `BATCH_BELOW_PIXELS` output pixels run as one product over the batch
    // (`forward_small_images`: the last grid cases), larger ones image by image; either way an image's output does not depend on its batch, bit for
    // bit. Only where the batch takes the Winograd path and one image does not (the batch
    // pays for the weights' transform, one image would not) do they differ, by rounding.
    use crate::exec::kernels::conv2d_winograd::winograd_applies as applies;
    for (k, case) in grid().iter().enumerate() {
        let (x, w, b) = tensors(case, DType::F32, 70 + k as u64)?;
        let prm = Conv2dParams {
            activation: FusedActivation::Clip(-0.5, 0.7),
            ..case.4
        };
        let batch = conv2d(&x, &w, Some(&b), &prm)?;
        let mut one = x.dims4()?;
        one.0 = 1;
        let (g_batch, g_one) = (
            Geom::new(&prm, x.dims(), w.dims())?,
            Geom::new(&prm, &[one.0, one.1, one.2, one.3], w.dims())?,
        );
        let same_path = applies(&g_batch) == applies(&g_one);
        for n in 0..x.dim(0)? {
            let alone = conv2d(&x.narrow(0, n, 1)?, &w, Some(&b), &prm)?;
            let mine = batch.narrow(0, n, 1)?;
            if same_path {
                let d = (mine - alone)?.abs()?.flatten_all()?.max(0)?;
                assert_eq!(d.to_scalar::<f32>()?, 0.0, "case {k} image {n}");
            } else {
                let d = rel_diff(&mine, &alone)?;
                assert!(d <= 1e-5, "case {k} image {n}: {d}");
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
        for act in ACTIVATIONS {
            let prm = Conv2dParams {
                activation: act,
                ..case.4
            };
            let (x, w, b) = tensors(case, DType::F64, 100 + k as u64)?;
            let (x, w, b) = (
                Var::from_tensor(&x)?,
                Var::from_tensor(&w)?,
                Var::from_tensor(&b)?,
            );
            let y = conv2d(&x, &w, Some(&b), &prm)?;
            let r = Tensor::from_vec(Lcg(7).vec(y.elem_count()), y.shape(), &Device::Cpu)?;
            let grads = (y * &r)?.sum_all()?.backward()?;
            let ref_grads = (candle_ref(&x, &w, &b, &prm)? * &r)?
                .sum_all()?
                .backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let (Some(a), Some(e)) = (grads.get(v), ref_grads.get(v)) else {
                    panic!("case {k}: no gradient for {name}")
                };
                let d = rel_diff(a, e)?;
                assert!(d <= 1e-12, "case {k} {act:?}: d{name} diff {d}");
            }
        }
        // Without a bias: the two-operand op.
        let (x, w, _) = tensors(case, DType::F32, 200 + k as u64)?;
        let (x, w) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let grads = conv2d(&x, &w, None, &case.4)?
            .sqr()?
            .sum_all()?
            .backward()?;
        let zero = Tensor::zeros(case.1, DType::F32, &Device::Cpu)?;
        let ref_grads = candle_ref(&x, &w, &zero, &case.4)?
            .sqr()?
            .sum_all()?
            .backward()?;
        for v in [&x, &w] {
            let d = rel_diff(grads.get(v).expect("grad"), ref_grads.get(v).expect("grad"))?;
            assert!(d <= 1e-5, "case {k} f32 without bias: diff {d}");
        }
    }
    Ok(())
}

#[test]
fn backward_matches_finite_differences() -> Res {
    for (k, case) in grid()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.0.iter().product::<usize>() < 800)
    {
        let (x, w, b) = tensors(case, DType::F64, 300 + k as u64)?;
        let (xv, wv, bv) = (
            Var::from_tensor(&x)?,
            Var::from_tensor(&w)?,
            Var::from_tensor(&b)?,
        );
        let y = conv2d(&xv, &wv, Some(&bv), &case.4)?;
        let r = Tensor::from_vec(Lcg(9).vec(y.elem_count()), y.shape(), &Device::Cpu)?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        let loss = |t: [&Tensor; 3]| -> Result<f64> {
            (conv2d(t[0], t[1], Some(t[2]), &case.4)? * &r)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        for (which, var) in [&xv, &wv, &bv].into_iter().enumerate() {
            let base = var.flatten_all()?.to_vec1::<f64>()?;
            let an = grads
                .get(var)
                .expect("gradient")
                .flatten_all()?
                .to_vec1::<f64>()?;
            for i in (0..base.len()).step_by(base.len() / 40 + 1) {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
                    let mut ops = [&x, &w, &b];
                    ops[which] = &t;
                    loss(ops)
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
fn batch_schedules_agree() -> Res {
    // One image at a time (threads in gemm) and images on threads give the same result.
    let case = ([5, 8, 12, 12], 16, 3, 3, p([1, 1], [1, 1], [1, 1, 1, 1], 1));
    let (x, w, b) = tensors(&case, DType::F64, 11)?;
    let whole = conv2d(&x, &w, Some(&b), &case.4)?;
    for n in 0..5 {
        let one = conv2d(&x.narrow(0, n, 1)?, &w, Some(&b), &case.4)?;
        assert!(
            rel_diff(&one, &whole.narrow(0, n, 1)?)? <= 1e-12,
            "image {n}"
        );
    }
    Ok(())
}

#[test]
fn non_contiguous_operands() -> Res {
    let case = &grid()[0];
    let (x, w, b) = tensors(case, DType::F32, 3)?;
    let want = conv2d(&x, &w, Some(&b), &case.4)?;
    let xt = x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    let wt = w.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    assert!(!xt.is_contiguous() && !wt.is_contiguous());
    assert_eq!(rel_diff(&conv2d(&xt, &wt, Some(&b), &case.4)?, &want)?, 0.0);
    let big = Tensor::cat(&[&x, &x], 0)?.narrow(0, 1, 2)?;
    let d = rel_diff(
        &conv2d(&big, &w, None, &case.4)?,
        &conv2d(&big.contiguous()?, &w, None, &case.4)?,
    )?;
    assert_eq!(d, 0.0);
    Ok(())
}

#[test]
fn rejects_bad_arguments() -> Res {
    let dev = &Device::Cpu;
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, dev)?;
    let ok = Conv2dParams::default();
    let w = |o: usize, i: usize, k: usize| Tensor::zeros((o, i, k, k), DType::F32, dev);
    assert!(conv2d(&x, &w(4, 4, 3)?, None, &ok).is_ok());
    assert!(conv2d(&x, &w(4, 3, 3)?, None, &ok).is_err()); // channels differ
    assert!(conv2d(&x, &w(4, 4, 7)?, None, &ok).is_err()); // kernel > padded input
    let grouped = Conv2dParams { groups: 3, ..ok };
    assert!(conv2d(&x, &w(3, 1, 3)?, None, &grouped).is_err()); // 4 % 3 != 0
    let zero_stride = Conv2dParams {
        stride: [0, 1],
        ..ok
    };
    assert!(conv2d(&x, &w(4, 4, 3)?, None, &zero_stride).is_err());
    let bad_bias = Tensor::zeros(5, DType::F32, dev)?;
    assert!(conv2d(&x, &w(4, 4, 3)?, Some(&bad_bias), &ok).is_err());
    let w64 = w(4, 4, 3)?.to_dtype(DType::F64)?;
    assert!(conv2d(&x, &w64, None, &ok).is_err()); // mixed dtypes
    let xi = x.to_dtype(DType::U8)?;
    assert!(conv2d(&xi, &w(4, 4, 3)?.to_dtype(DType::U8)?, None, &ok).is_err());
    Ok(())
}

#[test]
fn backward_skips_operands_outside_the_graph() -> Res {
    // The input images of a first convolution are no variable: no input gradient is computed
    // for them, and the weight's is the same as when the input is a variable.
    let case = &grid()[0];
    let (x, w, b) = tensors(case, DType::F32, 400)?;
    let (wv, bv) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?);
    let loss =
        |x: &Tensor| -> Result<Tensor> { conv2d(x, &wv, Some(&bv), &case.4)?.sqr()?.sum_all() };
    let plain = loss(&x)?.backward()?;
    assert!(plain.get(&x).is_none(), "no gradient for a constant input");
    let xv = Var::from_tensor(&x)?;
    let tracked = loss(&xv)?.backward()?;
    assert!(tracked.get(&xv).is_some());
    for v in [wv.as_tensor(), bv.as_tensor()] {
        let (a, e) = (plain.get(v).expect("grad"), tracked.get(v).expect("grad"));
        assert_eq!(rel_diff(a, e)?, 0.0);
    }
    // A frozen (constant) weight gets no gradient either; the input still does.
    let frozen = conv2d(&xv, &w, None, &case.4)?
        .sqr()?
        .sum_all()?
        .backward()?;
    assert!(frozen.get(&w).is_none() && frozen.get(&xv).is_some());
    Ok(())
}

/// Times the forward and both gradients of every convolution shape of the ResNet-18 training
/// benchmark (batch 32 at 112x112), with and without Winograd, alone (it sets
/// `AMCT_WINOGRAD`, which other tests read):
/// `cargo test --release --lib resnet18_layer_times -- --ignored --nocapture`.
#[test]
#[ignore]
fn resnet18_layer_times() {
    // The binary's allocator settings (run alone, so no other test thread allocates yet).
    crate::process_tuning::tune_process();
    // (C_in, C_out, input side, kernel, stride, pad, count in the network)
    let shapes = [
        (3, 64, 112, 7, 2, 3, 1),
        (64, 64, 28, 3, 1, 1, 4),
        (64, 128, 28, 3, 2, 1, 1),
        (64, 128, 28, 1, 2, 0, 1),
        (128, 128, 14, 3, 1, 1, 3),
        (128, 256, 14, 3, 2, 1, 1),
        (128, 256, 14, 1, 2, 0, 1),
        (256, 256, 7, 3, 1, 1, 3),
        (256, 512, 7, 3, 2, 1, 1),
        (256, 512, 7, 1, 2, 0, 1),
        (512, 512, 4, 3, 1, 1, 3),
    ];
    let n = 32;
    let mut totals = [0f64; 3];
    for (cin, cout, side, k, s, pad, count) in shapes {
        let prm = p([s, s], [1, 1], [pad; 4], 1);
        let g = Geom::new(&prm, &[n, cin, side, side], &[cout, cin, k, k]).unwrap();
        let mut rng = Lcg(7);
        let x = rng.vec_f32(n * cin * side * side);
        let w = rng.vec_f32(cout * cin * k * k);
        let gy = rng.vec_f32(n * cout * g.out_plane());
        let best = |f: &mut dyn FnMut()| best_ms(4, f);
        let mut line = format!("{cin:>3}->{cout:<3} {side:>3}x{side:<3} k{k} s{s} x{count}:");
        for wino in ["0", "1"] {
            std::env::set_var("AMCT_WINOGRAD", wino);
            let f = best(&mut || drop(fwd(&g, (FusedActivation::None, None), &x, &w, None)));
            let dx = best(&mut || drop(grad_x(&g, &gy, &w)));
            let dw = best(&mut || drop(grad_w(&g, &x, &gy)));
            line += &format!("  wino={wino}: fwd {f:6.1} dx {dx:6.1} dw {dw:6.1}");
            if wino == "1" {
                for (t, v) in totals.iter_mut().zip([f, dx, dw]) {
                    *t += v * count as f64;
                }
            }
        }
        std::env::remove_var("AMCT_WINOGRAD");
        println!("{line}");
    }
    println!(
        "network (default path): fwd {:.0} ms, dx {:.0} ms, dw {:.0} ms",
        totals[0], totals[1], totals[2]
    );
}

/// Times the forward of MobileNetV2's pointwise shapes at batch 8 (224x224 input), and a few
/// of ResNet's late ones, and prints GFLOP/s, alone: `cargo test --release --lib mobilenetv2_pointwise_times -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn mobilenetv2_pointwise_times() {
    crate::process_tuning::tune_process();
    // (C_in, C_out, side)
    let shapes = [
        (16, 96, 112),
        (32, 16, 112),
        (144, 24, 56),
        (24, 144, 56),
        (32, 192, 28),
        (192, 32, 28),
        (96, 576, 14),
        (576, 96, 14),
        (160, 960, 7),
        (960, 160, 7),
        (320, 1280, 7),
        (2048, 512, 7), // ResNet-50's last stage
        (512, 2048, 7),
        (256, 512, 4), // ResNet-18's last stage at 112x112
        (512, 512, 2),
    ];
    let n = 8;
    for (cin, cout, side) in shapes {
        let prm = p([1, 1], [1, 1], [0; 4], 1);
        let g = Geom::new(&prm, &[n, cin, side, side], &[cout, cin, 1, 1]).unwrap();
        let mut rng = Lcg(7);
        let (x, w) = (rng.vec_f32(n * cin * side * side), rng.vec_f32(cout * cin));
        let act = FusedActivation::Clip(0.0, 6.0);
        let ms = best_ms(10, || drop(fwd(&g, (act, None), &x, &w, None)));
        let gflops = 2.0 * (n * cin * cout * side * side) as f64 / ms / 1e6;
        println!("{cin:>4}->{cout:<4} {side:>3}x{side:<3}: {ms:6.2} ms, {gflops:5.1} GFLOP/s");
    }
}
