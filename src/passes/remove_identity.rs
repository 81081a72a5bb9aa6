//! `remove_identity`: Identity nodes and inference-mode Dropout removed.
//!
//! Matches ONNX-domain Identity, and Dropout whose mask output nothing reads
//! and which is in inference mode (no `training_mode` input or a constant
//! false one; `is_test = 1` before opset 7). With input `x` and output `y`:
//! - `y` not a graph output: readers of `y` read `x`;
//! - `y` a graph output: `x`'s producer writes `y` directly (graph output
//!   names never change), unless `x` is a graph input, an initializer or
//!   another graph output; then the node stays.
//!
//! Values read inside subgraphs are never renamed, so nodes touching them
//! stay, as do excluded nodes. Guarantees: outputs are computed the same.

use std::collections::HashSet;

use super::util;
use super::{is_excluded, PassResult};
use crate::graph::{Graph, Model, Node};

/// Removes every removable Identity/Dropout; returns how many.
pub fn remove_identity(model: &Model, exclude: &HashSet<String>) -> PassResult {
    let mut m = model.clone();
    let mut count = 0;
    while let Some(i) = find_removable(&m, exclude) {
        remove(&mut m.graph, i);
        count += 1;
    }
    util::tidy(&mut m);
    Ok((m, count))
}

fn is_passthrough(m: &Model, node: &Node, read: &dyn Fn(&str) -> usize) -> bool {
    if !node.is_onnx_domain() || node.input(0).is_none() || node.outputs.is_empty() {
        return false;
    }
    match node.op_type.as_str() {
        "Identity" => node.outputs.len() == 1,
        "Dropout" => {
            let mask_unused = node
                .outputs
                .iter()
                .skip(1)
                .all(|o| o.is_empty() || read(o) == 0);
            let inference = match node.input(2) {
                None => true,
                Some(name) => util::constant(m, name)
                    .and_then(|t| t.to_i64_vec())
                    .is_some_and(|v| v.iter().all(|&b| b == 0)),
            };
            let test_flag = m.onnx_opset() >= 7 || node.int_or("is_test", 0) != 0;
            mask_unused && inference && test_flag
        }
        _ => false,
    }
}

/// Index of the first node that can be removed now.
fn find_removable(m: &Model, exclude: &HashSet<String>) -> Option<usize> {
    let g = &m.graph;
    let readers = util::reader_counts(g);
    let read = |n: &str| readers.get(n).copied().unwrap_or(0);
    let captured = util::subgraph_refs(g);
    let outputs = util::output_names(g);
    let producers = g.producers();
    g.nodes.iter().enumerate().position(|(i, node)| {
        if is_excluded(exclude, node) || !is_passthrough(m, node, &read) {
            return false;
        }
        let (x, y) = (node.inputs[0].as_str(), node.outputs[0].as_str());
        if y.is_empty() || captured.contains(y) || captured.contains(x) {
            return false;
        }
        if !outputs.contains(y) {
            return true;
        }
        // y is a graph output: x's producer must be a node and x not itself an output.
        !outputs.contains(x) && producers.get(x).is_some_and(|&p| p != i)
    })
}

fn remove(g: &mut Graph, i: usize) {
    let node = g.nodes.remove(i);
    let (x, y) = (node.inputs[0].clone(), node.outputs[0].clone());
    let is_output = g.outputs.iter().any(|o| o.name == y);
    let (from, to) = if is_output { (&x, &y) } else { (&y, &x) };
    for n in &mut g.nodes {
        for name in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
            if name == from {
                *name = to.clone();
            }
        }
    }
}
