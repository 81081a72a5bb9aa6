//! `act(a + b)` for two f32 CPU tensors of one shape, in one pass on every thread: a residual
//! Add fused with the Relu that reads it, in forward-only runs (no backward: the executor fuses
//! Add only when gradients are not tracked). Elsewhere candle's add and activation run.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;
use super::conv2d::FusedActivation;

/// `Some(act(a + b))` when both are contiguous-able f32 CPU tensors of the same shape,
/// `None` otherwise (the caller falls back to candle's ops).
pub fn add_activate(a: &Tensor, b: &Tensor, act: FusedActivation) -> Result<Option<Tensor>> {
    let fits = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !fits(a) || !fits(b) || a.shape() != b.shape() {
        return Ok(None);
    }
    Ok(Some(
        a.contiguous()?
            .apply_op2_no_bwd(&b.contiguous()?, &AddAct(act))?,
    ))
}

struct AddAct(FusedActivation);

impl CustomOp2 for AddAct {
    fn name(&self) -> &'static str {
        "amct-add-activate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (lo, hi) = self.0.bounds();
        let (lo, hi) = (lo as f32, hi as f32);
        let (a, b) = (
            contiguous_slice::<f32>(s1, l1, "add_activate operand")?,
            contiguous_slice::<f32>(s2, l2, "add_activate operand")?,
        );
        let mut out = vec![0f32; a.len()];
        const CHUNK: usize = 1 << 15;
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    let v = a + b;
                    let v = if v < lo { lo } else { v };
                    *o = if v > hi { hi } else { v };
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_and_declines_what_it_cannot_do() -> Result<()> {
        let dev = &Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 40, 41), dev)?;
        let b = Tensor::randn(0f32, 1.0, (2, 3, 40, 41), dev)?;
        for (act, want) in [
            (FusedActivation::Relu, (&a + &b)?.relu()?),
            (
                FusedActivation::Clip(-0.5, 0.5),
                (&a + &b)?.clamp(-0.5, 0.5)?,
            ),
            (FusedActivation::None, (&a + &b)?),
        ] {
            let got = add_activate(&a, &b, act)?.expect("fused");
            let d = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "{act:?}");
        }
        let row = Tensor::randn(0f32, 1.0, (1, 3, 1, 1), dev)?;
        assert!(add_activate(&a, &row, FusedActivation::Relu)?.is_none()); // broadcasting
        let f64s = a.to_dtype(DType::F64)?;
        assert!(add_activate(&f64s, &f64s, FusedActivation::Relu)?.is_none());
        Ok(())
    }
}
