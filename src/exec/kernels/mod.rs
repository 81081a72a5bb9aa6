//! amct's own candle custom ops, each with forward and backward.

pub mod depthwise;
pub mod pool2d;
