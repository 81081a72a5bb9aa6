//! Depthwise convolution off the CPU (CUDA) as a sum over kernel taps: for each of the
//! `KH * KW` taps, the padded input's window of output positions times that tap's
//! per-channel weight. candle's grouped `conv2d` runs one convolution per group, so a
//! depthwise layer of C channels costs C kernel launches forward and more backward; this
//! costs a few per tap and differentiates through ordinary candle ops. (On the CPU amct's
//! own depthwise kernel runs instead.)

use candle_core::{Result, Tensor};

/// `[top, left, bottom, right]` padding, stride and dilation of a 2-D convolution.
pub(super) struct TapGeometry {
    pub pads: [usize; 4],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
}

/// Depthwise convolution of `x: [N, C, H, W]` with `w: [C, 1, KH, KW]` (one output channel
/// per input channel), without bias.
pub(super) fn depthwise_by_taps(x: &Tensor, w: &Tensor, g: &TapGeometry) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let [top, left, bottom, right] = g.pads;
    let x = x
        .pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?;
    let (ph, pw) = (h + top + bottom, wd + left + right);
    let extent = |k: usize, a: usize| (k - 1) * g.dilation[a] + 1;
    if ph < extent(kh, 0) || pw < extent(kw, 1) {
        candle_core::bail!("padded input {ph}x{pw} is smaller than the kernel extent");
    }
    let [sh, sw] = g.stride;
    let oh = (ph - extent(kh, 0)) / sh + 1;
    let ow = (pw - extent(kw, 1)) / sw + 1;
    // Rows and columns split into (block, phase) pairs of the stride: padded row
    // `i * dilation + t * stride` is block `(i * dilation) / stride + t`, phase
    // `(i * dilation) % stride`, so each tap is a view of the input, no copy.
    let (bh, bw) = (ph.div_ceil(sh), pw.div_ceil(sw));
    let x = x
        .pad_with_zeros(2, 0, bh * sh - ph)?
        .pad_with_zeros(3, 0, bw * sw - pw)?
        .reshape((n, c, bh, sh, bw, sw))?;
    let w = w.reshape((c, kh * kw))?;
    let mut acc: Option<Tensor> = None;
    for i in 0..kh {
        let (qi, pi) = ((i * g.dilation[0]) / sh, (i * g.dilation[0]) % sh);
        let rows = x.narrow(2, qi, oh)?.narrow(3, pi, 1)?;
        for j in 0..kw {
            let (qj, pj) = ((j * g.dilation[1]) / sw, (j * g.dilation[1]) % sw);
            let tap = rows.narrow(4, qj, ow)?.narrow(5, pj, 1)?;
            let wt = w.narrow(1, i * kw + j, 1)?.reshape((1, c, 1, 1, 1, 1))?;
            let term = tap.broadcast_mul(&wt)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    match acc {
        Some(y) => y.reshape((n, c, oh, ow)),
        None => Tensor::zeros((n, c, oh, ow), x.dtype(), x.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::conv2d::FusedActivation;
    use crate::exec::kernels::depthwise::{depthwise_conv2d_fused, DepthwiseParams};
    use candle_core::{Device, Var};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Values and gradients against amct's CPU depthwise kernel (itself tested against
    /// candle's grouped conv2d), asymmetric padding and dilation included.
    #[test]
    fn taps_match_the_cpu_depthwise_kernel_with_gradients() -> anyhow::Result<()> {
        let cases = [
            (1, 1, [1, 1, 1, 1], 3),
            (2, 1, [1, 1, 1, 1], 3),
            (2, 1, [0, 1, 2, 0], 5),
            (1, 2, [2, 2, 2, 2], 3),
            (3, 2, [1, 0, 0, 2], 3),
        ];
        for (stride, dilation, pads, k) in cases {
            let (n, c, h, wd) = (2, 5, 9, 8);
            let x = Var::from_vec(values(n * c * h * wd, 1), (n, c, h, wd), &Device::Cpu)?;
            let w = Var::from_vec(values(c * k * k, 2), (c, 1, k, k), &Device::Cpu)?;
            let g = TapGeometry {
                pads,
                stride: [stride; 2],
                dilation: [dilation; 2],
            };
            let ours = depthwise_by_taps(x.as_tensor(), w.as_tensor(), &g)?;
            let p = DepthwiseParams {
                stride: g.stride,
                dilation: g.dilation,
                pads,
            };
            let theirs = depthwise_conv2d_fused(
                x.as_tensor(),
                w.as_tensor(),
                None,
                FusedActivation::None,
                &p,
            )?;
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (&ours - &theirs)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "stride {stride} dilation {dilation} pads {pads:?}: {diff}"
            );
            let r = Tensor::from_vec(values(ours.elem_count(), 3), ours.shape(), &Device::Cpu)?;
            let go = (&ours * &r)?.sum_all()?.backward()?;
            let gt = (&theirs * &r)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let d = (go.get(v).unwrap() - gt.get(v).unwrap())?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(d < 1e-4, "gradient differs by {d}");
            }
        }
        Ok(())
    }
}
