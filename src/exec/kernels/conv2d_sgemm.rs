//! A convolution's per-image steps on `sgemm` (f32 on CPUs with AVX2/FMA): the forward
//! with the weights packed once per call and bias and activation applied to each finished
//! tile, and the weight gradient; both take the im2col rows as they are packed
//! (`ImageCols`), so the unfolded matrix is never written to memory.

use super::conv2d::Geom;
use super::conv2d_gemm::{im2col, valid_range, MatRef};
use super::sgemm::{finish_value, sgemm, with_buffer, Epilogue, Lhs, PackedLhs, Residual};
use super::sgemm_pack::{Rhs, RowSource};
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// One group of one image `x[C_g, H, W]` seen as its im2col matrix `[C_g * KH * KW, OH * OW]`
/// (rows ordered `c, ki, kj`, as `conv2d_gemm::im2col` writes them).
pub(super) struct ImageCols<'a> {
    pub g: &'a Geom,
    pub x: &'a [f32],
}

impl RowSource for ImageCols<'_> {
    fn rows(&self) -> usize {
        self.g.col_rows()
    }

    fn cols(&self) -> usize {
        self.g.out_plane()
    }

    fn fill_row(&self, r: usize, j0: usize, out: &mut [f32]) {
        let g = self.g;
        let ((h, w), (_, ow), (kh, kw)) = (g.inp, g.out, g.k);
        let (c, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &self.x[c * h * w..(c + 1) * h * w];
        let (ylo, yhi) = valid_range(h, g.out.0, g.s.0, ki * g.d.0, g.pads[0]);
        let (xlo, xhi) = valid_range(w, ow, g.s.1, kj * g.d.1, g.pads[1]);
        // Input row of output row `oy` (valid in `ylo..yhi`), and the input column of
        // output column `ox` (valid in `xlo..xhi`).
        let in_row = |oy: usize| &plane[(oy * g.s.0 + ki * g.d.0 - g.pads[0]) * w..][..w];
        let in_col = |ox: usize| ox * g.s.1 + kj * g.d.1 - g.pads[1];
        let gather = |dst: &mut [f32], src: &[f32], ix0: usize| {
            if g.s.1 == 1 {
                // A loop, not `copy_from_slice`: rows are short, and a call per row costs more.
                dst.iter_mut().zip(&src[ix0..]).for_each(|(o, s)| *o = *s);
            } else if g.s.1 == 2 {
                // Pairs, not `step_by`: this loop vectorizes (the stride-2 stem's rows).
                let (pairs, last) = (src[ix0..].chunks_exact(2), dst.len() - 1);
                let whole = pairs.len().min(dst.len());
                dst[..whole]
                    .iter_mut()
                    .zip(pairs)
                    .for_each(|(o, p)| *o = p[0]);
                if whole == last {
                    dst[last] = src[ix0 + 2 * last];
                }
            } else {
                let from = src[ix0..].iter().step_by(g.s.1);
                dst.iter_mut().zip(from).for_each(|(o, s)| *o = *s);
            }
        };
        // One output row per step: the first may start mid-row and the last end early.
        let (mut oy, mut ox0, mut done) = (j0 / ow, j0 % ow, 0);
        while done < out.len() {
            let len = (ow - ox0).min(out.len() - done);
            let seg = &mut out[done..done + len];
            let (row, col) = (oy, ox0);
            done += len;
            (oy, ox0) = (oy + 1, 0);
            if row < ylo || row >= yhi || xlo >= xhi {
                seg.fill(0.0);
                continue;
            }
            // Zeros, the valid columns, zeros (`lo <= hi` as `xlo < xhi`).
            let (lo, hi) = (xlo.clamp(col, col + len), xhi.clamp(col, col + len));
            seg[..lo - col].fill(0.0);
            seg[hi - col..].fill(0.0);
            if lo < hi {
                gather(&mut seg[lo - col..hi - col], in_row(row), in_col(lo));
            }
        }
    }
}

/// One group of every image of a batch as one im2col matrix `[C_g * KH * KW, N * OH * OW]`:
/// image `b`'s columns follow image `b - 1`'s.
pub(super) struct BatchCols<'a> {
    pub g: &'a Geom,
    /// The whole batch `[N, C, H, W]`.
    pub x: &'a [f32],
    pub group: usize,
}

impl RowSource for BatchCols<'_> {
    fn rows(&self) -> usize {
        self.g.col_rows()
    }

    fn cols(&self) -> usize {
        self.g.n * self.g.out_plane()
    }

    fn fill_row(&self, r: usize, j0: usize, out: &mut [f32]) {
        let (g, p) = (self.g, self.g.out_plane());
        let (image_len, group_len) = (g.cin_g * g.groups * g.in_plane(), g.cin_g * g.in_plane());
        let mut done = 0;
        while done < out.len() {
            let (b, j) = ((j0 + done) / p, (j0 + done) % p);
            let len = (p - j).min(out.len() - done);
            let x = &self.x[b * image_len + self.group * group_len..][..group_len];
            ImageCols { g, x }.fill_row(r, j, &mut out[done..done + len]);
            done += len;
        }
    }
}

