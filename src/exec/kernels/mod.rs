//! amct's own candle custom ops, each with forward and backward.

pub mod conv2d;
mod conv2d_gemm;
pub mod depthwise;
pub mod pool2d;
