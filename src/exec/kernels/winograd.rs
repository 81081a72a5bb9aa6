//! Winograd F(2x2, 3x3) for f32 3x3 convolutions of stride 1 (forward, and the input
//! gradient, itself such a convolution): each 4x4 input tile becomes 16 transformed values,
//! the 16 transformed weight matrices multiply them on `sgemm` (16 products of depth `C_in`
//! instead of one of depth `9 C_in`: 2.25x fewer multiplications), and each 2x2 output tile
//! is transformed back with the bias, residual and activation. The tiles are taken in
//! blocks of whole tile rows, small enough for the transformed values to stay in cache.
//! Each tile row of `tw` tiles takes `tw + 1` columns of the block (the last one unused),
//! so that every transform runs along the whole block in one vectorized loop, whatever the
//! row's width.
//!
//! The transforms add and subtract inputs, so an infinite input gives NaN where the direct
//! convolution gives an infinity (both are already an overflow).
//!
//! Transforms (Lavin and Gray, 2015): `V = Bt d B`, `U = G g Gt`, `Y = At (U . V) A` with
//! `Bt = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]`,
//! `At = [1 1 1 0; 0 1 -1 -1]`.

use super::conv2d::Geom;
use super::conv2d_gemm::MatRef;
use super::sgemm::{finish_value, sgemm, with_buffer, Epilogue, Lhs, PackedLhs};
use super::sgemm_pack::Rhs;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Transformed values per tile (a 4x4 input tile).
pub(super) const POINTS: usize = 16;
/// About this many columns per block: enough for `sgemm`'s panels, few enough that the
/// block's transformed inputs and products (16 x channels x columns each) stay in L2 up to
/// 64 channels and in L3 beyond.
const COLUMNS_PER_BLOCK: usize = 128;
/// Fewer channels than this on either side run on im2col: the products would be too thin to
/// pay for the transforms.
const MIN_CHANNELS: usize = 16;

/// Multiply-adds a call must save per kernel (input-output channel pair) for the Winograd
/// path to pay: transforming and packing one kernel's weights costs about 23 ns of one core
/// here (512x512 kernels: 6 ms), some 700 multiply-adds of the two-core product; about three
/// times that as a margin. So a 7x7 plane at batch 8 (its 2x2 tiles compute 64 outputs for
/// 49) stays on im2col, and at batch 32 does not; ResNet-18's 4x4 planes at batch 32 pass
/// (training steps 0-9% faster than with 2700, three runs).
const MIN_SAVED_PER_KERNEL: usize = 2000;

/// Whether a convolution of this geometry runs here: 3x3, stride 1, no dilation, one group,
/// at least `MIN_CHANNELS` channels in and out, enough outputs to save
/// `MIN_SAVED_PER_KERNEL`, on a CPU that runs `sgemm` (`AMCT_WINOGRAD=0` turns it off).
pub(super) fn applies(g: &Geom) -> bool {
    let (th, tw) = (g.out.0.div_ceil(2), g.out.1.div_ceil(2));
    let direct = 9 * g.n * g.out.0 * g.out.1;
    let winograd = POINTS * g.n * th * tw;
    g.k == (3, 3)
        && direct >= winograd + MIN_SAVED_PER_KERNEL
        && g.s == (1, 1)
        && g.d == (1, 1)
        && g.groups == 1
        && g.cin_g >= MIN_CHANNELS
        && g.cout_g >= MIN_CHANNELS
        && super::sgemm::enabled()
        && std::env::var("AMCT_WINOGRAD").as_deref() != Ok("0")
}

/// Whether the input gradient of a convolution of this geometry runs here: `applies`, and
/// pads of at most 2 (the gradient is a convolution with pads `2 - pad`).
pub(super) fn applies_to_grad_x(g: &Geom) -> bool {
    applies(g) && g.pads.iter().all(|&p| p <= 2)
}

/// The shape of one Winograd convolution: `x[n, cin, h, w] -> y[n, cout, oh, ow]` with the
/// input's top and left padding (the bottom and right follow from the output size).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub inp: (usize, usize),
    pub out: (usize, usize),
    pub pad: (usize, usize),
}

impl Shape {
    /// The forward of `g` (which `applies`).
    pub(super) fn forward(g: &Geom) -> Self {
        Shape {
            n: g.n,
            cin: g.cin_g,
            cout: g.cout_g,
            inp: g.inp,
            out: g.out,
            pad: (g.pads[0], g.pads[1]),
        }
    }

