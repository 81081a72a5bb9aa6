//! QuantizeLinear for quantization-aware training as one CPU candle custom op, forward and
//! backward: `q = clamp(round_half_even(x / s) + z, qmin, qmax)`, held in the float type.
//! Rounding uses the straight-through estimator: where the unclamped value lies in
//! `[qmin, qmax]`, `dq/dx = 1/s` and `dq/ds = -x/s²`; outside, both are 0. Those are the
//! derivatives the composite candle ops give (rounding by adding and subtracting a constant,
//! then a clamp); fused, fake quantization costs one pass over memory forward and one
//! backward instead of about fifteen, which dominated a QAT step.
//!
//! The scale is per tensor (one element) or per axis (`dims[axis]` elements); the zero
//! points are constants (QAT does not learn them). The scale gradient is summed in f64 over
//! fixed-size chunks in a fixed order, so training stays bit-reproducible.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;

/// Elements per chunk of the scale-gradient reduction (fixed, for reproducibility).
const CHUNK: usize = 1 << 14;

/// How a tensor's elements map to scale and zero-point entries.
#[derive(Clone, Debug)]
pub struct QuantGrid {
    /// Elements sharing one scale entry in a row (`prod(dims[axis + 1..])`); unused
    /// for per-tensor.
    pub inner: usize,
    /// Scale entries: 1 (per tensor) or `dims[axis]`.
    pub channels: usize,
    /// Zero points, one or `channels` of them.
    pub zero_point: Vec<f64>,
    pub qmin: f64,
    pub qmax: f64,
}

impl QuantGrid {
    /// The grid for `dims`, per tensor (`axis = None`) or along `axis`.
    pub fn new(
        dims: &[usize],
        axis: Option<usize>,
        zero_point: Vec<f64>,
        qmin: f64,
        qmax: f64,
    ) -> Self {
        let (inner, channels) = match axis {
            Some(a) => (dims[a + 1..].iter().product(), dims[a]),
            None => (1, 1),
        };
        QuantGrid {
            inner: inner.max(1),
            channels,
            zero_point,
            qmin,
            qmax,
        }
    }

    fn channel(&self, i: usize) -> usize {
        if self.channels == 1 {
            0
        } else {
            (i / self.inner) % self.channels
        }
    }

    fn zero(&self, c: usize) -> f64 {
        if self.zero_point.len() == 1 {
            self.zero_point[0]
        } else {
            self.zero_point.get(c).copied().unwrap_or(0.0)
        }
    }

    /// The unclamped quantized value of `x` with scale `s` (division in `x`'s type).
    fn unclamped<T: Float>(&self, x: T, s: T, c: usize) -> f64 {
        (x / s).to_f64().round_ties_even() + self.zero(c)
    }
}

/// The float types the op runs on.
trait Float: candle_core::WithDType + std::ops::Div<Output = Self> {}
impl Float for f32 {}
impl Float for f64 {}

/// Fake-quantizes `x` (f32/f64 on the CPU) with `scale` (1-D, `grid.channels` elements);
/// differentiable in both.
pub fn fake_quantize(x: &Tensor, scale: &Tensor, grid: QuantGrid) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!("fake_quantize: f32 or f64 CPU operands")
    }
    if scale.elem_count() != grid.channels {
        bail!(
            "fake_quantize: {} scale entries for {} channels",
            scale.elem_count(),
            grid.channels
        )
    }
    let scale = scale.to_dtype(x.dtype())?.flatten_all()?.contiguous()?;
    x.contiguous()?.apply_op2(&scale, FakeQuant(grid))
}

fn forward<T: Float>(x: &[T], s: &[T], g: &QuantGrid) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(k, (o, x))| {
            for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                let c = g.channel(k * CHUNK + j);
                *o = T::from_f64(g.unclamped(x, s[c], c).clamp(g.qmin, g.qmax));
            }
        });
    out
}

/// `[dx.., ds..]`: the gradients of `x` and of the scale, packed in one vector.
fn backward<T: Float>(x: &[T], s: &[T], gy: &[T], g: &QuantGrid) -> Vec<T> {
    let mut dx = vec![T::zero(); x.len()];
    let partial: Vec<Vec<f64>> = dx
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
        .enumerate()
        .map(|(k, (dx, (x, gy)))| {
            let mut ds = vec![0f64; g.channels];
            for (j, ((dx, &x), &gy)) in dx.iter_mut().zip(x).zip(gy).enumerate() {
                let c = g.channel(k * CHUNK + j);
                let v = g.unclamped(x, s[c], c);
                if (g.qmin..=g.qmax).contains(&v) {
                    *dx = gy / s[c];
                    let sc = s[c].to_f64();
                    ds[c] -= gy.to_f64() * x.to_f64() / (sc * sc);
                }
            }
            ds
        })
        .collect();
    let mut ds = vec![0f64; g.channels];
    for p in partial {
        for (a, b) in ds.iter_mut().zip(p) {
            *a += b;
        }
    }
    dx.extend(ds.into_iter().map(T::from_f64));
    dx
}

/// `(x, scale) -> q`.
struct FakeQuant(QuantGrid);

impl CustomOp2 for FakeQuant {
    fn name(&self) -> &'static str {
        "amct-fake-quantize"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_float_storage!("fake_quantize", s1, |T| forward::<T>(
            contiguous_slice(s1, l1, "fake_quantize input")?,
            contiguous_slice(s2, l2, "fake_quantize scale")?,
            &self.0
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _q: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let packed = x.apply_op3_no_bwd(scale, &gy, &FakeQuantGrad(self.0.clone()))?;
        let n = x.elem_count();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        // A copy of the `channels` values: a view would keep the whole `packed` buffer (the
        // size of `x`) alive for as long as the gradient store holds this gradient.
        let ds = packed
            .narrow(0, n, self.0.channels)?
            .copy()?
            .reshape(scale.shape())?;
        Ok((Some(dx), Some(ds)))
    }
}

/// `(x, scale, gy) -> [dx.., dscale..]`.
struct FakeQuantGrad(QuantGrid);

impl CustomOp3 for FakeQuantGrad {
    fn name(&self) -> &'static str {
        "amct-fake-quantize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch_float_storage!("fake_quantize", s1, |T| backward::<T>(
            contiguous_slice(s1, l1, "fake_quantize input")?,
            contiguous_slice(s2, l2, "fake_quantize scale")?,
            contiguous_slice(s3, l3, "fake_quantize gradient")?,
            &self.0
        ));
        let len = l1.shape().elem_count() + self.0.channels;
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
#[path = "fake_quant_tests.rs"]
mod tests;
