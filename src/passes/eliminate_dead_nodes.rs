//! `eliminate_dead_nodes`: nodes whose outputs reach no graph output are
//! removed, then initializers nothing reads.
//!
//! Liveness flows backwards from the graph outputs through node inputs and
//! the names a node's subgraphs read. Excluded nodes are kept (and keep
//! their inputs alive). Graph inputs are never removed: they are the
//! model's interface. Guarantees: graph outputs are computed the same.

use std::collections::HashSet;

use super::util;
use super::{is_excluded, PassError, PassResult};
use crate::graph::{topological_order, Model};

const PASS: &str = "eliminate_dead_nodes";

/// Removes dead nodes and unused initializers; returns the nodes removed.
pub fn eliminate_dead_nodes(model: &Model, exclude: &HashSet<String>) -> PassResult {
    let mut m = model.clone();
    let order = topological_order(&m.graph).map_err(PassError::graph(PASS))?;
    let mut live: HashSet<String> = util::output_names(&m.graph);
    let mut keep = vec![false; m.graph.nodes.len()];
    for &i in order.iter().rev() {
        let node = &m.graph.nodes[i];
        if !is_excluded(exclude, node) && !node.outputs.iter().any(|o| live.contains(o)) {
            continue;
        }
        keep[i] = true;
        live.extend(node.inputs.iter().filter(|s| !s.is_empty()).cloned());
        util::node_captures(node, &mut live);
    }
    let before = m.graph.nodes.len();
    let mut flags = keep.into_iter();
    m.graph.nodes.retain(|_| flags.next().unwrap_or(true));
    let removed = before - m.graph.nodes.len();
    util::tidy(&mut m);
    Ok((m, removed))
}
