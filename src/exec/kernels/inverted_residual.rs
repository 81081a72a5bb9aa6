//! A MobileNetV2 inverted-residual block in one pass, for forward-only runs: an optional
//! expansion (a 1x1 convolution, or any ungrouped convolution such as the network's 3x3
//! stem, with bias and activation), a depthwise convolution (bias, activation) and a 1x1
//! projection (bias, residual, activation), computed strip by strip of output rows so that
//! the expanded activations, the widest tensors of the network, stay in cache instead of
//! going to memory and back twice.
//!
//! For each strip, the expansion computes the input rows the depthwise convolution reads
//! (rows already computed for the previous strip are moved to the front, not recomputed),
//! the depthwise convolution produces the strip's rows of every channel, and the projection
//! writes them into the output. Images (or, for fewer images than threads, bands of rows)
//! run on separate threads. Every value is the same sum in the same order as the unfused
//! kernels compute it (`conv2d` for the 1x1 convolutions, `depthwise` for the middle one),
//! so the fused block gives the same bits.

use super::conv2d::{Conv2dParams, Geom as ConvGeom};
use super::conv2d_gemm::MatRef;
use super::conv2d_sgemm::ImageCols;
use super::depthwise::{forward_rows, RowGeom, Scratch};
use super::sgemm::{sgemm, Epilogue, Lhs, PackedLhs, Residual};
use super::sgemm_pack::Rhs;
use candle_core::{bail, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A 1x1 convolution: weights `[C_out, C_in]`, an optional bias and the activation's
/// bounds.
#[derive(Clone, Copy)]
pub struct Pointwise<'a> {
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// The depthwise convolution: its geometry (for one image), taps `[C, KH * KW]`, bias and
/// activation bounds.
#[derive(Clone, Copy)]
pub struct Depthwise<'a> {
    pub geom: RowGeom,
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

/// The expansion: weights `[C_hidden, C_in, KH, KW]` (flat), `kernel` `(KH, KW)` with the
/// convolution's stride, dilation and pads in `params` (its `groups` must be 1 and its
/// `activation` is ignored: `clamp` is applied), bias and activation bounds.
#[derive(Clone, Copy)]
pub struct Expansion<'a> {
    pub w: &'a [f32],
    pub kernel: (usize, usize),
    pub params: Conv2dParams,
    pub bias: Option<&'a [f32]>,
    pub clamp: Option<(f32, f32)>,
}

impl<'a> Expansion<'a> {
    /// A 1x1 expansion with unit stride and no padding.
    pub fn pointwise(p: Pointwise<'a>) -> Self {
        Expansion {
            w: p.w,
            kernel: (1, 1),
            params: Conv2dParams::default(),
            bias: p.bias,
            clamp: p.clamp,
        }
    }
}

/// The three convolutions of a block.
#[derive(Clone, Copy)]
pub struct Block<'a> {
    pub expand: Option<Expansion<'a>>,
    pub depthwise: Depthwise<'a>,
    pub project: Pointwise<'a>,
}

/// Per thread, this many bytes of expanded rows (the depthwise input and output of one
/// strip) at most: twice one core's L2 on the development machine, a small share of its L3.
/// Measured on MobileNetV2's blocks (`inverted_residual_times`): 1 MiB beat 256 KiB by 5-10%
/// on the 112x112 and 56x56 blocks; 2 and 4 MiB were no faster.
const STRIP_BYTES: usize = 1 << 20;

/// Sizes of a block over an input `[N, C_in, H, W]`.
struct Sizes {
    n: usize,
    cin: usize,
    hidden: usize,
    cout: usize,
    /// The input's `H x W`, the depthwise input's (the expansion's output) and output's.
    inp: (usize, usize),
    mid: (usize, usize),
    out: (usize, usize),
    /// The expansion's geometry over one image.
    expand: Option<ConvGeom>,
    /// Output rows per strip, and the most input rows a strip of that many rows can read
    /// wherever it starts (bands start anywhere, not only at multiples of `strip`).
    strip: usize,
    strip_in: usize,
}

