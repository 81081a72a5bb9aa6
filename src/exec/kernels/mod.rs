//! amct's own candle custom ops, each with forward and backward.

/// Runs `$body` with `$t` the float type of the CPU storage `$s` (f32 or f64) and wraps
/// the `Vec` it returns back into that storage type; other types are an error naming `$op`.
/// Defined before the modules below so that they can use it.
macro_rules! dispatch_float_storage {
    ($op:expr, $s:expr, |$t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                CpuStorage::F64($body)
            }
            other => bail!("{}: f32 or f64 operands, got {:?}", $op, other.dtype()),
        }
    };
}

pub mod add_act;
pub mod batch_norm;
pub mod conv2d;
mod conv2d_gemm;
mod conv2d_sgemm;
mod conv2d_winograd;
pub mod depthwise;
pub mod fake_quant;
pub mod inverted_residual;
pub mod pool2d;
pub mod relu;
mod sgemm;
mod sgemm_avx2;
mod sgemm_pack;
#[cfg(test)]
mod sgemm_tests;
#[cfg(test)]
mod test_util;
#[cfg(target_arch = "x86_64")]
mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_grad_w;
#[cfg(all(test, target_arch = "x86_64"))]
mod winograd_tests;

use candle_core::{bail, CpuStorage, DType, Layout, Result, Tensor, WithDType};
use conv2d::FusedActivation;

/// The output gradient `gy` of a fused activation with output `y`, passed only where `y` lies
/// strictly inside the activation's range (contiguous, ready for the gradient kernels).
fn mask_by_activation(act: FusedActivation, y: &Tensor, gy: &Tensor) -> Result<Tensor> {
    let inside = match act {
        FusedActivation::None => return gy.contiguous(),
        FusedActivation::Relu => y.gt(0.0)?,
        FusedActivation::Clip(lo, hi) => (y.gt(lo)?.to_dtype(DType::U8)? * y.lt(hi)?)?,
    };
    inside.where_cond(gy, &gy.zeros_like()?)?.contiguous()
}

/// The data of a contiguous CPU operand (the ops make their operands contiguous first);
/// `what` names the operand in the error.
fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) if b <= all.len() => Ok(&all[a..b]),
        _ => bail!("{what} is not contiguous"),
    }
}
