//! Errors raised by the rewrite passes; each names the pass and, where one
//! is involved, the node (`'name' (OpType)`).

use thiserror::Error;

use crate::graph::GraphError;

#[derive(Debug, Error)]
pub enum PassError {
    /// A node the pass matched is inconsistent (e.g. parameter sizes disagree).
    #[error("{pass}: node {node}: {reason}")]
    Node {
        pass: &'static str,
        node: String,
        reason: String,
    },
    /// The model a pass produced fails `verify_model`.
    #[error("{pass}: the rewritten model fails verification: {source}")]
    Verify {
        pass: &'static str,
        #[source]
        source: GraphError,
    },
    /// The input model could not be analysed (cycle, bad tensor, shape inference).
    #[error("{pass}: {source}")]
    Graph {
        pass: &'static str,
        #[source]
        source: GraphError,
    },
}

impl PassError {
    pub(crate) fn node(
        pass: &'static str,
        node: &crate::graph::Node,
        reason: impl Into<String>,
    ) -> Self {
        PassError::Node {
            pass,
            node: node.label(),
            reason: reason.into(),
        }
    }

    pub(crate) fn graph(pass: &'static str) -> impl Fn(GraphError) -> PassError {
        move |source| PassError::Graph { pass, source }
    }
}