/// Whether `forward_batch` runs a convolution: images of fewer output pixels than this
/// leave the micro-kernel too few column panels per image to reuse each packed panel of
/// the weights, so all images are multiplied at once. Since the narrow 6x8 and 6x4 tiles,
/// a 7x7 image (49 columns) runs faster alone: 1x1 convolutions of MobileNetV2's and
/// ResNet-50's 7x7 stages went from 50-90 to 90-125 GFLOP/s and ResNet-18's 4x4 stage
/// from 56-58 to 80-97 (`mobilenetv2_pointwise_times`, batch 8); a 2x2 image (4 columns)
/// is still faster batched (27 against 34 GFLOP/s).
pub(super) const BATCH_BELOW_PIXELS: usize = 16;

/// The forward of a whole batch as one product per group, `[C_out_g, N * P]`, into a
/// scratch matrix, then scattered into the NCHW output `y` with the bias, residual and
/// clamp: the same values, element for element, as `forward_image` on each image (the same
/// depth blocks, and the epilogue's additions in the same order).
pub(super) fn forward_batch(
    g: &Geom,
    (x, packed, bias): (&[f32], &[PackedLhs], Option<&[f32]>),
    (y, residual, clamp): ImageOutput,
) {
    let (p, m, n) = (g.out_plane(), g.cout_g, g.n);
    let image_len = g.groups * m * p;
    assert!(y.len() >= n * image_len && packed.len() == g.groups);
    assert!(residual.is_none_or(|r| r.len() >= n * image_len));
    // A reused scratch matrix (a fresh zeroed one per call was a `memset` of the whole
    // product); every element is written by the product before it is read.
    with_buffer(&PRODUCT, m * n * p, |product| {
        for (grp, weights) in packed.iter().enumerate() {
            let cols = BatchCols { g, x, group: grp };
            let (a, b) = (Lhs::packed(weights), Rhs::generated(&cols, false));
            // SAFETY: `product` holds `m x (n * p)` values, row stride `n * p`, a unique borrow;
            // `a` is `m x K` and `b` is `K x (n * p)` for the same geometry.
            let dst = product.as_mut_ptr();
            unsafe { sgemm(dst, n * p, a, b, false, true, Epilogue::default()) };
            for (o, row) in product.chunks(n * p).enumerate() {
                let c = grp * m + o;
                let add = bias.map(|b| b[c]);
                for (b, sums) in row.chunks(p).enumerate() {
                    let at = b * image_len + c * p;
                    let res = residual.map(|r| &r[at..at + p]);
                    for (j, (out, &v)) in y[at..at + p].iter_mut().zip(sums).enumerate() {
                        let v = finish_value(v, add, res.map(|r| r[j]), clamp);
                        out.write(v);
                    }
                }
            }
        }
    })
}

/// `sgemm`'s right operand for group `grp` of image `xn`: the image itself for a pointwise
/// convolution, else its generated im2col rows (`transposed` for the weight gradient).
fn image_operand<'a>(
    g: &'a Geom,
    x: &'a [f32],
    cols: &'a ImageCols<'a>,
    transposed: bool,
) -> Rhs<'a> {
    let (kk, p) = (g.col_rows(), g.out_plane());
    match (g.is_pointwise(), transposed) {
        (true, false) => Rhs::View(MatRef::rows(x, kk, p)),
        (true, true) => Rhs::View(MatRef::transposed(x, p, kk)),
        (false, t) => Rhs::generated(cols, t),
    }
}

/// A forward whose batch output is at least this large writes it with non-temporal stores
/// (`Epilogue::stream`): by the time the next layer reads it, it has left the caches anyway.
/// Measured per node (ResNet-50, MobileNetV2, batch 8): outputs of 6.4 MB and more got
/// 5-20% faster, outputs of 3.2 MB and less slower.
const STREAM_OUTPUT_BYTES: usize = 4 << 20;

/// Where one image's forward goes: the (uninitialized) output, the residual added to it and
/// the activation's bounds.
type ImageOutput<'a> = (
    &'a mut [MaybeUninit<f32>],
    Option<&'a [f32]>,
    Option<(f32, f32)>,
);

/// Forward of one image: `yn[C_out, P] = act(w * col + bias + residual)` with `packed` the
/// weights of each group, `residual` shaped like `yn` and `clamp` the activation's bounds;
/// every element of `yn` is written.
pub(super) fn forward_image(
    g: &Geom,
    (xn, packed, bias): (&[f32], &[PackedLhs], Option<&[f32]>),
    (yn, residual, clamp): ImageOutput,
    threads: bool,
) {
    let (p, m, x_len) = (g.out_plane(), g.cout_g, g.cin_g * g.in_plane());
    assert!(yn.len() >= g.groups * m * p && packed.len() == g.groups);
    assert!(residual.is_none_or(|r| r.len() >= g.groups * m * p));
    for grp in 0..g.groups {
        let x = &xn[grp * x_len..(grp + 1) * x_len];
        let cols = ImageCols { g, x };
        let epilogue = Epilogue {
            bias: bias.map(|b| &b[grp * m..(grp + 1) * m]),
            residual: residual.map(|r| Residual {
                ptr: r[grp * m * p..].as_ptr(),
                rs: p,
            }),
            clamp,
            stream: g.n * g.cout() * p * 4 >= STREAM_OUTPUT_BYTES,
        };
        let y = yn[grp * m * p..].as_mut_ptr().cast::<f32>();
        let (a, b) = (Lhs::packed(&packed[grp]), image_operand(g, x, &cols, false));
        // SAFETY: `y` is this group's `m x p` block of `yn` (asserted long enough), row
        // stride `p`, a unique borrow; so is the residual's, only read; the operands' shapes
        // come from the same geometry.
        unsafe { sgemm(y, p, a, b, false, threads, epilogue) };
    }
}

