//! The `fuse` stage's pass pipeline: Constant nodes → initializers, identity
//! removal, constant folding, batch-norm folding, dead-node removal,
//! repeated (at most [`MAX_ROUNDS`] times) while a round still rewrites
//! something. `verify_model` runs after every pass; a failure names the pass.

use std::collections::HashSet;

use serde::Serialize;

use super::{
    constants_to_initializers, eliminate_dead_nodes, fold_batch_norm, fold_constants,
    remove_identity, PassError, PassResult,
};
use crate::graph::{verify_model, Model};

/// Upper bound on pipeline rounds.
pub const MAX_ROUNDS: usize = 4;

/// Which rewrites the pipeline runs. Constant conversion, identity removal
/// and dead-node removal always run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    pub fold_batch_norm: bool,
    pub fold_constants: bool,
    /// Names of nodes never rewritten, folded or removed.
    pub exclude: Vec<String>,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            fold_batch_norm: true,
            fold_constants: true,
            exclude: Vec::new(),
        }
    }
}

/// Rewrites made by one pass, summed over rounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassCount {
    pub pass: String,
    pub rewrites: usize,
}

/// What the pipeline did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FuseReport {
    /// One entry per pass that ran, in pipeline order.
    pub passes: Vec<PassCount>,
    pub rounds: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub initializers_before: usize,
    pub initializers_after: usize,
}

impl FuseReport {
    /// Rewrites made by the pass called `pass` (0 if it did not run).
    pub fn count(&self, pass: &str) -> usize {
        self.passes
            .iter()
            .find(|p| p.pass == pass)
            .map_or(0, |p| p.rewrites)
    }

    fn add(&mut self, pass: &str, n: usize) {
        match self.passes.iter_mut().find(|p| p.pass == pass) {
            Some(p) => p.rewrites += n,
            None => self.passes.push(PassCount {
                pass: pass.to_string(),
                rewrites: n,
            }),
        }
    }
}

type Pass = fn(&Model, &HashSet<String>) -> PassResult;

/// Runs the fuse passes on `model`; the result computes the same outputs.
pub fn fuse_pipeline(
    model: &Model,
    options: &FuseOptions,
) -> Result<(Model, FuseReport), PassError> {
    let exclude: HashSet<String> = options.exclude.iter().cloned().collect();
    let mut passes: Vec<(&'static str, Pass)> = vec![
        ("constants_to_initializers", constants_to_initializers),
        ("remove_identity", remove_identity),
    ];
    if options.fold_constants {
        passes.push(("fold_constants", fold_constants));
    }
    passes.push(("eliminate_dead_nodes", eliminate_dead_nodes));
    if options.fold_batch_norm {
        passes.push(("fold_batch_norm", fold_batch_norm));
    }
    let mut report = FuseReport {
        nodes_before: model.graph.nodes.len(),
        initializers_before: model.graph.initializers.len(),
        ..Default::default()
    };
    let mut current = model.clone();
    while report.rounds < MAX_ROUNDS {
        report.rounds += 1;
        let mut changed = 0;
        for &(name, pass) in &passes {
            let (next, n) = pass(&current, &exclude)?;
            verify_model(&next).map_err(|source| PassError::Verify { pass: name, source })?;
            report.add(name, n);
            changed += n;
            current = next;
        }
        if changed == 0 {
            break;
        }
    }
    let (last, n) = eliminate_dead_nodes(&current, &exclude)?;
    verify_model(&last).map_err(|source| PassError::Verify {
        pass: "eliminate_dead_nodes",
        source,
    })?;
    report.add("eliminate_dead_nodes", n);
    report.nodes_after = last.graph.nodes.len();
    report.initializers_after = last.graph.initializers.len();
    Ok((last, report))
}
