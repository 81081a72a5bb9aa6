//! Errors raised while building, checking or rewriting a graph.

use thiserror::Error;

/// Graph-level errors; each names the offending node, value or tensor.
#[derive(Debug, Error)]
pub enum GraphError {
    #[error("tensor '{name}': {reason}")]
    BadTensor { name: String, reason: String },
    #[error("node {node}: {reason}")]
    BadNode { node: String, reason: String },
    #[error(
        "node {node} reads '{value}', which no node, input or initializer defines (dangling input)"
    )]
    DanglingInput { node: String, value: String },
    #[error("value '{value}' is defined more than once ({first} and {second})")]
    DuplicateDefinition {
        value: String,
        first: String,
        second: String,
    },
    #[error("graph has a cycle through node(s) {nodes}")]
    Cycle { nodes: String },
    #[error("graph output '{0}' is not produced by any node, input or initializer")]
    MissingOutput(String),
    #[error("value '{value}': shape mismatch: {reason}")]
    ShapeMismatch { value: String, reason: String },
}
