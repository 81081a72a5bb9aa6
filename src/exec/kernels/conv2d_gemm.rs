//! The arithmetic of `conv2d`: im2col / col2im for one image and a safe wrapper around the
//! matrix product (amct's `sgemm` for f32 on CPUs with AVX2/FMA, the `gemm` crate otherwise),
//! plus the per-image forward and backward steps. On `sgemm` the forward and the weight
//! gradient hand over to `conv2d_sgemm`, which never unfolds the image.
//!
//! For one image and one group, with `K = C_in/groups * KH * KW` and `P = OH * OW`:
//! forward `y[Cout_g, P] = w[Cout_g, K] * col[K, P]`; input gradient
//! `dcol[K, P] = w^T * gy`, folded back by col2im; weight gradient `dw += gy * col^T`.
//! A 1x1 convolution with unit stride and no padding skips im2col: the image is its own `col`.

use super::conv2d::{FusedActivation, Geom};
use super::sgemm::{sgemm, Epilogue, Lhs, PackedLhs};
use super::sgemm_pack::Rhs;
use candle_core::WithDType;
pub(super) use gemm::Parallelism;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Element types with a per-thread im2col buffer that outlives each call, so that the buffer
/// is neither reallocated nor refilled for every image and layer.
pub(super) trait ConvFloat: WithDType {
    /// Runs `f` with this thread's buffer (a fresh one if the thread's is already in use, as
    /// when a rayon worker waiting inside gemm picks up another convolution's image).
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

fn borrow_or_fresh<T, R>(cell: &RefCell<Vec<T>>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Vec::new()),
    }
}

impl ConvFloat for f32 {
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
        SCRATCH_F32.with(|c| borrow_or_fresh(c, f))
    }
}