impl Sizes {
    fn new(b: &Block, [n, cin, h, w]: [usize; 4]) -> Result<Self> {
        let expand = match &b.expand {
            Some(e) => {
                let per_out = cin * e.kernel.0 * e.kernel.1;
                if per_out == 0 || !e.w.len().is_multiple_of(per_out) || e.params.groups != 1 {
                    bail!("inverted_residual: expansion weights ({}) do not fit {cin} input channels and a {:?} kernel", e.w.len(), e.kernel)
                }
                let wd = [e.w.len() / per_out, cin, e.kernel.0, e.kernel.1];
                Some(ConvGeom::new(&e.params, &[1, cin, h, w], &wd)?)
            }
            None => None,
        };
        let (hidden, mid) = expand.as_ref().map_or((cin, (h, w)), |g| (g.cout(), g.out));
        let g = &b.depthwise.geom;
        if g.c != hidden || g.inp != mid {
            bail!(
                "inverted_residual: depthwise geometry {:?} over {:?} does not fit {hidden} channels of {mid:?}",
                g.c,
                g.inp
            )
        }
        let taps = g.k.0 * g.k.1;
        if b.depthwise.w.len() != hidden * taps {
            bail!("inverted_residual: depthwise weights ({}) do not fit {hidden} channels of {taps} taps", b.depthwise.w.len())
        }
        if hidden == 0 || !b.project.w.len().is_multiple_of(hidden) || b.project.w.is_empty() {
            bail!(
                "inverted_residual: projection weights ({}) do not fit {hidden} channels",
                b.project.w.len()
            )
        }
        let cout = b.project.w.len() / hidden;
        let bias_fits = |bias: Option<&[f32]>, len: usize| bias.is_none_or(|b| b.len() == len);
        if !bias_fits(b.expand.and_then(|e| e.bias), hidden)
            || !bias_fits(b.depthwise.bias, hidden)
            || !bias_fits(b.project.bias, cout)
        {
            bail!("inverted_residual: a bias does not fit its convolution's output channels")
        }
        let out = g.output()?;
        let row_bytes = 4 * hidden * (g.p.stride[0] * mid.1 + out.1);
        let strip = (STRIP_BYTES / row_bytes.max(1)).clamp(1, out.0.max(1));
        let extent = g.p.dilation[0] * (g.k.0 - 1) + 1;
        let strip_in = ((strip - 1) * g.p.stride[0] + extent).min(mid.0);
        Ok(Sizes {
            n,
            cin,
            hidden,
            cout,
            inp: (h, w),
            mid,
            out,
            expand,
            strip,
            strip_in,
        })
    }

    fn in_plane(&self) -> usize {
        self.inp.0 * self.inp.1
    }

    fn out_plane(&self) -> usize {
        self.out.0 * self.out.1
    }
}

/// Whether this CPU runs the fused block (amct's `sgemm`: AVX2 and FMA, not turned off by
/// `AMCT_GEMM=crate`).
pub fn available() -> bool {
    super::sgemm::enabled()
}

/// The output of the block, written by several threads at disjoint places.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint rows of the output (each its image's band, see `run_band`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `offset` values on.
    ///
    /// # Safety
    /// The result must stay inside the allocation.
    unsafe fn offset(self, offset: usize) -> OutPtr {
        OutPtr(self.0.add(offset))
    }
}