    /// The input gradient of `g` (which `applies_to_grad_x`): the output gradient convolved
    /// with the flipped, transposed weights, padded by `2 - pad`.
    pub(super) fn grad_x(g: &Geom) -> Self {
        Shape {
            n: g.n,
            cin: g.cout_g,
            cout: g.cin_g,
            inp: g.out,
            out: g.inp,
            pad: (2 - g.pads[0], 2 - g.pads[1]),
        }
    }

    /// Tiles per output row and column.
    pub(super) fn tiles(&self) -> (usize, usize) {
        (self.out.0.div_ceil(2), self.out.1.div_ceil(2))
    }
}

/// The 16 transformed weight matrices `U[t] = (G g Gt)[t]`, each `[cout, cin]`, packed for
/// `sgemm`.
pub(super) struct TransformedWeights {
    packed: Vec<PackedLhs>,
}

impl TransformedWeights {
    /// From the forward weights `w[cout, cin, 3, 3]`.
    pub(super) fn forward(w: &[f32], (cout, cin): (usize, usize)) -> Self {
        Self::build((cout, cin), |o, i| {
            let k = &w[(o * cin + i) * 9..][..9];
            std::array::from_fn(|e| k[e])
        })
    }

    /// For the input gradient of weights `w[cout, cin, 3, 3]`: the kernel `w'[cin, cout]`,
    /// `w'[i][o][a][b] = w[o][i][2 - a][2 - b]`.
    pub(super) fn grad_x(w: &[f32], (cout, cin): (usize, usize)) -> Self {
        Self::build((cin, cout), |i, o| {
            let k = &w[(o * cin + i) * 9..][..9];
            std::array::from_fn(|e| k[8 - e])
        })
    }

    /// `kernel(o, i)` is the 3x3 kernel (row-major) from input channel `i` to output `o`.
    fn build(
        (cout, cin): (usize, usize),
        kernel: impl Fn(usize, usize) -> [f32; 9] + Sync,
    ) -> Self {
        // `u[o][e][i]`: each task transforms whole output channels, writing every element
        // (so no zero fill first).
        let len = POINTS * cout * cin;
        let mut u = Vec::with_capacity(len);
        u.spare_capacity_mut()[..len]
            .par_chunks_mut(POINTS * cin)
            .enumerate()
            .for_each(|(o, rows)| {
                for i in 0..cin {
                    for (e, v) in transform_kernel(&kernel(o, i)).into_iter().enumerate() {
                        rows[e * cin + i] = MaybeUninit::new(v);
                    }
                }
            });
        // SAFETY: the chunks cover `..len`, and each writes all of its `16 * cin` elements.
        unsafe { u.set_len(len) };
        // Matrix `e` is `cout x cin` with row stride `16 cin`.
        let packed = (0..POINTS)
            .into_par_iter()
            .map(|e| {
                let view = MatRef {
                    data: &u[e * cin..],
                    rows: cout,
                    cols: cin,
                    rs: POINTS * cin,
                    cs: 1,
                };
                PackedLhs::new(view)
            })
            .collect();
        Self { packed }
    }
}

/// `G g Gt` of one 3x3 kernel, row-major 4x4.
fn transform_kernel(g: &[f32; 9]) -> [f32; 16] {
    // `G g`: 4x3.
    let mut gg = [[0f32; 3]; 4];
    for c in 0..3 {
        let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
        gg[0][c] = a;
        gg[1][c] = 0.5 * (a + b + d);
        gg[2][c] = 0.5 * (a - b + d);
        gg[3][c] = d;
    }
    let mut out = [0f32; 16];
    for (r, row) in gg.iter().enumerate() {
        let (a, b, d) = (row[0], row[1], row[2]);
        out[r * 4] = a;
        out[r * 4 + 1] = 0.5 * (a + b + d);
        out[r * 4 + 2] = 0.5 * (a - b + d);
        out[r * 4 + 3] = d;
    }
    out
}