impl ConvFloat for f64 {
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
        SCRATCH_F64.with(|c| borrow_or_fresh(c, f))
    }
}

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `cols x rows` matrix, without copying.
    pub fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m x n] (row-major, contiguous) = [dst +] a * b`; `packed`, when given, is `a`
/// packed beforehand.
pub(super) fn matmul<T: WithDType>(
    dst: &mut [T],
    (a, packed): (MatRef<T>, Option<&PackedLhs>),
    b: MatRef<T>,
    accumulate: bool,
    par: Parallelism,
) {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and `matmul_rows` only stores initialized
    // values (products of `a` and `b`) into it, so `dst` stays a valid `[T]`.
    let dst = unsafe { &mut *(dst as *mut [T] as *mut [MaybeUninit<T>]) };
    matmul_rows(dst, b.cols, (a, packed), b, accumulate, par)
}

/// `dst[m x n] = [dst +] a * b` where row `i` of `dst` starts at `dst[i * dst_rs]`. Without
/// `accumulate` the destination may be uninitialized: every element of the `m x n` block is
/// written, none read. `packed`, when given, is `a` packed beforehand.
fn matmul_rows<T: WithDType>(
    dst: &mut [MaybeUninit<T>],
    dst_rs: usize,
    (a, packed): (MatRef<T>, Option<&PackedLhs>),
    b: MatRef<T>,
    accumulate: bool,
    par: Parallelism,
) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(a.fits() && b.fits() && b.rows == k && dst_rs >= n);
    assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].fill(MaybeUninit::new(T::zero())));
        }
        return;
    }
    if let (Some(a32), Some(b32)) = (as_f32(a), as_f32(b)) {
        if super::sgemm::enabled() {
            // SAFETY: `enabled()` holds; the asserts above keep `a` and `b` in bounds and
            // `dst` valid for `m` rows of `n` values at stride `dst_rs`; `dst` is a unique
            // borrow of `T = f32` values, so nothing aliases.
            unsafe {
                let d = dst.as_mut_ptr().cast::<f32>();
                let lhs = packed.map_or(Lhs::View(a32), Lhs::packed);
                let threads = !matches!(par, Parallelism::None);
                let none = Epilogue::default();
                sgemm(d, dst_rs, lhs, Rhs::View(b32), accumulate, threads, none)
            };
            return;
        }
    }
    // SAFETY: the asserts above keep every index gemm touches inside the three slices: `a` and
    // `b` are read at `i * rs + j * cs` for `i < rows, j < cols` (checked by `fits`), `dst`
    // is written at `i * dst_rs + j` for `i < m, j < n`; `dst` is a unique borrow so nothing
    // aliases.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<T>(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// The same slice with its element type named `f32`, when `T` is `f32`.
pub(super) fn f32_slice<T: WithDType>(s: &[T]) -> Option<&[f32]> {
    if T::DTYPE != candle_core::DType::F32 {
        return None;
    }
    // SAFETY: `T` is `f32` (its dtype says so), so the slice is reinterpreted as itself.
    Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
}

/// The same mutable slice with its element type named `f32`, when `T` is `f32`.
pub(super) fn f32_slice_mut<T: WithDType>(s: &mut [T]) -> Option<&mut [f32]> {
    if T::DTYPE != candle_core::DType::F32 {
        return None;
    }
    // SAFETY: `T` is `f32` (its dtype says so), so the slice is reinterpreted as itself.
    Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) })
}

/// The same view with its element type named `f32`, when `T` is `f32`.
fn as_f32<T: WithDType>(m: MatRef<'_, T>) -> Option<MatRef<'_, f32>> {
    Some(MatRef {
        data: f32_slice(m.data)?,
        rows: m.rows,
        cols: m.cols,
        rs: m.rs,
        cs: m.cs,
    })
}

/// A convolution's weights `w[C_out, K]`, with each group's matrix (or its transpose, for
/// the input gradient) packed for `sgemm` once per call where that kernel runs.
#[derive(Clone, Copy)]
pub(super) struct Weights<'a, T> {
    pub data: &'a [T],
    pub packed: Option<&'a [PackedLhs]>,
}

/// Each group's weight matrix (`transposed`: its transpose) packed for `sgemm`, when `T` is
/// `f32` and the CPU runs it; packing once per call instead of once per image and block.
pub(super) fn pack_weights<T: WithDType>(
    g: &Geom,
    w: &[T],
    transposed: bool,
) -> Option<Vec<PackedLhs>> {
    if !super::sgemm::enabled() {
        return None;
    }
    let (m, kk) = (g.cout_g, g.col_rows());
    (0..g.groups)
        .map(|grp| {
            let wg = &w[grp * m * kk..(grp + 1) * m * kk];
            let view = if transposed {
                MatRef::transposed(wg, kk, m)
            } else {
                MatRef::rows(wg, m, kk)
            };
            as_f32(view).map(PackedLhs::new)
        })
        .collect()
}

/// For one kernel offset along an axis, the output positions `lo..hi` whose input position
/// `o * stride + offset - pad` falls inside `0..len`.
pub(super) fn valid_range(
    len: usize,
    out: usize,
    stride: usize,
    offset: usize,
    pad: usize,
) -> (usize, usize) {
    let first = offset as isize - pad as isize; // input position of output 0
    let lo = if first >= 0 {
        0
    } else {
        ((-first) as usize).div_ceil(stride)
    };
    let hi = if (len as isize) <= first {
        0
    } else {
        ((len as isize - first) as usize).div_ceil(stride)
    };
    let hi = hi.min(out);
    (lo.min(hi), hi)
}

/// Unfolds one group of one image `x[C_g, H, W]` into `col[K, P]` (rows ordered `c, ki, kj`).
pub(super) fn im2col<T: WithDType>(g: &Geom, x: &[T], col: &mut [T]) {
    let (h, w) = g.inp;
    let (oh, ow) = g.out;
    let p = oh * ow;
    let mut row = 0;
    for c in 0..g.cin_g {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..g.k.0 {
            let (ylo, yhi) = valid_range(h, oh, g.s.0, ki * g.d.0, g.pads[0]);
            for kj in 0..g.k.1 {
                let (xlo, xhi) = valid_range(w, ow, g.s.1, kj * g.d.1, g.pads[1]);
                let dst = &mut col[row * p..(row + 1) * p];
                dst[..ylo * ow].fill(T::zero());
                dst[yhi * ow..].fill(T::zero());
                for oy in ylo..yhi {
                    let iy = oy * g.s.0 + ki * g.d.0 - g.pads[0];
                    let src = &plane[iy * w..(iy + 1) * w];
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    out[..xlo].fill(T::zero());
                    out[xhi..].fill(T::zero());
                    let ix0 = xlo * g.s.1 + kj * g.d.1 - g.pads[1];
                    if g.s.1 == 1 {
                        out[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for (o, s) in out[xlo..xhi]
                            .iter_mut()
                            .zip(src[ix0..].iter().step_by(g.s.1))
                        {
                            *o = *s;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Adds `col[K, P]` back into one group of one image `dx[C_g, H, W]` (the adjoint of im2col).
pub(super) fn col2im_add<T: WithDType>(g: &Geom, col: &[T], dx: &mut [T]) {
    let (h, w) = g.inp;
    let (oh, ow) = g.out;
    let p = oh * ow;
    let mut row = 0;
    for c in 0..g.cin_g {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for ki in 0..g.k.0 {
            let (ylo, yhi) = valid_range(h, oh, g.s.0, ki * g.d.0, g.pads[0]);
            for kj in 0..g.k.1 {
                let (xlo, xhi) = valid_range(w, ow, g.s.1, kj * g.d.1, g.pads[1]);
                let src = &col[row * p..(row + 1) * p];
                for oy in ylo..yhi {
                    let iy = oy * g.s.0 + ki * g.d.0 - g.pads[0];
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let from = &src[oy * ow + xlo..oy * ow + xhi];
                    let ix0 = xlo * g.s.1 + kj * g.d.1 - g.pads[1];
                    if g.s.1 == 1 {
                        for (d, s) in dst[ix0..ix0 + from.len()].iter_mut().zip(from) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[ix0..].iter_mut().step_by(g.s.1).zip(from) {
                            *d += *s;
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// `col` for group `grp` of image `xn`: the image itself for a pointwise convolution,
/// else unfolded into `scratch`.
fn columns<'a, T: WithDType>(
    g: &Geom,
    xn: &'a [T],
    grp: usize,
    scratch: &'a mut Vec<T>,
) -> &'a [T] {
    let x = &xn[grp * g.cin_g * g.in_plane()..(grp + 1) * g.cin_g * g.in_plane()];
    if g.is_pointwise() {
        return x;
    }
    if scratch.len() < g.col_len() {
        scratch.resize(g.col_len(), T::zero());
    }
    let col = &mut scratch[..g.col_len()];
    im2col(g, x, col);
    col
}

/// The `(lo, hi)` clamp of a fused activation (`None` when there is nothing to clamp).
pub(super) fn bounds<T: WithDType>(act: FusedActivation) -> Option<(T, T)> {
    if act == FusedActivation::None {
        return None;
    }
    let (lo, hi) = act.bounds();
    Some((T::from_f64(lo), T::from_f64(hi)))
}

/// `row[i] = clamp(row[i] + bias + residual[i], lo, hi)` in one pass.
fn finish_row<T: WithDType>(row: &mut [T], bias: T, residual: Option<&[T]>, clamp: Option<(T, T)>) {
    let add = |i: usize, v: T| residual.map_or(v, |r| v + r[i]);
    match clamp {
        None => row
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = add(i, *v + bias)),
        Some((lo, hi)) => {
            for (i, v) in row.iter_mut().enumerate() {
                let x = add(i, *v + bias);
                let x = if x < lo { lo } else { x };
                *v = if x > hi { hi } else { x };
            }
        }
    }
}

/// Output columns per block when an image's product is split so that the block (all output
/// channels of the group) stays in cache for the bias and the activation: about 128 KiB.
fn column_block<T>(rows: usize) -> usize {
    let bytes = std::env::var("AMCT_BLOCK_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(128)
        << 10;
    (bytes / (rows.max(1) * std::mem::size_of::<T>())).max(64)
}

/// Forward of one image: `yn[C_out, P] = act(w * col + bias + residual)` (`residual` shaped
/// like `yn`), writing every element of the (uninitialized) output. On one thread the product is split into column blocks, each
/// finished (bias, activation) while in cache; with threads inside gemm it is one product
/// followed by one pass.
pub(super) fn forward_image<T: WithDType>(
    g: &Geom,
    (xn, w, bias): (&[T], Weights<T>, Option<&[T]>),
    (yn, residual, act): (&mut [MaybeUninit<T>], Option<&[T]>, FusedActivation),
    scratch: &mut Vec<T>,
    par: Parallelism,
) {
    let (p, kk, m) = (g.out_plane(), g.col_rows(), g.cout_g);
    let clamp = bounds::<T>(act);
    if let (Some(packed), Some(x32)) = (w.packed, f32_slice(xn)) {
        // Packed weights: f32 on `sgemm`, which finishes each output tile itself.
        let clamp32 = bounds::<f32>(act);
        let bias32 = bias.and_then(f32_slice);
        // SAFETY: `T` is `f32` (its slice converted), so this is the same memory retyped.
        let y32 = unsafe { &mut *(yn as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) };
        let threads = !matches!(par, Parallelism::None);
        return super::conv2d_sgemm::forward_image(
            g,
            (x32, packed, bias32),
            (y32, residual.and_then(f32_slice), clamp32),
            threads,
        );
    }
    let block = match par {
        Parallelism::None => column_block::<T>(m),
        _ => p,
    };
    for grp in 0..g.groups {
        let col = columns(g, xn, grp, scratch);
        let wg = MatRef::rows(&w.data[grp * m * kk..(grp + 1) * m * kk], m, kk);
        let wg = (wg, None); // packed weights took the `conv2d_sgemm` path above
        let yg = &mut yn[grp * m * p..(grp + 1) * m * p];
        let bg = bias.map(|b| &b[grp * m..(grp + 1) * m]);
        for p0 in (0..p).step_by(block.max(1)) {
            let pb = block.min(p - p0);
            let cols = MatRef {
                data: &col[p0..],
                rows: kk,
                cols: pb,
                rs: p,
                cs: 1,
            };
            matmul_rows(&mut yg[p0..], p, wg, cols, false, par);
            if bg.is_none() && clamp.is_none() && residual.is_none() {
                continue;
            }
            for (o, row) in yg[p0..].chunks_mut(p).enumerate() {
                let row = &mut row[..pb];
                // SAFETY: `matmul_rows` (not accumulating) has just written every element of
                // this `m x pb` block, so these are initialized values of `T`.
                let row = unsafe { &mut *(row as *mut [MaybeUninit<T>] as *mut [T]) };
                let res = residual.map(|r| &r[(grp * m + o) * p + p0..][..pb]);
                finish_row(row, bg.map_or(T::zero(), |b| b[o]), res, clamp);
            }
        }
    }
}

/// The forward of the whole batch at once (`conv2d_sgemm::forward_batch`) when the weights
/// are packed for `sgemm`, there is more than one image and each is small; `false` (and
/// nothing written) otherwise, for the caller to run `forward_image` per image.
pub(super) fn forward_small_images<T: WithDType>(
    g: &Geom,
    (x, w, bias): (&[T], Weights<T>, Option<&[T]>),
    (y, residual, act): (&mut [MaybeUninit<T>], Option<&[T]>, FusedActivation),
) -> bool {
    use super::conv2d_sgemm::{forward_batch, BATCH_BELOW_PIXELS};
    let (Some(packed), Some(x32)) = (w.packed, f32_slice(x)) else {
        return false;
    };
    if g.n < 2 || g.out_plane() >= BATCH_BELOW_PIXELS {
        return false;
    }
    let clamp = bounds::<f32>(act);
    // SAFETY: `T` is `f32` (its slice converted), so this is the same memory retyped.
    let y32 = unsafe { &mut *(y as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) };
    let operands = (x32, packed, bias.and_then(f32_slice));
    forward_batch(g, operands, (y32, residual.and_then(f32_slice), clamp));
    true
}

/// Input gradient of one image: `dxn[C_in, H, W]` (zeros on entry, as `conv2d`'s `grad_x`
/// allocates it) from `gyn[C_out, P]`.
pub(super) fn grad_x_image<T: WithDType>(
    g: &Geom,
    (gyn, w): (&[T], Weights<T>),
    dxn: &mut [T],
    scratch: &mut Vec<T>,
    par: Parallelism,
) {
    let (p, kk, ip) = (g.out_plane(), g.col_rows(), g.in_plane());
    for grp in 0..g.groups {
        let wt = MatRef::transposed(
            &w.data[grp * g.cout_g * kk..(grp + 1) * g.cout_g * kk],
            kk,
            g.cout_g,
        );
        let wt = (wt, w.packed.map(|p| &p[grp]));
        let gy = MatRef::rows(
            &gyn[grp * g.cout_g * p..(grp + 1) * g.cout_g * p],
            g.cout_g,
            p,
        );
        let dxg = &mut dxn[grp * g.cin_g * ip..(grp + 1) * g.cin_g * ip];
        if g.is_pointwise() {
            matmul(dxg, wt, gy, false, par);
        } else {
            if scratch.len() < g.col_len() {
                scratch.resize(g.col_len(), T::zero());
            }
            let dcol = &mut scratch[..g.col_len()];
            matmul(dcol, wt, gy, false, par);
            col2im_add(g, dcol, dxg);
        }
    }
}

/// Adds one image's weight gradient `gyn * col^T` into `dw[C_out, K]`.
pub(super) fn grad_w_image<T: WithDType>(
    g: &Geom,
    (xn, gyn): (&[T], &[T]),
    dw: &mut [T],
    scratch: &mut Vec<T>,
    par: Parallelism,
) {
    let (p, kk) = (g.out_plane(), g.col_rows());
    if super::sgemm::enabled() {
        if let (Some(x32), Some(gy32), Some(dw32)) =
            (f32_slice(xn), f32_slice(gyn), f32_slice_mut(dw))
        {
            let threads = !matches!(par, Parallelism::None);
            return super::conv2d_sgemm::grad_w_image(g, (x32, gy32), dw32, threads);
        }
    }
    for grp in 0..g.groups {
        let col = columns(g, xn, grp, scratch);
        let gy = MatRef::rows(
            &gyn[grp * g.cout_g * p..(grp + 1) * g.cout_g * p],
            g.cout_g,
            p,
        );
        let dwg = &mut dw[grp * g.cout_g * kk..(grp + 1) * g.cout_g * kk];
        matmul(dwg, (gy, None), MatRef::transposed(col, p, kk), true, par);
    }
}
