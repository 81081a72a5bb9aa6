//! The ONNX file layer amct owns: protobuf types generated from a pinned
//! `onnx.proto` (see `scripts/gen_onnx_proto.sh`), and conversion between
//! files and the graph IR, external data included.

mod error;
mod export;
mod import;
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;
mod sparse;
mod tensor_io;
mod value_io;

pub use error::OnnxError;
pub use export::{model_to_proto, save_model, ExportOptions};
pub use import::{load_model, model_from_bytes, model_from_proto};
pub use sparse::sparse_to_dense;
pub use tensor_io::{tensor_from_proto, tensor_to_proto};