thread_local! {
    /// A block's transformed inputs `[16][cin][nb]`.
    pub(super) static INPUTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A block's products `[16][cout][nb]`.
    static PRODUCTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A block's working rows (`[16][nb]` for the inputs, `[4][nb]` for the outputs).
    pub(super) static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What is applied to each output: `clamp(v + bias[channel] + residual[i])`.
#[derive(Clone, Copy, Default)]
pub(super) struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// `y = finish(conv(x, w))` for the whole batch, `y` written in full.
pub(super) fn convolve(
    s: &Shape,
    (x, weights): (&[f32], &TransformedWeights),
    y: &mut [MaybeUninit<f32>],
    finish: Finish,
) {
    let (th, tw) = s.tiles();
    let tile_rows = s.n * th;
    let y_len = s.n * s.cout * s.out.0 * s.out.1;
    assert!(x.len() >= s.n * s.cin * s.inp.0 * s.inp.1 && y.len() >= y_len);
    assert!(finish.residual.is_none_or(|r| r.len() >= y_len));
    assert!(finish.bias.is_none_or(|b| b.len() >= s.cout));
    assert_eq!(weights.packed.len(), POINTS);
    if tile_rows == 0 || tw == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let mut blocks = tile_rows.div_ceil((COLUMNS_PER_BLOCK / (tw + 1)).max(1));
    if blocks >= threads {
        blocks = blocks.next_multiple_of(threads).min(tile_rows);
    }
    let per_block = tile_rows.div_ceil(blocks);
    let starts: Vec<usize> = (0..tile_rows).step_by(per_block).collect();
    let out = OutPtr(y.as_mut_ptr().cast::<f32>());
    let run = |r0: usize, inner_threads: bool| {
        let rows = r0..(r0 + per_block).min(tile_rows);
        // SAFETY: blocks cover disjoint tile rows, hence disjoint output pixels of `y`.
        unsafe { block(s, (x, weights), (out, finish), rows, inner_threads) }
    };
    if starts.len() >= threads {
        starts.into_par_iter().for_each(|r0| run(r0, false));
    } else {
        starts.into_iter().for_each(|r0| run(r0, true));
    }
}

/// The output, shared by the blocks, each writing its own tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: blocks write disjoint elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The tile rows `rows` (counted over images, then tile rows within an image) of one block;
/// with `threads`, its 16 products run on separate threads.
///
/// # Safety
/// `y` holds the whole output and no other thread writes these tiles' pixels.
unsafe fn block(
    s: &Shape,
    (x, weights): (&[f32], &TransformedWeights),
    (y, finish): (OutPtr, Finish),
    rows: std::ops::Range<usize>,
    threads: bool,
) {
    let (_, tw) = s.tiles();
    let nb = rows.len() * (tw + 1);
    with_buffer(&INPUTS, POINTS * s.cin * nb, |v| {
        with_buffer(&ROWS, POINTS * nb, |work| {
            // SAFETY: `convolve` only runs where `sgemm` does, so AVX2 and FMA are present.
            unsafe { transform_inputs(s, x, rows.clone(), v, work) };
        });
        with_buffer(&PRODUCTS, POINTS * s.cout * nb, |m| {
            let product = |(e, m_e): (usize, &mut [f32])| {
                let b = MatRef::rows(&v[e * s.cin * nb..][..s.cin * nb], s.cin, nb);
                let a = Lhs::packed(&weights.packed[e]);
                // SAFETY: `m_e` is a `cout x nb` matrix, row stride `nb`, a unique borrow;
                // `a` is `cout x cin`, `b` is `cin x nb`.
                unsafe {
                    sgemm(
                        m_e.as_mut_ptr(),
                        nb,
                        a,
                        Rhs::View(b),
                        false,
                        false,
                        Epilogue::default(),
                    )
                };
            };
            let m_all = m[..POINTS * s.cout * nb]
                .chunks_mut(s.cout * nb)
                .enumerate();
            if threads {
                // One product per task: each reads its transformed weights once (threads
                // inside each product would both stream all of them).
                m_all.collect::<Vec<_>>().into_par_iter().for_each(product);
            } else {
                m_all.for_each(product);
            }
            with_buffer(&ROWS, 4 * nb, |work| {
                // SAFETY: as above, and `block`'s contract.
                unsafe { transform_outputs(s, m, rows, (y, finish), work) }
            });
        });
    });
}

/// The first `K` rows of `v` (row stride `stride`), each cut to `len` values.
pub(super) fn split_rows<const K: usize>(
    v: &mut [f32],
    stride: usize,
    len: usize,
) -> [&mut [f32]; K] {
    let mut rest = &mut v[..K * stride];
    std::array::from_fn(|_| {
        let (row, tail) = std::mem::take(&mut rest).split_at_mut(stride);
        rest = tail;
        &mut row[..len]
    })
}

/// Writes the block's transformed inputs `v[16][cin][nb]` (`work`: `[16][nb]`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn transform_inputs(
    s: &Shape,
    x: &[f32],
    rows: std::ops::Range<usize>,
    v: &mut [f32],
    work: &mut [f32],
) {
    let (th, tw) = s.tiles();
    let (h, w) = s.inp;
    let (cols, nb) = (tw + 1, rows.len() * (tw + 1));
    let (raw, bt) = work[..POINTS * nb].split_at_mut(8 * nb);
    for c in 0..s.cin {
        // Rows 0-3 of `raw`: the even columns (`2k - pad`) of each tile row's 4 input rows,
        // rows 4-7 their odd columns; zero outside the image.
        let raw_rows: [&mut [f32]; 8] = split_rows(raw, nb, nb);
        let [e0, e1, e2, e3, o0, o1, o2, o3] = raw_rows;
        let (even, odd) = ([e0, e1, e2, e3], [o0, o1, o2, o3]);
        for (at, r) in rows.clone().enumerate() {
            let (b, ty) = (r / th, r % th);
            let plane = &x[(b * s.cin + c) * h * w..][..h * w];
            for i in 0..4 {
                let e = &mut even[i][at * cols..][..cols];
                let o = &mut odd[i][at * cols..][..cols];
                match (2 * ty + i).checked_sub(s.pad.0).filter(|&iy| iy < h) {
                    Some(iy) => split_columns(&plane[iy * w..][..w], s.pad.1, e, o),
                    None => {
                        e.fill(0.0);
                        o.fill(0.0);
                    }
                }
            }
        }
        // `Bt d` down the columns, for the even and the odd columns alike.
        let bt_rows: [&mut [f32]; 8] = split_rows(bt, nb, nb);
        let [be0, be1, be2, be3, bo0, bo1, bo2, bo3] = bt_rows;
        for (d, out) in [(&even, [be0, be1, be2, be3]), (&odd, [bo0, bo1, bo2, bo3])] {
            let [r0, r1, r2, r3] = out;
            let (d0, d1, d2, d3) = (&*d[0], &*d[1], &*d[2], &*d[3]);
            for q in 0..nb {
                r0[q] = d0[q] - d2[q];
                r1[q] = d1[q] + d2[q];
                r2[q] = d2[q] - d1[q];
                r3[q] = d1[q] - d3[q];
            }
        }
        // `(Bt d) B` along the rows: tile `q` reads even and odd columns `q` and `q + 1`.
        let n = nb - 1;
        for i in 0..4 {
            let e = &bt[i * nb..][..nb];
            let o = &bt[(4 + i) * nb..][..nb];
            let (e0, e1, o0, o1) = (&e[..n], &e[1..], &o[..n], &o[1..]);
            let at = |k: usize| ((i * 4 + k) * s.cin + c) * nb;
            let [v0, v1, v2, v3] = four_rows(v, [at(0), at(1), at(2), at(3)], nb);
            for q in 0..n {
                v0[q] = e0[q] - e1[q];
                v1[q] = o0[q] + e1[q];
                v2[q] = e1[q] - o0[q];
                v3[q] = o0[q] - o1[q];
            }
            // Zeros in each tile row's unused column (products there are never read, but a
            // weight gradient sums over every column).
            for v in [v0, v1, v2, v3] {
                v.iter_mut().skip(tw).step_by(cols).for_each(|u| *u = 0.0);
            }
        }
    }
}

