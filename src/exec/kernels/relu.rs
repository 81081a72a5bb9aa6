//! Relu on f32 CPU tensors as a candle custom op whose backward is one pass
//! (`gx = gy where y > 0, else 0`, the convention of PyTorch and of amct's fused conv
//! activations). candle's own backward for `relu` compares, converts the mask to floats,
//! multiplies and allocates a zero tensor on the way: four passes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `max(x, 0)` with the one-pass backward for f32 CPU tensors; candle's `relu` elsewhere.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "amct-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice::<f32>(s, l, "relu operand")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.max(0.0)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&gy.contiguous()?, &ReluGrad)?))
    }
}

/// `(y, gy) -> gy where y > 0, else 0`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "amct-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_slice::<f32>(s1, l1, "relu output")?;
        let gy = contiguous_slice::<f32>(s2, l2, "relu output gradient")?;
        if y.len() != gy.len() {
            candle_core::bail!("relu backward: {} outputs, {} gradients", y.len(), gy.len())
        }
        let mut gx = vec![0f32; y.len()];
        gx.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK).zip(gy.par_chunks(CHUNK)))
            .for_each(|(gx, (y, gy))| {
                for ((gx, &y), &g) in gx.iter_mut().zip(y).zip(gy) {
                    *gx = if y > 0.0 { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn values_and_gradient_match_the_definition() -> Result<()> {
        let xs = [-2.0f32, -0.0, 0.0, 0.5, 3.0, f32::MIN_POSITIVE, -1e-30, 7.0];
        let x = Var::from_tensor(&Tensor::new(&xs[..], &Device::Cpu)?.reshape((2, 4))?)?;
        let y = relu(x.as_tensor())?;
        let want: Vec<f32> = xs.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want);
        let w = Tensor::new(&[1f32, 2., 3., 4., 5., 6., 7., 8.], &Device::Cpu)?.reshape((2, 4))?;
        let grads = (y * &w)?.sum_all()?.backward()?;
        let gx = grads.get(&x).expect("a gradient for x");
        let want: Vec<f32> = xs
            .iter()
            .zip(1..)
            .map(|(&v, k)| if v > 0.0 { k as f32 } else { 0.0 })
            .collect();
        assert_eq!(gx.flatten_all()?.to_vec1::<f32>()?, want);
        Ok(())
    }

    #[test]
    fn non_contiguous_input_and_other_dtypes() -> Result<()> {
        let x = Tensor::arange(-6f32, 6., &Device::Cpu)?
            .reshape((3, 4))?
            .t()?;
        let y = relu(&x)?;
        assert_eq!(y.to_vec2::<f32>()?, x.relu()?.to_vec2::<f32>()?);
        let x64 = x.to_dtype(DType::F64)?;
        assert_eq!(relu(&x64)?.to_vec2::<f64>()?, x64.relu()?.to_vec2::<f64>()?);
        Ok(())
    }
}
