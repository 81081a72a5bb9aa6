//! The fused block against the three unfused kernels run one after the other: the same bits
//! for every geometry the strips and bands meet (several strips, strides, odd sizes, pads,
//! a batch smaller than the thread pool).

use super::*;
use crate::exec::kernels::conv2d::{conv2d, conv2d_add, Conv2dParams, FusedActivation};
use crate::exec::kernels::depthwise::{depthwise_conv2d_fused, DepthwiseParams};
use crate::exec::kernels::test_util::Lcg;
use candle_core::{Device, Tensor};

/// One block's shapes: `(N, C_in, hidden, C_out, H, W, kernel, stride, pads, expand,
/// residual)`.
type Case = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 4],
    bool,
    bool,
);

fn tensor(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(v, dims, &Device::Cpu).unwrap()
}

fn pointwise(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: FusedActivation,
    res: Option<&Tensor>,
) -> Tensor {
    let p = Conv2dParams {
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups: 1,
        activation: act,
    };
    match res {
        Some(r) => conv2d_add(x, w, Some(b), r, &p)
            .unwrap()
            .expect("residual fits"),
        None => conv2d(x, w, Some(b), &p).unwrap(),
    }
}

/// ReLU6's bounds, after the expansion and the depthwise convolution of the test blocks.
const RELU6: Option<(f32, f32)> = Some((0.0, 6.0));

/// A 1x1 expansion with a bias, then ReLU6.
fn pointwise_relu6<'a>(w: &'a [f32], bias: &'a [f32]) -> Expansion<'a> {
    Expansion::pointwise(Pointwise {
        w,
        bias: Some(bias),
        clamp: RELU6,
    })
}

/// A spatial expansion (`params`, a `k x k` kernel) with a bias, then ReLU6.
fn spatial_relu6<'a>(
    w: &'a [f32],
    bias: &'a [f32],
    k: usize,
    params: Conv2dParams,
) -> Expansion<'a> {
    Expansion {
        w,
        kernel: (k, k),
        params,
        bias: Some(bias),
        clamp: RELU6,
    }
}

/// A test block: `expand`, then the depthwise convolution of `geom` (taps and bias) and
/// ReLU6, then the projection (weights, bias, clamp).
fn relu6_block<'a>(
    expand: Option<Expansion<'a>>,
    geom: RowGeom,
    (wd, bd): (&'a [f32], &'a [f32]),
    (wp, bp, clamp): (&'a [f32], &'a [f32], Option<(f32, f32)>),
) -> Block<'a> {
    Block {
        expand,
        depthwise: Depthwise {
            geom,
            w: wd,
            bias: Some(bd),
            clamp: RELU6,
        },
        project: Pointwise {
            w: wp,
            bias: Some(bp),
            clamp,
        },
    }
}

fn check(case: Case) {
    check_dilated(case, 1);
}

/// `check` with the depthwise convolution dilated.
fn check_dilated(
    (n, cin, hidden, cout, h, w, k, stride, pads, expand, residual): Case,
    dil: usize,
) {
    let mut rng = Lcg(n as u64 * 31 + h as u64);
    let x = rng.vec_f32(n * cin * h * w);
    let hidden = if expand { hidden } else { cin };
    let (we, be) = (rng.vec_f32(hidden * cin), rng.vec_f32(hidden));
    let (wd, bd) = (rng.vec_f32(hidden * k * k), rng.vec_f32(hidden));
    let (wp, bp) = (rng.vec_f32(cout * hidden), rng.vec_f32(cout));
    let relu6 = FusedActivation::Clip(0.0, 6.0);
    let dp = DepthwiseParams {
        stride: [stride, stride],
        dilation: [dil, dil],
        pads,
    };
    // Unfused.
    let xt = tensor(&x, &[n, cin, h, w]);
    let e = match expand {
        true => pointwise(
            &xt,
            &tensor(&we, &[hidden, cin, 1, 1]),
            &tensor(&be, &[hidden]),
            relu6,
            None,
        ),
        false => xt.clone(),
    };
    let d = depthwise_conv2d_fused(
        &e,
        &tensor(&wd, &[hidden, 1, k, k]),
        Some(&tensor(&bd, &[hidden])),
        relu6,
        &dp,
    )
    .unwrap();
    let (_, _, oh, ow) = d.dims4().unwrap();
    let res = rng.vec_f32(n * cout * oh * ow);
    let rt = residual.then(|| tensor(&res, &[n, cout, oh, ow]));
    let out_act = if residual {
        FusedActivation::Relu
    } else {
        FusedActivation::None
    };
    let want = pointwise(
        &d,
        &tensor(&wp, &[cout, hidden, 1, 1]),
        &tensor(&bp, &[cout]),
        out_act,
        rt.as_ref(),
    );
    // Fused.
    let geom = RowGeom {
        c: hidden,
        inp: (h, w),
        k: (k, k),
        p: dp,
    };
    let block = relu6_block(
        expand.then_some(pointwise_relu6(&we, &be)),
        geom,
        (&wd, &bd),
        (&wp, &bp, residual.then_some((0.0, f32::INFINITY))),
    );
    let (got, dims) =
        inverted_residual(&block, &x, [n, cin, h, w], residual.then_some(&res[..])).unwrap();
    assert_eq!(dims, [n, cout, oh, ow]);
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let case = (
        n, cin, hidden, cout, h, w, k, stride, pads, expand, residual,
    );
    assert_eq!(got.len(), want.len(), "{case:?}");
    let bad = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(bad, None, "{case:?}: first differing value");
}

