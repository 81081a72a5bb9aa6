//! amct: a model compression toolkit for ONNX models.
//!
//! Layers, bottom up: `onnx` (file I/O), `graph` (the IR), `exec` (the candle
//! executor), `inspect` (model statistics); the binary in `main.rs` wires
//! them to the command line.

pub mod bench;
pub mod data;
pub mod exec;
pub mod graph;
pub mod inspect;
pub mod onnx;
pub mod op_profile;
pub mod passes;
pub mod process_tuning;
pub mod progress;
pub mod quant;
pub mod recipe;
pub mod report;
pub mod scheduler;
pub mod stages;
pub mod train;

/// The library's unit tests allocate as the binary does (`main.rs`), so that the timing
/// probes among them measure what a run sees.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