thread_local! {
    /// `forward_batch`'s product `[C_out_g, N * P]` before it is scattered into the output.
    static PRODUCT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One image's unfolded columns for `grad_w_image` on small images.
    static UNFOLDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Below this many output pixels the weight gradient unfolds each image (a matrix small
/// enough to stay in cache) instead of generating its im2col columns while packing: there
/// each generated column is a few short row segments written with a stride, and that costs
/// more than the unfolding.
const UNFOLD_BELOW_PIXELS: usize = 256;

/// Adds one image's weight gradient `gyn * col^T` into `dw[C_out, K]`.
pub(super) fn grad_w_image(g: &Geom, (xn, gyn): (&[f32], &[f32]), dw: &mut [f32], threads: bool) {
    let (p, kk, m, x_len) = (
        g.out_plane(),
        g.col_rows(),
        g.cout_g,
        g.cin_g * g.in_plane(),
    );
    assert!(dw.len() >= g.groups * m * kk && gyn.len() >= g.groups * m * p);
    let unfold = !g.is_pointwise() && p < UNFOLD_BELOW_PIXELS;
    with_buffer(&UNFOLDED, if unfold { g.col_len() } else { 0 }, |col| {
        for grp in 0..g.groups {
            let x = &xn[grp * x_len..(grp + 1) * x_len];
            let cols = ImageCols { g, x };
            let gy = MatRef::rows(&gyn[grp * m * p..(grp + 1) * m * p], m, p);
            let dwg = dw[grp * m * kk..].as_mut_ptr();
            let b = if unfold {
                im2col(g, x, col);
                Rhs::View(MatRef::transposed(col, p, kk))
            } else {
                image_operand(g, x, &cols, true)
            };
            // SAFETY: `dwg` is this group's initialized `m x kk` block of `dw` (asserted),
            // row stride `kk`, a unique borrow; `gy` is `m x p` and `b` is `p x kk`.
            unsafe {
                sgemm(
                    dwg,
                    kk,
                    Lhs::View(gy),
                    b,
                    true,
                    threads,
                    Epilogue::default(),
                )
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::conv2d::Conv2dParams;
    use crate::exec::kernels::conv2d::FusedActivation;
    use crate::exec::kernels::test_util::Lcg;

    #[test]
    fn generated_rows_equal_im2col_for_any_segment() {
        let cases = [
            ([1, 2, 7, 9], [3, 2, 3, 3], [2, 1], [1, 2], [1, 2, 0, 1]),
            ([1, 1, 5, 5], [1, 1, 3, 3], [1, 1], [1, 1], [3, 0, 0, 3]),
            ([1, 3, 6, 4], [2, 3, 5, 3], [1, 3], [2, 1], [2, 1, 2, 1]),
            ([1, 2, 9, 11], [2, 2, 3, 3], [2, 2], [1, 1], [1, 1, 1, 1]), // stride-2 pairs
            ([1, 3, 15, 13], [4, 3, 7, 7], [2, 2], [1, 1], [3, 3, 3, 3]), // a stem
            ([1, 1, 8, 10], [1, 1, 1, 1], [2, 2], [1, 1], [0, 0, 0, 0]), // 1x1 downsample
        ];
        for (x_dims, w_dims, stride, dilation, pads) in cases {
            let params = Conv2dParams {
                stride,
                dilation,
                pads,
                groups: 1,
                activation: FusedActivation::None,
            };
            let g = Geom::new(&params, &x_dims, &w_dims).expect("a valid geometry");
            let x: Vec<f32> = Lcg(3)
                .vec(x_dims.iter().product())
                .iter()
                .map(|&v| v as f32)
                .collect();
            let mut col = vec![f32::NAN; g.col_len()];
            im2col(&g, &x, &mut col);
            let cols = ImageCols { g: &g, x: &x };
            let p = g.out_plane();
            for r in 0..g.col_rows() {
                for (j0, len) in [(0, p), (1, p - 1), (p / 2, p - p / 2), (p - 1, 1), (3, 0)] {
                    let mut out = vec![f32::NAN; len];
                    cols.fill_row(r, j0, &mut out);
                    assert_eq!(out, col[r * p + j0..r * p + j0 + len], "row {r} from {j0}");
                }
            }
        }
    }
}