#[test]
fn fused_block_gives_the_bits_of_the_unfused_kernels() {
    assert!(available(), "the tests run on x86-64 with AVX2 and FMA");
    let p1 = [1, 1, 1, 1];
    let cases: &[Case] = &[
        // MobileNetV2-like: expansion, stride 1 with residual and stride 2 without.
        (2, 8, 48, 8, 23, 19, 3, 1, p1, true, true),
        (2, 8, 48, 12, 23, 19, 3, 2, p1, true, false),
        // Many strips (wide rows and many channels), and a batch of one (bands of rows).
        (1, 16, 96, 24, 40, 40, 3, 1, p1, true, true),
        (1, 16, 96, 24, 41, 40, 3, 2, p1, true, false),
        (3, 16, 96, 16, 30, 50, 3, 2, [0, 0, 1, 1], true, false),
        // No expansion (MobileNetV2's first block), a 5x5 kernel, asymmetric pads.
        (2, 32, 0, 16, 33, 35, 3, 1, p1, false, false),
        (2, 12, 36, 12, 17, 18, 5, 1, [2, 2, 2, 2], true, true),
        (2, 12, 36, 10, 17, 18, 5, 2, [1, 2, 3, 0], true, false),
        // Tiny images and deep hidden layers (several depth blocks in the projection).
        (4, 40, 400, 24, 3, 3, 3, 1, p1, true, true),
        (2, 24, 144, 8, 1, 1, 3, 1, p1, true, false),
    ];
    for &case in cases {
        check(case);
    }
}

/// A block led by a full convolution (MobileNetV2's 3x3 stride-2 stem before its first
/// depthwise convolution): `(N, C_in, hidden, H, W, kernel, stride, pads)`.
#[test]
fn a_spatial_expansion_gives_the_bits_of_the_unfused_kernels() {
    type Case = (usize, usize, usize, usize, usize, usize, usize, [usize; 4]);
    let cases: &[Case] = &[
        (2, 3, 32, 64, 60, 3, 2, [1, 1, 1, 1]),
        (1, 3, 32, 47, 45, 3, 2, [1, 1, 1, 1]),
        (3, 5, 24, 30, 33, 3, 1, [0, 1, 2, 1]),
        (2, 4, 16, 21, 20, 5, 2, [2, 2, 2, 2]),
    ];
    for &(n, cin, hidden, h, w, k, stride, pads) in cases {
        let mut rng = Lcg(h as u64);
        let x = rng.vec_f32(n * cin * h * w);
        let (we, be) = (rng.vec_f32(hidden * cin * k * k), rng.vec_f32(hidden));
        let (wd, bd) = (rng.vec_f32(hidden * 9), rng.vec_f32(hidden));
        let cout = 8;
        let (wp, bp) = (rng.vec_f32(cout * hidden), rng.vec_f32(cout));
        let relu6 = FusedActivation::Clip(0.0, 6.0);
        let params = Conv2dParams {
            stride: [stride, stride],
            dilation: [1, 1],
            pads,
            groups: 1,
            activation: relu6,
        };
        let dp = DepthwiseParams {
            pads: [1; 4],
            ..DepthwiseParams::default()
        };
        let e = conv2d(
            &tensor(&x, &[n, cin, h, w]),
            &tensor(&we, &[hidden, cin, k, k]),
            Some(&tensor(&be, &[hidden])),
            &params,
        )
        .unwrap();
        let (_, _, eh, ew) = e.dims4().unwrap();
        let wdt = tensor(&wd, &[hidden, 1, 3, 3]);
        let d = depthwise_conv2d_fused(&e, &wdt, Some(&tensor(&bd, &[hidden])), relu6, &dp);
        let (wpt, bpt) = (tensor(&wp, &[cout, hidden, 1, 1]), tensor(&bp, &[cout]));
        let want = pointwise(&d.unwrap(), &wpt, &bpt, FusedActivation::None, None);
        let geom = RowGeom {
            c: hidden,
            inp: (eh, ew),
            k: (3, 3),
            p: dp,
        };
        let block = relu6_block(
            Some(spatial_relu6(&we, &be, k, params)),
            geom,
            (&wd, &bd),
            (&wp, &bp, None),
        );
        let (got, dims) = inverted_residual(&block, &x, [n, cin, h, w], None).unwrap();
        assert_eq!(dims, [n, cout, eh, ew]);
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bad = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            (got.len(), bad),
            (want.len(), None),
            "case {n} {cin} {h}x{w} k{k} s{stride}"
        );
    }
}

