//! Tests of the Winograd F(2x2, 3x3) convolution against a direct f64 reference: odd and
//! even output sizes, asymmetric pads, blocks that split tile rows, the epilogue (bias,
//! residual, clamp), the input and weight gradients, and which geometries take the path.

use super::conv2d::{Conv2dParams, FusedActivation, Geom};
use super::test_util::{best_ms, Lcg};
use super::winograd::{
    applies, applies_to_grad_x, convolve, split_columns, Finish, Shape, TransformedWeights,
};
use super::winograd_grad_w::grad_w;
use std::mem::MaybeUninit;

fn geom(
    x: [usize; 4],
    cout: usize,
    (stride, pads, groups): ([usize; 2], [usize; 4], usize),
) -> Geom {
    let params = Conv2dParams {
        stride,
        dilation: [1, 1],
        pads,
        groups,
        activation: FusedActivation::None,
    };
    Geom::new(&params, &x, &[cout, x[1] / groups, 3, 3]).expect("a valid geometry")
}

fn random(seed: u64, n: usize) -> Vec<f32> {
    Lcg(seed).vec_f32(n)
}

/// Calls `visit(y_index, x_index, w_index)` for every product of the direct convolution
/// `y[n, o, oy, ox] += x[n, i, oy + a - pt, ox + b - pl] w[o, i, a, b]` (taps that fall in
/// the padding skipped), each output's products in a row.
fn for_each_product(g: &Geom, mut visit: impl FnMut(usize, usize, usize)) {
    let ((h, wd), (oh, ow), (cin, cout)) = (g.inp, g.out, (g.cin_g, g.cout_g));
    for n in 0..g.n {
        for o in 0..cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * cout + o) * oh + oy) * ow + ox;
                    for i in 0..cin {
                        for a in 0..3 {
                            for b in 0..3 {
                                let iy = (oy + a).checked_sub(g.pads[0]).filter(|&v| v < h);
                                let ix = (ox + b).checked_sub(g.pads[1]).filter(|&v| v < wd);
                                if let (Some(iy), Some(ix)) = (iy, ix) {
                                    let xi = ((n * cin + i) * h + iy) * wd + ix;
                                    visit(yi, xi, ((o * cin + i) * 3 + a) * 3 + b);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The convolution's output, in f64.
fn reference(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f64> {
    let mut y = vec![0f64; g.n * g.cout_g * g.out.0 * g.out.1];
    for_each_product(g, |yi, xi, wi| y[yi] += x[xi] as f64 * w[wi] as f64);
    y
}

/// Largest `|a - b|` relative to `max(1, max |b|)`.
fn rel_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()))
        / scale
}

fn run(s: &Shape, x: &[f32], w: &TransformedWeights, len: usize, finish: Finish) -> Vec<f32> {
    let mut y = vec![MaybeUninit::new(f32::NAN); len];
    convolve(s, (x, w), &mut y, finish);
    // SAFETY: initialized above (and overwritten by `convolve`).
    y.into_iter().map(|v| unsafe { v.assume_init() }).collect()
}

const SHAPES: [([usize; 4], usize, [usize; 4]); 6] = [
    ([1, 16, 11, 13], 16, [1, 1, 1, 1]), // odd output: a partial tile at each edge
    ([3, 16, 12, 13], 20, [0, 1, 2, 0]), // asymmetric pads
    ([2, 24, 30, 30], 16, [1, 1, 1, 1]), // 450 tiles: several blocks
    ([5, 16, 14, 14], 17, [2, 2, 2, 2]), // pads of 2
    ([8, 32, 10, 11], 16, [1, 1, 1, 1]), // several images in one block
    ([2, 16, 2, 3], 16, [3, 1, 2, 3]),   // a tiny image, odd pads of 3 (forward only)
];

/// The shapes whose input gradient is itself such a convolution (pads of at most 2).
fn gradient_shapes() -> impl Iterator<Item = (usize, ([usize; 4], usize, [usize; 4]))> {
    SHAPES
        .into_iter()
        .enumerate()
        .filter(|(_, (_, _, pads))| pads.iter().all(|&p| p <= 2))
}

#[test]
fn forward_matches_the_direct_convolution() {
    for (k, (x_dims, cout, pads)) in SHAPES.into_iter().enumerate() {
        let g = geom(x_dims, cout, ([1, 1], pads, 1));
        let x = random(k as u64, x_dims.iter().product());
        let w = random(50 + k as u64, cout * x_dims[1] * 9);
        let tw = TransformedWeights::forward(&w, (cout, x_dims[1]));
        let want = reference(&g, &x, &w);
        let got = run(&Shape::forward(&g), &x, &tw, want.len(), Finish::default());
        let d = rel_diff(&got, &want);
        assert!(d <= 2e-6, "case {k}: relative difference {d}");
        // On one thread (blocks in turn, or one block's products without threads): the
        // same bits.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let alone =
            one.install(|| run(&Shape::forward(&g), &x, &tw, want.len(), Finish::default()));
        assert!(
            got.iter()
                .zip(&alone)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "case {k}"
        );
    }
}

#[test]
fn epilogue_adds_bias_and_residual_then_clamps() {
    let (x_dims, cout, pads) = SHAPES[2];
    let g = geom(x_dims, cout, ([1, 1], pads, 1));
    let x = random(7, x_dims.iter().product());
    let w = random(8, cout * x_dims[1] * 9);
    let bias = random(9, cout);
    let reference = reference(&g, &x, &w);
    let residual = random(10, reference.len());
    let tw = TransformedWeights::forward(&w, (cout, x_dims[1]));
    let finish = Finish {
        bias: Some(&bias),
        residual: Some(&residual),
        clamp: Some((0.0, 6.0)),
    };
    let got = run(&Shape::forward(&g), &x, &tw, reference.len(), finish);
    let plane = g.out.0 * g.out.1;
    let want: Vec<f64> = reference
        .iter()
        .enumerate()
        .map(|(i, &v)| (v + bias[(i / plane) % cout] as f64 + residual[i] as f64).clamp(0.0, 6.0))
        .collect();
    let d = rel_diff(&got, &want);
    assert!(d <= 2e-6, "relative difference {d}");
    assert!(got.iter().all(|v| (0.0..=6.0).contains(v)));
    assert!(
        got.contains(&0.0) && got.iter().any(|&v| v > 0.5),
        "the clamp had work to do"
    );
}

/// The input gradient of the convolution for output gradient `gy`, in f64.
fn reference_grad_x(g: &Geom, gy: &[f32], w: &[f32]) -> Vec<f64> {
    let mut dx = vec![0f64; g.n * g.cin_g * g.inp.0 * g.inp.1];
    for_each_product(g, |yi, xi, wi| dx[xi] += gy[yi] as f64 * w[wi] as f64);
    dx
}

#[test]
fn input_gradient_matches_the_direct_one() {
    for (k, (x_dims, cout, pads)) in gradient_shapes() {
        let g = geom(x_dims, cout, ([1, 1], pads, 1));
        let gy = random(20 + k as u64, g.n * cout * g.out.0 * g.out.1);
        let w = random(70 + k as u64, cout * x_dims[1] * 9);
        let tw = TransformedWeights::grad_x(&w, (cout, x_dims[1]));
        let want = reference_grad_x(&g, &gy, &w);
        let got = run(&Shape::grad_x(&g), &gy, &tw, want.len(), Finish::default());
        let d = rel_diff(&got, &want);
        assert!(d <= 2e-6, "case {k}: relative difference {d}");
    }
}

/// The weight gradient of the convolution of `x` for output gradient `gy`, in f64.
fn reference_grad_w(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f64> {
    let mut dw = vec![0f64; g.cout_g * g.cin_g * 9];
    for_each_product(g, |yi, xi, wi| dw[wi] += gy[yi] as f64 * x[xi] as f64);
    dw
}

#[test]
fn weight_gradient_matches_the_direct_one() {
    for (k, (x_dims, cout, pads)) in gradient_shapes() {
        let g = geom(x_dims, cout, ([1, 1], pads, 1));
        let x = random(30 + k as u64, x_dims.iter().product());
        let gy = random(40 + k as u64, g.n * cout * g.out.0 * g.out.1);
        let want = reference_grad_w(&g, &x, &gy);
        let mut got = vec![f32::NAN; want.len()];
        grad_w(&Shape::forward(&g), &x, &gy, &mut got);
        let d = rel_diff(&got, &want);
        assert!(d <= 2e-6, "case {k}: relative difference {d}");
        // The same bits on a second run (fixed blocks per thread, summed in order).
        let mut again = vec![0f32; want.len()];
        grad_w(&Shape::forward(&g), &x, &gy, &mut again);
        assert!(
            got.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "case {k}"
        );
    }
}

#[test]
fn split_columns_pairs_even_and_odd_columns_with_zeros_outside_the_row() {
    for len in 0..9 {
        let row: Vec<f32> = (1..=len).map(|v| v as f32).collect();
        for pad in 0..4 {
            for n in 0..8 {
                // Stale values in the outputs: every element must be written.
                let (mut e, mut o) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                split_columns(&row, pad, &mut e, &mut o);
                let at = |i: usize| i.checked_sub(pad).and_then(|j| row.get(j)).copied();
                for k in 0..n {
                    assert_eq!(e[k], at(2 * k).unwrap_or(0.0), "len {len} pad {pad} e[{k}]");
                    assert_eq!(
                        o[k],
                        at(2 * k + 1).unwrap_or(0.0),
                        "len {len} pad {pad} o[{k}]"
                    );
                }
            }
        }
    }
}

#[test]
fn only_3x3_stride_1_single_group_convolutions_with_enough_work_apply() {
    let (pads, one) = ([1; 4], [1, 1]);
    assert!(applies(&geom([2, 16, 28, 28], 16, (one, pads, 1))));
    let cases = [
        ([2, 16, 56, 56], 16, [2, 2], 1, "stride 2"),
        ([2, 32, 28, 28], 32, one, 2, "groups"),
        ([2, 8, 28, 28], 16, one, 1, "8 input channels"),
        ([2, 16, 28, 28], 4, one, 1, "4 output channels"),
        (
            [8, 64, 7, 7],
            64,
            one,
            1,
            "7x7 planes at batch 8: too little saved",
        ),
        (
            [1, 256, 14, 14],
            256,
            one,
            1,
            "one 14x14 image: too little saved",
        ),
    ];
    for (x, cout, stride, groups, why) in cases {
        assert!(!applies(&geom(x, cout, (stride, pads, groups))), "{why}");
    }
    assert!(
        applies(&geom([32, 64, 7, 7], 64, (one, pads, 1))),
        "7x7 planes at batch 32"
    );
    assert!(
        applies(&geom([8, 64, 14, 14], 64, (one, pads, 1))),
        "14x14 planes at batch 8"
    );
    let wide = geom([2, 16, 28, 28], 16, (one, [3, 3, 3, 3], 1));
    assert!(
        applies(&wide) && !applies_to_grad_x(&wide),
        "pads of 3: forward only"
    );
}

/// Times against im2col on ResNet-50's 3x3 shapes at batch 8, alone (it sets
/// `AMCT_WINOGRAD`, which the other tests read):
/// `cargo test --release --lib winograd_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn winograd_speed() {
    use super::conv2d::conv2d;
    use candle_core::{Device, Tensor};
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 14)] {
        let g = geom([8, c, hw, hw], c, ([1, 1], [1; 4], 1));
        let x = random(1, 8 * c * hw * hw);
        let w = random(2, c * c * 9);
        let best = |f: &mut dyn FnMut()| best_ms(5, f);
        let wt = best(&mut || drop(TransformedWeights::forward(&w, (c, c))));
        let tw = TransformedWeights::forward(&w, (c, c));
        let mut y = vec![MaybeUninit::new(0f32); x.len()];
        let conv =
            best(&mut || convolve(&Shape::forward(&g), (&x, &tw), &mut y, Finish::default()));
        let xt = Tensor::from_vec(x.clone(), (8, c, hw, hw), &Device::Cpu).unwrap();
        let wt_ = Tensor::from_vec(w.clone(), (c, c, 3, 3), &Device::Cpu).unwrap();
        let params = Conv2dParams {
            pads: [1; 4],
            ..Default::default()
        };
        std::env::set_var("AMCT_WINOGRAD", "0");
        let im2col = best(&mut || drop(conv2d(&xt, &wt_, None, &params).unwrap()));
        std::env::remove_var("AMCT_WINOGRAD");
        let whole = best(&mut || drop(conv2d(&xt, &wt_, None, &params).unwrap()));
        println!("C={c} {hw}x{hw}: weights {wt:.2} ms, convolve {conv:.2} ms, whole {whole:.2} ms, im2col {im2col:.2} ms");
    }
}
