//! amct's own candle custom ops, each with forward and backward.

pub mod add_act;
pub mod batch_norm;
pub mod conv2d;
mod conv2d_gemm;
pub mod depthwise;
pub mod pool2d;
#[cfg(test)]
mod test_util;

use candle_core::{DType, Result, Tensor};
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