/// The block over `x: [N, C_in, H, W]` (`dims`), plus `residual` (shaped like the output)
/// before the projection's activation; returns the output `[N, C_out, OH, OW]` and its
/// dimensions.
/// An error where `available()` is false.
pub fn inverted_residual(
    b: &Block,
    x: &[f32],
    dims: [usize; 4],
    residual: Option<&[f32]>,
) -> Result<(Vec<f32>, [usize; 4])> {
    if !available() {
        bail!("inverted_residual: needs AVX2 and FMA (and amct's own sgemm)")
    }
    let s = Sizes::new(b, dims)?;
    if x.len() != s.n * s.cin * s.in_plane() {
        bail!(
            "inverted_residual: input of {} values for {dims:?}",
            x.len()
        )
    }
    let len = s.n * s.cout * s.out_plane();
    if residual.is_some_and(|r| r.len() != len) {
        bail!("inverted_residual: residual does not have the output's {len} values")
    }
    let packed_expand = b
        .expand
        .map(|e| PackedLhs::new(MatRef::rows(e.w, s.hidden, e.w.len() / s.hidden)));
    let packed_project = PackedLhs::new(MatRef::rows(b.project.w, s.cout, s.hidden));
    // Bands of output rows per image: one, unless there are fewer images than threads.
    let threads = rayon::current_num_threads();
    let bands = if s.n >= 2 * threads || s.n.is_multiple_of(threads) {
        1
    } else {
        threads.min(s.out.0.div_ceil(s.strip)).max(1)
    };
    let band_rows = s.out.0.div_ceil(bands);
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = OutPtr(y.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    (0..s.n * bands).into_par_iter().try_for_each(|task| {
        let (image, band) = (task / bands, task % bands);
        let rows = (band * band_rows, ((band + 1) * band_rows).min(s.out.0));
        if rows.0 >= rows.1 {
            return Ok(());
        }
        let xn = &x[image * s.cin * s.in_plane()..][..s.cin * s.in_plane()];
        let res = residual.map(|r| &r[image * s.cout * s.out_plane()..][..s.cout * s.out_plane()]);
        let packed = (packed_expand.as_ref(), &packed_project);
        // SAFETY: image `image`'s output lies inside `y`'s capacity; bands of one image
        // write disjoint rows.
        let yn = unsafe { out.offset(image * s.cout * s.out_plane()) };
        run_band(b, &s, (xn, res), packed, yn, rows)
    })?;
    // SAFETY: the tasks wrote every output row of every image (`run_band` writes all
    // `C_out` channels of each of its rows).
    unsafe { y.set_len(len) };
    Ok((y, [s.n, s.cout, s.out.0, s.out.1]))
}

/// Output rows `rows.0..rows.1` of one image, strip by strip.
fn run_band(
    b: &Block,
    s: &Sizes,
    (xn, res): (&[f32], Option<&[f32]>),
    (packed_expand, packed_project): (Option<&PackedLhs>, &PackedLhs),
    yn: OutPtr,
    rows: (usize, usize),
) -> Result<()> {
    let (w, ow, op) = (s.mid.1, s.out.1, s.out_plane());
    // The expansion's right operand: the image itself (1x1), or its im2col columns.
    let im2col = s.expand.as_ref().map(|g| ImageCols { g, x: xn });
    let dw = &b.depthwise;
    // The expanded input rows `held.0..held.1` of every channel, `strip_in` rows apart.
    let stride_e = s.strip_in * w;
    let mut expanded = vec![
        0f32;
        if packed_expand.is_some() {
            s.hidden * stride_e
        } else {
            0
        }
    ];
    let mut held = (0, 0);
    let mut mid = vec![MaybeUninit::<f32>::uninit(); s.hidden * s.strip * ow];
    let mut scratch = Scratch::default();
    let dw_clamp = dw.clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    for r0 in (rows.0..rows.1).step_by(s.strip) {
        let r1 = (r0 + s.strip).min(rows.1);
        let (lo, hi) = dw.geom.input_rows((r0, r1));
        // The rolling buffer holds `strip_in` rows per channel (a bound for any strip).
        assert!(
            hi - lo <= s.strip_in,
            "inverted_residual: a strip reads {} rows",
            hi - lo
        );
        let source = match (&b.expand, packed_expand) {
            (Some(e), Some(pe)) => {
                // Rows already expanded for the previous strip move to the front.
                let keep = if held.0 <= lo && lo < held.1 {
                    held.1 - lo
                } else {
                    0
                };
                if keep > 0 && lo > held.0 {
                    let from = (lo - held.0) * w;
                    for ch in expanded.chunks_exact_mut(stride_e) {
                        ch.copy_within(from..from + keep * w, 0);
                    }
                }
                let new = (lo + keep, hi);
                if new.0 < new.1 {
                    let cols = (new.1 - new.0) * w;
                    let bx = match &im2col {
                        Some(src) if !src.g.is_pointwise() => {
                            Rhs::generated(src, false).columns(new.0 * w, cols)
                        }
                        _ => Rhs::View(MatRef {
                            data: &xn[new.0 * w..],
                            rows: s.cin,
                            cols,
                            rs: s.in_plane(),
                            cs: 1,
                        }),
                    };
                    let epilogue = Epilogue {
                        bias: e.bias,
                        clamp: e.clamp,
                        ..Epilogue::default()
                    };
                    let dst = expanded[keep * w..].as_mut_ptr();
                    // SAFETY: `dst` has `hidden` rows of `cols <= stride_e - keep * w` values
                    // at stride `stride_e`; `bx` lies inside the image (or its im2col
                    // matrix); the packed weights are `hidden x cin * KH * KW`.
                    unsafe { sgemm(dst, stride_e, Lhs::packed(pe), bx, false, false, epilogue) };
                }
                held = (lo, hi);
                (&expanded[..], lo, stride_e)
            }
            _ => (xn, 0, s.in_plane()),
        };
        let strip = (r1 - r0) * ow;
        let mid = &mut mid[..s.hidden * strip];
        forward_rows(
            &dw.geom,
            (dw.w, dw.bias, dw_clamp),
            source,
            (r0, r1),
            mid,
            &mut scratch,
        )?;
        // SAFETY: `forward_rows` wrote every value of `mid`.
        let mid: &[f32] = unsafe { std::slice::from_raw_parts(mid.as_ptr().cast(), mid.len()) };
        let epilogue = Epilogue {
            bias: b.project.bias,
            residual: res.map(|r| Residual {
                ptr: r[r0 * ow..].as_ptr(),
                rs: op,
            }),
            clamp: b.project.clamp,
            stream: false,
        };
        // SAFETY: rows `r0..r1` of the `cout` output planes of this image (stride `op`)
        // belong to this task; the residual is shaped like them; `mid` is `hidden x strip`.
        unsafe {
            sgemm(
                yn.offset(r0 * ow).0,
                op,
                Lhs::packed(packed_project),
                Rhs::View(MatRef::rows(mid, s.hidden, strip)),
                false,
                false,
                epilogue,
            )
        };
    }
    Ok(())
}

#[cfg(test)]
#[path = "inverted_residual_tests.rs"]
mod tests;
