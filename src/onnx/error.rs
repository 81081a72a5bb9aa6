//! Errors from reading and writing ONNX files; each names the file.

use std::path::PathBuf;

use thiserror::Error;

use crate::graph::GraphError;

#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("cannot read '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{path}' is not a valid ONNX model: protobuf decode failed ({source}); the file is truncated, corrupt or not ONNX")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("'{path}' is not a valid ONNX model: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    #[error("'{path}': {source}")]
    Graph { path: PathBuf, source: GraphError },
}
