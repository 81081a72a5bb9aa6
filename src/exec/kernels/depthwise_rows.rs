//! The depthwise forward over a band of output rows, for callers that hold only the input
//! rows the band reads (`inverted_residual`, which produces them strip by strip). The band is
//! computed as a convolution of its own: the rows it reads form a shorter plane whose top and
//! bottom padding is whatever of the real padding falls inside the band, so every output value
//! is the same sum, in the same order, as in the whole-plane forward.

use super::loops::{fwd_plane_mv, Epilogue, Plan, Scratch};
use super::{DepthwiseParams, Geom};
use std::mem::MaybeUninit;

/// Output rows and kernel of one depthwise convolution over `c` planes of `h x w` (one
/// image, channel multiplier 1).
#[derive(Debug, Clone, Copy)]
pub struct RowGeom {
    pub c: usize,
    pub inp: (usize, usize),
    pub k: (usize, usize),
    pub p: DepthwiseParams,
}

impl RowGeom {
    /// The whole-plane geometry (also checks that the kernel fits the padded input).
    fn whole(&self) -> candle_core::Result<Geom> {
        let (c, (h, w), (kh, kw)) = (self.c, self.inp, self.k);
        Geom::new(&self.p, &[1, c, h, w], &[c, 1, kh, kw])
    }

    /// `(OH, OW)`.
    pub fn output(&self) -> candle_core::Result<(usize, usize)> {
        Ok(self.whole()?.out)
    }

    /// The input rows `lo..hi` that output rows `r0..r1` read (the padding excluded).
    pub fn input_rows(&self, (r0, r1): (usize, usize)) -> (usize, usize) {
        let (top, h) = (self.p.pads[0], self.inp.0);
        let extent = self.p.dilation[0] * (self.k.0 - 1) + 1;
        let first = r0 * self.p.stride[0]; // in padded rows
        let end = (r1 - 1) * self.p.stride[0] + extent;
        (
            first.saturating_sub(top).min(h),
            end.saturating_sub(top).min(h),
        )
    }
}

/// Output rows `r0..r1` of all `c` planes into `y` (`c` bands of `(r1 - r0) * OW` values,
/// one after the other), `act(x (*) w + bias)`, where `x` holds input rows `x_first..` of
/// plane `ch` at `x[ch * x_stride..]` (at least the rows `input_rows` names).
///
/// `w` holds `c * KH * KW` taps; `bias`, when given, `c` values; `clamp` is `(lo, hi)`.
#[allow(clippy::too_many_arguments)]
pub(in crate::exec::kernels) fn forward_rows(
    g: &RowGeom,
    (w, bias, (lo, hi)): (&[f32], Option<&[f32]>, (f32, f32)),
    (x, x_first, x_stride): (&[f32], usize, usize),
    (r0, r1): (usize, usize),
    y: &mut [MaybeUninit<f32>],
    scratch: &mut Scratch<f32>,
) -> candle_core::Result<()> {
    let whole = g.whole()?;
    let ((oh, ow), width, taps) = (whole.out, g.inp.1, g.k.0 * g.k.1);
    if r0 >= r1 || r1 > oh {
        candle_core::bail!("depthwise rows {r0}..{r1} outside the {oh} output rows");
    }
    let (in_lo, in_hi) = g.input_rows((r0, r1));
    if x_first > in_lo || w.len() < g.c * taps || y.len() < g.c * (r1 - r0) * ow {
        candle_core::bail!("depthwise rows {r0}..{r1}: operands too short for the band");
    }
    // The band as a convolution of its own: rows `in_lo..in_hi`, padded above by what of
    // the top padding the band covers, below by what it needs past the last real row.
    let extent = g.p.dilation[0] * (g.k.0 - 1) + 1;
    let span = (r1 - r0 - 1) * g.p.stride[0] + extent;
    let top = g.p.pads[0].saturating_sub(r0 * g.p.stride[0]);
    let rows = in_hi - in_lo;
    let bottom = span - top - rows;
    let p = DepthwiseParams {
        pads: [top, g.p.pads[1], bottom, g.p.pads[3]],
        ..g.p
    };
    let band = Geom::new(&p, &[1, g.c, rows, width], &[g.c, 1, g.k.0, g.k.1])?;
    debug_assert_eq!(band.out, (r1 - r0, ow));
    let plan = Plan::new(&band);
    let start = (in_lo - x_first) * width;
    for (ch, y) in y.chunks_exact_mut((r1 - r0) * ow).take(g.c).enumerate() {
        let xs = &x[ch * x_stride + start..][..rows * width];
        let post = Epilogue {
            bias: bias.map_or(0.0, |b| b[ch]),
            lo,
            hi,
        };
        fwd_plane_mv(
            &band,
            &plan,
            (xs, &w[ch * taps..][..taps], post),
            y,
            scratch,
        );
    }
    Ok(())
}