/// `e[k] = row[2k - pad]`, `o[k] = row[2k + 1 - pad]`, zero outside the row; each element
/// written once (these rows are short: a zero fill first would be a `memset` call each).
#[inline(always)]
pub(super) fn split_columns(row: &[f32], pad: usize, e: &mut [f32], o: &mut [f32]) {
    debug_assert_eq!(e.len(), o.len());
    let n = e.len().min(o.len());
    let at = |i: usize| -> f32 {
        match i.checked_sub(pad) {
            Some(j) if j < row.len() => row[j],
            _ => 0.0,
        }
    };
    // Interior `lo..hi`: both columns of the pair inside the row.
    let lo = pad.div_ceil(2).min(n);
    let hi = match (row.len() + pad).checked_sub(2) {
        Some(last) => (last / 2 + 1).clamp(lo, n),
        None => lo,
    };
    for k in (0..lo).chain(hi..n) {
        e[k] = at(2 * k);
        o[k] = at(2 * k + 1);
    }
    if hi > lo {
        let first = 2 * lo - pad;
        let pairs = row[first..first + 2 * (hi - lo)].chunks_exact(2);
        for ((ev, ov), pair) in e[lo..hi].iter_mut().zip(&mut o[lo..hi]).zip(pairs) {
            *ev = pair[0];
            *ov = pair[1];
        }
    }
}

