//! `constants_to_initializers`: Constant nodes become initializers.
//!
//! Matches Constant nodes of the ONNX domain with one output holding a dense
//! `value` tensor or a `value_float(s)` / `value_int(s)` attribute. The
//! initializer takes the node's output name, so readers are unchanged.
//! Kept as nodes: constants whose output is a graph output (an ONNX graph
//! output should be produced by a node), sparse and string forms, and
//! excluded nodes. Import already does this; the pass catches Constant nodes
//! that later rewrites introduce.

use std::collections::HashSet;

use super::util;
use super::{is_excluded, PassError, PassResult};
use crate::graph::{Model, Node, Tensor};

const PASS: &str = "constants_to_initializers";

/// Moves every convertible Constant node into the initializers.
pub fn constants_to_initializers(model: &Model, exclude: &HashSet<String>) -> PassResult {
    let mut m = model.clone();
    let outputs = util::output_names(&m.graph);
    let mut kept = Vec::with_capacity(m.graph.nodes.len());
    let mut count = 0;
    for node in std::mem::take(&mut m.graph.nodes) {
        let convertible = node.op_type == "Constant"
            && node.is_onnx_domain()
            && node.outputs.len() == 1
            && !node.outputs[0].is_empty()
            && !outputs.contains(&node.outputs[0])
            && !m.graph.initializers.contains_key(&node.outputs[0])
            && !is_excluded(exclude, &node);
        match convertible.then(|| value(&node)).transpose()?.flatten() {
            Some(mut tensor) => {
                tensor.name = node.outputs[0].clone();
                util::put_initializer(&mut m.graph, tensor);
                count += 1;
            }
            None => kept.push(node),
        }
    }
    m.graph.nodes = kept;
    Ok((m, count))
}

/// The tensor a Constant node produces, `None` for forms kept as nodes.
fn value(node: &Node) -> Result<Option<Tensor>, PassError> {
    let name = node.outputs[0].as_str();
    let bad = |e: crate::graph::GraphError| PassError::node(PASS, node, e.to_string());
    if let Some(t) = node.attr_tensor("value").map_err(bad)? {
        return Ok(t.raw().is_some().then_some(t));
    }
    let t = if let Some(v) = node.attr("value_float").and_then(|a| a.f) {
        Tensor::from_f32(name, vec![], &[v])
    } else if let Some(a) = node.attr("value_floats") {
        Tensor::from_f32(name, vec![a.floats.len() as i64], &a.floats)
    } else if let Some(v) = node.attr("value_int").and_then(|a| a.i) {
        Tensor::from_i64(name, vec![], &[v])
    } else if let Some(a) = node.attr("value_ints") {
        Tensor::from_i64(name, vec![a.ints.len() as i64], &a.ints)
    } else {
        return Ok(None);
    };
    t.map(Some).map_err(bad)
}
