//! Tests of `pool2d`: a naive reference, finite differences, the composite path, edge cases.

use super::*;
use candle_core::{Device, Var};

type Res = anyhow::Result<()>;

/// Small deterministic generator (no `rand` dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn uniform(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
    /// `n` distinct values 0.01 apart, shuffled: no max ties, argmax stable under 1e-6 steps.
    fn distinct(&mut self, n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - n as f64 * 0.005).collect();
        for i in (1..n).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
        v
    }
}

fn params(
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pads: [usize; 4],
    ceil_mode: bool,
) -> Pool2dParams {
    Pool2dParams {
        kernel: k,
        stride: s,
        dilation: d,
        pads,
        ceil_mode,
        count_include_pad: false,
    }
}

fn grid() -> Vec<Pool2dParams> {
    vec![
        Pool2dParams::new([2, 2], [2, 2]),
        params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false), // ResNet stem
        params([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], false),
        params([3, 3], [2, 2], [1, 1], [0; 4], true),
        params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], true),
        params([2, 2], [1, 1], [2, 2], [0; 4], false),
        params([3, 3], [2, 2], [2, 2], [1, 2, 1, 0], false),
        params([2, 2], [1, 1], [1, 1], [0, 1, 1, 0], false),
        params([3, 2], [1, 2], [1, 1], [1, 0, 2, 1], true),
        params([2, 3], [3, 2], [2, 1], [1, 1, 0, 2], true),
        params([1, 1], [2, 3], [1, 1], [0; 4], true),
        params([2, 1], [1, 1], [3, 1], [1, 0, 1, 0], false), // empty windows on H = 2
    ]
}

/// Naive onnxruntime-semantics pooling over plain vectors, independent of `Win`.
fn reference(x: &[f64], dims: [usize; 4], p: &Pool2dParams, avg: bool, lowest: f64) -> Vec<f64> {
    let [n, c, h, w] = dims;
    let (oh, ow) = p.output_hw(h, w).unwrap();
    let mut y = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut sum, mut valid) = (None::<f64>, 0.0, 0usize);
                let (mut incl_h, mut incl_w) = (0usize, 0usize);
                for i in 0..p.kernel[0] {
                    let hh = (oy * p.stride[0] + i * p.dilation[0]) as isize - p.pads[0] as isize;
                    incl_h += usize::from(hh < (h + p.pads[2]) as isize);
                }
                for j in 0..p.kernel[1] {
                    let ww = (ox * p.stride[1] + j * p.dilation[1]) as isize - p.pads[1] as isize;
                    incl_w += usize::from(ww < (w + p.pads[3]) as isize);
                }
                for i in 0..p.kernel[0] {
                    let hh = (oy * p.stride[0] + i * p.dilation[0]) as isize - p.pads[0] as isize;
                    for j in 0..p.kernel[1] {
                        let ww =
                            (ox * p.stride[1] + j * p.dilation[1]) as isize - p.pads[1] as isize;
                        if hh < 0 || ww < 0 || hh >= h as isize || ww >= w as isize {
                            continue;
                        }
                        let v = x[(plane * h + hh as usize) * w + ww as usize];
                        sum += v;
                        valid += 1;
                        if best.is_none_or(|b| v > b) {
                            best = Some(v);
                        }
                    }
                }
                y.push(match (avg, valid) {
                    (false, _) => best.unwrap_or(lowest),
                    (true, 0) => 0.0,
                    (true, _) => {
                        sum / (if p.count_include_pad {
                            incl_h * incl_w
                        } else {
                            valid
                        }) as f64
                    }
                });
            }
        }
    }
    y
}

fn to_vec(t: &Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: [{i}] got {g}, want {w}"
        );
    }
}

type PoolFn = fn(&Tensor, &Pool2dParams) -> Result<Tensor>;