/// A batch smaller than the thread pool splits each image into bands of rows, which start
/// anywhere (not at multiples of the strip): with a dilated or asymmetrically padded
/// depthwise convolution such a band's strip reads more input rows than the strips from
/// row 0 do, and the rolling buffer must hold them.
#[test]
fn bands_of_rows_hold_every_input_row_they_read() {
    let cases: &[(Case, usize)] = &[
        ((1, 8, 960, 8, 17, 17, 3, 1, [4, 4, 4, 4], true, true), 4),
        ((1, 8, 1024, 8, 6, 32, 3, 1, [2, 1, 0, 1], true, false), 1),
        ((2, 8, 480, 16, 23, 20, 3, 2, [2, 2, 2, 2], true, false), 2),
    ];
    for threads in [2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for &(case, dil) in cases {
                check_dilated(case, dil);
            }
        });
    }
}

#[test]
fn mismatched_operands_are_errors_not_panics() {
    let (w, b) = (vec![0.0f32; 8 * 4], vec![0.0f32; 8]);
    let geom = RowGeom {
        c: 8,
        inp: (5, 5),
        k: (3, 3),
        p: DepthwiseParams {
            pads: [1; 4],
            ..DepthwiseParams::default()
        },
    };
    let taps = vec![0.0f32; 8 * 9];
    let block = Block {
        expand: Some(Expansion::pointwise(Pointwise {
            w: &w,
            bias: Some(&b),
            clamp: None,
        })),
        depthwise: Depthwise {
            geom,
            w: &taps,
            bias: None,
            clamp: None,
        },
        project: Pointwise {
            w: &w,
            bias: None,
            clamp: None,
        },
    };
    let x = vec![0.0f32; 2 * 4 * 25];
    assert!(inverted_residual(&block, &x, [2, 4, 5, 5], None).is_ok());
    // Three input channels do not divide the expansion's 32 weights.
    assert!(inverted_residual(&block, &x[..75], [1, 3, 5, 5], None).is_err());
    // An input shorter than its dimensions, a residual of the wrong size.
    assert!(inverted_residual(&block, &x[..99], [2, 4, 5, 5], None).is_err());
    assert!(inverted_residual(&block, &x, [2, 4, 5, 5], Some(&x[..7])).is_err());
    // A depthwise geometry for another image size.
    let x6 = vec![0.0f32; 2 * 4 * 36];
    assert!(inverted_residual(&block, &x6, [2, 4, 6, 6], None).is_err());
}

