//! Inverted-residual block fusion for forward-only executors (MobileNetV2's building block):
//! `[Conv -> act] -> depthwise Conv [-> act] -> 1x1 Conv [-> Add residual] [-> act]`, where
//! the first Conv (the expansion) is a 1x1 one or any other ungrouped 2-D convolution (the
//! network's stem, before its first depthwise convolution), runs as one
//! `kernels::inverted_residual` call, which keeps the expanded activations in cache. It
//! builds on the Conv + activation plan (`fusion`): each convolution of the chain with its
//! fused activation is one link, and the next link must be the only reader of the previous
//! one's output.
//!
//! The plan names candidates only; a run still falls back to the separate (fused) nodes when
//! the caller watches or keeps an intermediate, or when the operands do not suit the kernel
//! (another device or float type, a small image: see `ops::conv_block`).

use std::collections::HashMap;

use super::fusion::Fusion;
use crate::exec::kernels::conv2d::FusedActivation;
use crate::graph::{Model, Node};

/// One fusable block; indices are positions in the executor's run order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BlockFusion {
    pub expand: Option<usize>,
    pub depthwise: usize,
    pub project: usize,
    /// After the expansion, the depthwise convolution, and the block (after the residual).
    pub activations: [FusedActivation; 3],
    /// The Add that joins the projection with a residual computed before the block, and
    /// which of its inputs is the residual.
    pub residual: Option<(usize, usize)>,
    /// Every node the block runs apart from its first, in run order.
    pub absorbed: Vec<usize>,
    /// The values the block never produces (wanted by no caller for it to run fused).
    pub unproduced: Vec<String>,
    /// The value the block produces.
    pub output: String,
}

impl BlockFusion {
    /// The node that runs the block (the expansion, or the depthwise convolution).
    pub fn first(&self) -> usize {
        self.expand.unwrap_or(self.depthwise)
    }
}

/// The fusable blocks, by the position of their first node. `fusions` is the Conv +
/// activation plan for the same nodes.
pub(super) fn plan(
    model: &Model,
    nodes: &[Node],
    fusions: &[Option<Fusion>],
    trainable: bool,
) -> Vec<Option<BlockFusion>> {
    let mut blocks = vec![None; nodes.len()];
    if trainable {
        return blocks;
    }
    let graph = &model.graph;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut produced_at: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for input in node.inputs.iter().filter(|s| !s.is_empty()) {
            readers.entry(input).or_default().push(i);
        }
        for o in &node.outputs {
            produced_at.insert(o, i);
        }
    }
    let is_output = |name: &str| graph.outputs.iter().any(|o| o.name == name);
    // The only reader of `value`, reading it as its data input.
    let sole_reader = |value: &str| -> Option<usize> {
        let [reader] = readers.get(value)?.as_slice() else {
            return None;
        };
        let data = nodes[*reader].inputs.first().map(String::as_str) == Some(value);
        (!is_output(value) && data).then_some(*reader)
    };
    // The weight dims of a Conv whose weight (and bias) are initializers.
    let weight_dims = |node: &Node| -> Option<Vec<i64>> {
        let w = graph.initializers.get(node.inputs.get(1)?)?;
        let bias_ok = match node.inputs.get(2).map(String::as_str) {
            None | Some("") => true,
            Some(b) => graph.initializers.contains_key(b),
        };
        (node.op_type == "Conv" && node.outputs.len() == 1 && bias_ok).then(|| w.dims.clone())
    };
    let all = |node: &Node, name: &str, value: i64| {
        node.attr_ints(name)
            .is_none_or(|v| v.iter().all(|&x| x == value))
    };
    let ungrouped = |node: &Node| {
        weight_dims(node).is_some_and(|d| d.len() == 4) && node.int_or("group", 1) == 1
    };
    let pointwise = |node: &Node| {
        weight_dims(node).is_some_and(|d| d.len() == 4 && d[2] == 1 && d[3] == 1)
            && node.int_or("group", 1) == 1
            && all(node, "strides", 1)
            && all(node, "pads", 0)
    };
    let depthwise = |node: &Node| {
        weight_dims(node).is_some_and(|d| {
            d.len() == 4 && d[0] > 1 && d[1] == 1 && node.int_or("group", 1) == d[0]
        })
    };
    let mut claimed = vec![false; nodes.len()];
    for first in 0..nodes.len() {
        if claimed[first] {
            continue;
        }
        let Some(block) = block_at(
            first,
            nodes,
            fusions,
            &sole_reader,
            [&ungrouped, &depthwise, &pointwise],
        ) else {
            continue;
        };
        let block = match block.residual {
            // The residual must exist when the block runs, at its first node.
            Some((add, slot)) => {
                let r = nodes[add].inputs[slot].as_str();
                let ready = produced_at.get(r).is_none_or(|&p| p < first);
                if !ready {
                    continue;
                }
                block
            }
            None => block,
        };
        for &a in &block.absorbed {
            claimed[a] = true;
        }
        blocks[first] = Some(block);
    }
    blocks
}

type Check<'a> = &'a dyn Fn(&Node) -> bool;

/// The block that starts at node `first`, if one does.
fn block_at(
    first: usize,
    nodes: &[Node],
    fusions: &[Option<Fusion>],
    sole_reader: &dyn Fn(&str) -> Option<usize>,
    [expansion, depthwise, pointwise]: [Check; 3],
) -> Option<BlockFusion> {
    let out = |i: usize| nodes[i].outputs[0].clone();
    let (mut absorbed, mut unproduced) = (Vec::new(), Vec::new());
    // Node `i` with its fused activation (no residual): the activation, and the only
    // reader of the result, which must be the next convolution of the block.
    let mut follow = |i: usize| -> Option<(FusedActivation, usize)> {
        let (last, act) = match fusions[i] {
            None => (i, FusedActivation::None),
            Some(f) if f.residual.is_none() => (f.consumer, f.activation),
            Some(_) => return None,
        };
        unproduced.push(out(i));
        if last != i {
            absorbed.push(last);
            unproduced.push(out(last));
        }
        let next = sole_reader(&nodes[last].outputs[0])?;
        absorbed.push(next);
        Some((act, next))
    };
    let (expand, expand_act, dw) = if expansion(&nodes[first]) {
        let (act, dw) = follow(first)?;
        (Some(first), act, dw)
    } else {
        (None, FusedActivation::None, first)
    };
    if !depthwise(&nodes[dw]) {
        return None;
    }
    let (dw_act, project) = follow(dw)?;
    if !pointwise(&nodes[project]) {
        return None;
    }
    // The projection keeps its own fusion: a residual Add and an activation.
    let (residual, end, act) = match fusions[project] {
        None => (None, project, FusedActivation::None),
        Some(f) => (f.residual, f.consumer, f.activation),
    };
    if end != project {
        unproduced.push(out(project));
        absorbed.push(end);
    }
    if let Some((add, _)) = residual.filter(|&(add, _)| add != end) {
        absorbed.push(add);
        unproduced.push(out(add));
    }
    Some(BlockFusion {
        expand,
        depthwise: dw,
        project,
        activations: [expand_act, dw_act, act],
        residual,
        absorbed,
        unproduced,
        output: out(end),
    })
}

#[cfg(test)]
#[path = "block_fusion_tests.rs"]
mod tests;