#[test]
fn forward_matches_reference() -> Res {
    let mut rng = Lcg(1);
    let ops: [(&str, PoolFn, PoolFn, bool); 2] = [
        ("max", max_pool2d, max_pool2d_composite, false),
        ("avg", avg_pool2d, avg_pool2d_composite, true),
    ];
    for base in grid() {
        for cip in [false, true] {
            let p = Pool2dParams {
                count_include_pad: cip,
                ..base
            };
            for dims in [[2, 3, 7, 9], [1, 2, 6, 5], [1, 1, 3, 4], [1, 2, 2, 3]] {
                if p.output_hw(dims[2], dims[3]).is_err() {
                    continue;
                }
                let x = rng.vec(dims.iter().product());
                for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
                    let xt = Tensor::from_vec(x.clone(), &dims, &Device::Cpu)?.to_dtype(dtype)?;
                    let xs = to_vec(&xt)?;
                    for (name, op, composite, avg) in ops {
                        let want = reference(&xs, dims, &p, avg, lowest(dtype)?);
                        let what = format!("{name} {dtype:?} {dims:?} {p:?}");
                        let y = op(&xt, &p)?;
                        let (oh, ow) = p.output_hw(dims[2], dims[3])?;
                        assert_eq!(y.dims(), &[dims[0], dims[1], oh, ow], "{what}");
                        assert_close(&to_vec(&y)?, &want, tol, &what);
                        assert_close(&to_vec(&composite(&xt, &p)?)?, &want, tol, &what);
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn output_sizes_and_errors() {
    let resnet = params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false);
    assert_eq!(resnet.output_hw(112, 112).unwrap(), (56, 56));
    assert_eq!(
        Pool2dParams::new([2, 2], [2, 2]).output_hw(7, 6).unwrap(),
        (3, 3)
    );
    // ceil_mode: 6 -> ceil(3 / 2) + 1 = 3 (the last window overhangs by one cell).
    assert_eq!(
        params([3, 3], [2, 2], [1, 1], [0; 4], true)
            .output_hw(6, 5)
            .unwrap(),
        (3, 2)
    );
    // ceil_mode, last window would start in the end padding: ceil(5 / 2) + 1 = 4 -> 3.
    assert_eq!(
        params([2, 2], [2, 2], [1, 1], [1, 1, 1, 1], true)
            .output_hw(5, 5)
            .unwrap(),
        (3, 3)
    );
    assert!(Pool2dParams::new([0, 2], [1, 1]).output_hw(4, 4).is_err());
    assert!(Pool2dParams::new([2, 2], [0, 1]).output_hw(4, 4).is_err());
    assert!(params([2, 2], [1, 1], [1, 1], [2, 0, 0, 0], false)
        .output_hw(4, 4)
        .is_err());
    assert!(Pool2dParams::new([3, 3], [1, 1]).output_hw(2, 5).is_err());
    assert!(params([2, 2], [1, 1], [1, 1], [1, 1, 1, 1], false)
        .output_hw(0, 5)
        .is_err());
    let x = Tensor::zeros((1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(max_pool2d(&x, &Pool2dParams::new([2, 2], [2, 2])).is_err());
    let x = Tensor::zeros((1, 1, 4, 4), DType::U32, &Device::Cpu).unwrap();
    assert!(max_pool2d(&x, &Pool2dParams::new([2, 2], [2, 2])).is_err());
    assert!(avg_pool2d_composite(&x, &Pool2dParams::new([2, 2], [2, 2])).is_err());
}

#[test]
fn windows_without_input_cells() -> Res {
    // Taps at rows -1 and 2 of a 2-row input: max gives the lowest value, average 0, no grad.
    let p = params([2, 1], [1, 1], [3, 1], [1, 0, 1, 0], false);
    let x = Var::from_vec(Lcg(3).vec(6), (1, 1, 2, 3), &Device::Cpu)?;
    let y = max_pool2d(&x, &p)?;
    assert_eq!(to_vec(&y)?, vec![f64::MIN; 3]);
    assert_eq!(to_vec(&avg_pool2d(&x, &p)?)?, vec![0.0; 3]);
    let g = y.sum_all()?.backward()?;
    assert!(g
        .get(&x)
        .map_or(Ok(true), |g| to_vec(g).map(|v| v.iter().all(|&e| e == 0.0)))?);
    Ok(())
}

#[test]
fn max_ties_route_to_first_max() -> Res {
    let x = Var::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu)?;
    let grads = max_pool2d(&x, &Pool2dParams::new([2, 2], [2, 2]))?
        .sum_all()?
        .backward()?;
    let want = [
        1., 0., 1., 0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0.,
    ];
    assert_eq!(to_vec(grads.get(&x).unwrap())?, want);
    // Overlapping windows (k3 s1 p1): each window's first valid cell gets the gradient.
    let x = Var::zeros((1, 1, 3, 3), DType::F64, &Device::Cpu)?;
    let p = params([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], false);
    let grads = max_pool2d(&x, &p)?.sum_all()?.backward()?;
    assert_eq!(
        to_vec(grads.get(&x).unwrap())?,
        [4., 2., 0., 2., 1., 0., 0., 0., 0.]
    );
    Ok(())
}

/// Gradient of `sum(f(x) * r)` by autograd, checked against central finite differences.
fn grad_check(f: impl Fn(&Tensor) -> Result<Tensor>, dims: &[usize], seed: u64) -> Res {
    let mut rng = Lcg(seed);
    let x0 = rng.distinct(dims.iter().product());
    let x = Var::from_vec(x0.clone(), dims, &Device::Cpu)?;
    let y = f(&x)?;
    let r = Tensor::from_vec(rng.vec(y.elem_count()), y.shape(), &Device::Cpu)?;
    let loss =
        |t: &Tensor| -> anyhow::Result<f64> { Ok(f(t)?.mul(&r)?.sum_all()?.to_scalar::<f64>()?) };
    let grads = y.mul(&r)?.sum_all()?.backward()?;
    let g = to_vec(grads.get(&x).expect("no gradient for x"))?;
    let eps = 1e-6;
    for i in 0..x0.len() {
        let mut xp = x0.clone();
        xp[i] += eps;
        let lp = loss(&Tensor::from_vec(xp.clone(), dims, &Device::Cpu)?)?;
        xp[i] -= 2.0 * eps;
        let lm = loss(&Tensor::from_vec(xp, dims, &Device::Cpu)?)?;
        let fd = (lp - lm) / (2.0 * eps);
        assert!(
            (g[i] - fd).abs() <= 1e-6 * fd.abs().max(1.0),
            "[{i}] grad {} vs fd {fd}",
            g[i]
        );
    }
    Ok(())
}

#[test]
fn max_pool_gradient_matches_finite_differences() -> Res {
    for (seed, p) in [
        params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false),
        params([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], false),
        params([3, 2], [2, 1], [1, 1], [1, 0, 2, 1], true),
        params([3, 3], [2, 2], [1, 1], [0; 4], true),
        params([2, 3], [1, 2], [2, 2], [1, 1, 0, 2], false),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("{p:?}");
        grad_check(|x| max_pool2d(x, &p), &[2, 2, 7, 8], seed as u64 + 10)
            .map_err(|e| e.context(what))?;
    }
    Ok(())
}

#[test]
fn avg_pool_gradient_matches_finite_differences() -> Res {
    for cip in [false, true] {
        for (seed, base) in [
            params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false),
            params([3, 3], [2, 2], [1, 1], [1, 2, 0, 1], true),
            params([2, 3], [1, 2], [2, 2], [1, 1, 0, 2], true),
        ]
        .into_iter()
        .enumerate()
        {
            let p = Pool2dParams {
                count_include_pad: cip,
                ..base
            };
            grad_check(|x| avg_pool2d(x, &p), &[2, 2, 7, 8], seed as u64 + 20)?;
        }
    }
    Ok(())
}

#[test]
fn backward_ops_are_differentiable() -> Res {
    // The backward ops are linear in the gradient they route; their own backward is checked
    // with finite differences through that argument.
    let p = params([3, 2], [2, 1], [1, 2], [1, 1, 2, 0], true);
    let (oh, ow) = p.output_hw(7, 6)?;
    let x = Tensor::from_vec(Lcg(5).distinct(2 * 3 * 7 * 6), (2, 3, 7, 6), &Device::Cpu)?;
    let out = (oh, ow);
    for scatter in [true, false] {
        let dims = if scatter {
            [2, 3, oh, ow]
        } else {
            [2, 3, 7, 6]
        };
        grad_check(
            |v| x.apply_op2(v, MaxPoolRoute { p, out, scatter }),
            &dims,
            6,
        )?;
    }
    for cip in [false, true] {
        let p = Pool2dParams {
            count_include_pad: cip,
            ..p
        };
        grad_check(
            |g| g.apply_op1(AvgPoolAdjoint { p, inp: (7, 6) }),
            &[2, 3, oh, ow],
            7,
        )?;
    }
    Ok(())
}

#[test]
fn composite_matches_custom_ops_with_gradients() -> Res {
    let mut rng = Lcg(8);
    for base in grid() {
        for cip in [false, true] {
            let p = Pool2dParams {
                count_include_pad: cip,
                ..base
            };
            let dims = [2, 3, 7, 9];
            let x = Var::from_vec(rng.distinct(2 * 3 * 7 * 9), &dims, &Device::Cpu)?;
            for (name, op, composite) in [
                ("max", max_pool2d as PoolFn, max_pool2d_composite as PoolFn),
                ("avg", avg_pool2d, avg_pool2d_composite),
            ] {
                let what = format!("{name} {p:?}");
                let (y1, y2) = (op(&x, &p)?, composite(&x, &p)?);
                assert_close(&to_vec(&y2)?, &to_vec(&y1)?, 1e-12, &what);
                let r = Tensor::from_vec(rng.vec(y1.elem_count()), y1.shape(), &Device::Cpu)?;
                let g1 = y1.mul(&r)?.sum_all()?.backward()?;
                let g2 = y2.mul(&r)?.sum_all()?.backward()?;
                let (g1, g2) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
                assert_close(&to_vec(g2)?, &to_vec(g1)?, 1e-12, &what);
            }
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_input_and_half_types() -> Res {
    let p = params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], true);
    let xt = Tensor::from_vec(Lcg(9).vec(2 * 3 * 9 * 7), (2, 3, 9, 7), &Device::Cpu)?;
    let x = xt.transpose(2, 3)?; // [2, 3, 7, 9], strided
    assert!(!x.is_contiguous());
    let xc = x.contiguous()?;
    for op in [max_pool2d as PoolFn, avg_pool2d] {
        let want = to_vec(&op(&xc, &p)?)?;
        assert_close(&to_vec(&op(&x, &p)?)?, &want, 0.0, "strided");
        for dtype in [DType::F16, DType::BF16] {
            let got = to_vec(&op(&x.to_dtype(dtype)?, &p)?)?;
            assert_close(&got, &want, 1e-2, &format!("{dtype:?}"));
        }
    }
    // Gradient through a strided view of a variable equals the contiguous one, transposed.
    for op in [max_pool2d as PoolFn, avg_pool2d] {
        let v = Var::from_tensor(&xt)?;
        let g = op(&v.transpose(2, 3)?, &p)?.sum_all()?.backward()?;
        let g = to_vec(&g.get(&v).unwrap().transpose(2, 3)?)?;
        let vc = Var::from_tensor(&xc)?;
        let want = op(&vc, &p)?.sum_all()?.backward()?;
        assert_close(&g, &to_vec(want.get(&vc).unwrap())?, 1e-12, "strided grad");
    }
    Ok(())
}

#[test]
fn large_input_uses_threads_and_agrees_with_composite() -> Res {
    // 64 planes of 32x32: above the threading threshold.
    let p = params([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false);
    let dims = [4, 16, 32, 32];
    let x = Var::from_vec(Lcg(11).distinct(dims.iter().product()), &dims, &Device::Cpu)?;
    for (op, composite) in [
        (max_pool2d as PoolFn, max_pool2d_composite as PoolFn),
        (avg_pool2d, avg_pool2d_composite),
    ] {
        let (y1, y2) = (op(&x, &p)?, composite(&x, &p)?);
        assert_close(&to_vec(&y1)?, &to_vec(&y2)?, 1e-12, "large forward");
        let (g1, g2) = (y1.sum_all()?.backward()?, y2.sum_all()?.backward()?);
        assert_close(
            &to_vec(g1.get(&x).unwrap())?,
            &to_vec(g2.get(&x).unwrap())?,
            1e-12,
            "large grad",
        );
    }
    Ok(())
}