/// Fused against unfused on MobileNetV2's block shapes at batch 8 (run with `--ignored
/// --nocapture` in release).
#[test]
#[ignore]
fn inverted_residual_times() {
    use crate::exec::kernels::test_util::best_ms;
    crate::process_tuning::tune_process();
    // (C_in, hidden, C_out, side, stride, expand, residual)
    let shapes = [
        (32, 32, 16, 112, 1, false, false),
        (16, 96, 24, 112, 2, true, false),
        (24, 144, 24, 56, 1, true, true),
        (24, 144, 32, 56, 2, true, false),
        (32, 192, 32, 28, 1, true, true),
        (64, 384, 64, 14, 1, true, true),
        (160, 960, 160, 7, 1, true, true),
    ];
    let n = 8;
    let only: Option<usize> = std::env::var("PROBE_SHAPE")
        .ok()
        .map(|v| v.parse().unwrap());
    for (i, (cin, hidden, cout, side, stride, expand, residual)) in shapes.into_iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let mut rng = Lcg(3);
        let x = rng.vec_f32(n * cin * side * side);
        let (we, be) = (rng.vec_f32(hidden * cin), rng.vec_f32(hidden));
        let (wd, bd) = (rng.vec_f32(hidden * 9), rng.vec_f32(hidden));
        let (wp, bp) = (rng.vec_f32(cout * hidden), rng.vec_f32(cout));
        let dp = DepthwiseParams {
            stride: [stride, stride],
            dilation: [1, 1],
            pads: [1; 4],
        };
        let os = side.div_ceil(stride);
        let res = rng.vec_f32(n * cout * os * os);
        let relu6 = FusedActivation::Clip(0.0, 6.0);
        let xt = tensor(&x, &[n, cin, side, side]);
        let (wet, bet) = (tensor(&we, &[hidden, cin, 1, 1]), tensor(&be, &[hidden]));
        let (wdt, bdt) = (tensor(&wd, &[hidden, 1, 3, 3]), tensor(&bd, &[hidden]));
        let (wpt, bpt) = (tensor(&wp, &[cout, hidden, 1, 1]), tensor(&bp, &[cout]));
        let rt = residual.then(|| tensor(&res, &[n, cout, os, os]));
        let unfused = best_ms(if only.is_some() { 1 } else { 10 }, || {
            let e = match expand {
                true => pointwise(&xt, &wet, &bet, relu6, None),
                false => xt.clone(),
            };
            let d = depthwise_conv2d_fused(&e, &wdt, Some(&bdt), relu6, &dp).unwrap();
            drop(pointwise(
                &d,
                &wpt,
                &bpt,
                FusedActivation::None,
                rt.as_ref(),
            ))
        });
        let geom = RowGeom {
            c: hidden,
            inp: (side, side),
            k: (3, 3),
            p: dp,
        };
        let block = relu6_block(
            expand.then_some(pointwise_relu6(&we, &be)),
            geom,
            (&wd, &bd),
            (&wp, &bp, None),
        );
        let res = residual.then_some(&res[..]);
        let fused = best_ms(if only.is_some() { 100 } else { 10 }, || {
            drop(inverted_residual(&block, &x, [n, cin, side, side], res).unwrap())
        });
        println!("{cin:>4}->{hidden:<4}->{cout:<4} {side:>3}x{side:<3} s{stride}: unfused {unfused:6.2} ms, fused {fused:6.2} ms");
    }
}

/// Fused against unfused on MobileNetV2's stem and first block at batch 8 (run with
/// `--ignored --nocapture` in release).
#[test]
#[ignore]
fn stem_block_times() {
    use crate::exec::kernels::test_util::best_ms;
    crate::process_tuning::tune_process();
    let (n, hidden, cout, side) = (8, 32, 16, 224);
    let mut rng = Lcg(5);
    let x = rng.vec_f32(n * 3 * side * side);
    let (we, be) = (rng.vec_f32(hidden * 27), rng.vec_f32(hidden));
    let (wd, bd) = (rng.vec_f32(hidden * 9), rng.vec_f32(hidden));
    let (wp, bp) = (rng.vec_f32(cout * hidden), rng.vec_f32(cout));
    let relu6 = FusedActivation::Clip(0.0, 6.0);
    let params = Conv2dParams {
        stride: [2, 2],
        pads: [1; 4],
        activation: relu6,
        ..Conv2dParams::default()
    };
    let dp = DepthwiseParams {
        pads: [1; 4],
        ..DepthwiseParams::default()
    };
    let xt = tensor(&x, &[n, 3, side, side]);
    let (wet, bet) = (tensor(&we, &[hidden, 3, 3, 3]), tensor(&be, &[hidden]));
    let (wdt, bdt) = (tensor(&wd, &[hidden, 1, 3, 3]), tensor(&bd, &[hidden]));
    let (wpt, bpt) = (tensor(&wp, &[cout, hidden, 1, 1]), tensor(&bp, &[cout]));
    for _ in 0..3 {
        let unfused = best_ms(10, || {
            let e = conv2d(&xt, &wet, Some(&bet), &params).unwrap();
            let d = depthwise_conv2d_fused(&e, &wdt, Some(&bdt), relu6, &dp).unwrap();
            drop(pointwise(&d, &wpt, &bpt, FusedActivation::None, None))
        });
        let geom = RowGeom {
            c: hidden,
            inp: (112, 112),
            k: (3, 3),
            p: dp,
        };
        let block = relu6_block(
            Some(spatial_relu6(&we, &be, 3, params)),
            geom,
            (&wd, &bd),
            (&wp, &bp, None),
        );
        let dims = [n, 3, side, side];
        let fused = best_ms(10, || {
            drop(inverted_residual(&block, &x, dims, None).unwrap())
        });
        println!("stem + first block: unfused {unfused:6.2} ms, fused {fused:6.2} ms");
    }
}
