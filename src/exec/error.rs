//! Executor errors; each names the node (and op type) or the input involved.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("node {node}: op '{op_type}' is not supported by amct's executor: {reason}")]
    Unsupported {
        node: String,
        op_type: String,
        reason: String,
    },
    #[error("node {node}: {reason}")]
    Op { node: String, reason: String },
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error("value '{0}' was not computed (internal: missing from the environment)")]
    Missing(String),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExecError>;