/// Four disjoint runs of `len` values of `v` starting at `starts` (increasing).
pub(super) fn four_rows(v: &mut [f32], starts: [usize; 4], len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = v[starts[0]..].split_at_mut(starts[1] - starts[0]);
    let (b, rest) = rest.split_at_mut(starts[2] - starts[1]);
    let (c, rest) = rest.split_at_mut(starts[3] - starts[2]);
    [
        &mut a[..len],
        &mut b[..len],
        &mut c[..len],
        &mut rest[..len],
    ]
}

/// Transforms the block's products `m[16][cout][nb]` back into 2x2 output tiles, finished
/// with the bias, residual and clamp (`work`: `[4][nb]`).
///
/// # Safety
/// As `block`'s; AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_outputs(
    s: &Shape,
    m: &[f32],
    rows: std::ops::Range<usize>,
    (y, finish): (OutPtr, Finish),
    work: &mut [f32],
) {
    let (th, tw) = s.tiles();
    let (oh, ow) = s.out;
    let (cols, nb) = (tw + 1, rows.len() * (tw + 1));
    // One output row's values, interleaved from two transformed rows.
    let mut line = vec![0f32; 2 * tw];
    for c in 0..s.cout {
        let p = |e: usize| &m[(e * s.cout + c) * nb..][..nb];
        let [y0, y1, y2, y3]: [&mut [f32]; 4] = split_rows(work, nb, nb);
        let (p00, p01, p02, p03) = (p(0), p(1), p(2), p(3));
        let (p10, p11, p12, p13) = (p(4), p(5), p(6), p(7));
        let (p20, p21, p22, p23) = (p(8), p(9), p(10), p(11));
        let (p30, p31, p32, p33) = (p(12), p(13), p(14), p(15));
        for q in 0..nb {
            // `At p`: row 0 sums rows 0-2 of the tile, row 1 is rows 1 - 2 - 3.
            let s0 = [
                p00[q] + p10[q] + p20[q],
                p01[q] + p11[q] + p21[q],
                p02[q] + p12[q] + p22[q],
                p03[q] + p13[q] + p23[q],
            ];
            let s1 = [
                p10[q] - p20[q] - p30[q],
                p11[q] - p21[q] - p31[q],
                p12[q] - p22[q] - p32[q],
                p13[q] - p23[q] - p33[q],
            ];
            y0[q] = s0[0] + s0[1] + s0[2];
            y1[q] = s0[1] - s0[2] - s0[3];
            y2[q] = s1[0] + s1[1] + s1[2];
            y3[q] = s1[1] - s1[2] - s1[3];
        }
        let add = finish.bias.map(|b| b[c]);
        for (at, r) in rows.clone().enumerate() {
            let (b, ty) = (r / th, r % th);
            let plane = (b * s.cout + c) * oh * ow;
            for (dy, (left, right)) in [(0, (&*y0, &*y1)), (1, (&*y2, &*y3))] {
                let oy = 2 * ty + dy;
                if oy >= oh {
                    continue;
                }
                let (left, right) = (&left[at * cols..][..tw], &right[at * cols..][..tw]);
                for ((pair, &l), &r) in line.chunks_exact_mut(2).zip(left).zip(right) {
                    pair[0] = l;
                    pair[1] = r;
                }
                let at = plane + oy * ow;
                let dst =
                    std::slice::from_raw_parts_mut(y.0.add(at).cast::<MaybeUninit<f32>>(), ow);
                let res = finish.residual.map(|r| &r[at..at + ow]);
                finish_run(dst, &line[..ow], add, res, finish.clamp);
            }
        }
    }
}

/// `dst[i] = finish_value(src[i], bias, residual[i], clamp)`, one loop per case.
#[inline(always)]
fn finish_run(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    bias: Option<f32>,
    residual: Option<&[f32]>,
    clamp: Option<(f32, f32)>,
) {
    match residual {
        Some(r) => {
            for ((d, &v), &r) in dst.iter_mut().zip(src).zip(r) {
                d.write(finish_value(v, bias, Some(r), clamp));
            }
        }
        None => {
            for (d, &v) in dst.iter_mut().zip(src) {
                d.write(finish_value(v, bias, None, clamp));
            }
        }
    }
}
