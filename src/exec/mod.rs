//! The executor: runs the graph IR on candle tensors, on CPU or CUDA.
//!
//! Float initializers are held as candle `Var`s so training stages can read
//! their gradients and update them; everything is computed with
//! differentiable candle ops or amct's custom ops that define a backward.

mod block_fusion;
mod error;
mod executor;
mod fusion;
pub mod kernels;
pub mod npz;
pub mod ops;
mod value;

pub use error::{ExecError, Result};
pub use executor::{ExecOptions, Executor, NodeTime};
pub use value::{storage_dtype, with_f32_slice, Value};

/// Parses a device name: "cpu", "cuda" or "cuda:N".
pub fn parse_device(name: &str) -> Result<candle_core::Device> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => Ok(candle_core::Device::new_cuda(0)?),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Ok(candle_core::Device::new_cuda(n)?),
            None => Err(ExecError::Input {
                name: "--device".into(),
                reason: format!("unknown device '{other}' (expected cpu, cuda or cuda:N)"),
            }),
        },
    }
}
