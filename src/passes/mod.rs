//! Exact graph rewrites: each pass is a function from model to model with no
//! I/O that computes the same outputs, returns how many rewrites it made, and
//! never touches nodes the caller excludes by name. `fuse_pipeline` chains
//! them for the `fuse` stage and runs `verify_model` after every pass.
//!
//! | pass | rewrite |
//! |------|---------|
//! | [`constants_to_initializers`] | Constant nodes → initializers |
//! | [`remove_identity`] | Identity / inference Dropout removed, readers rewired |
//! | [`fold_constants`] | nodes computable ahead of time → initializers |
//! | [`fold_batch_norm`] | BatchNormalization folded into Conv/ConvTranspose/Gemm weights |
//! | [`eliminate_dead_nodes`] | nodes reaching no graph output, unused initializers removed |

mod bn_math;
mod constants_to_initializers;
mod eliminate_dead_nodes;
mod error;
mod fold_batch_norm;
mod fold_constants;
mod pipeline;
mod remove_identity;
mod upgrade_opset;
mod util;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;

pub use constants_to_initializers::constants_to_initializers;
pub use eliminate_dead_nodes::eliminate_dead_nodes;
pub use error::PassError;
pub use fold_batch_norm::fold_batch_norm;
pub use fold_constants::fold_constants;
pub use pipeline::{fuse_pipeline, FuseOptions, FuseReport, PassCount};
pub use remove_identity::remove_identity;
pub use upgrade_opset::{upgrade_opset, TARGET_OPSET};
pub(crate) use util::{tidy, NameGen};

/// What a pass returns: the rewritten model and the number of rewrites made.
pub type PassResult = Result<(crate::graph::Model, usize), PassError>;

/// True when `node` is named in the exclusion list (unnamed nodes never are).
pub(crate) fn is_excluded(exclude: &HashSet<String>, node: &crate::graph::Node) -> bool {
    !node.name.is_empty() && exclude.contains(&node.name)
}
