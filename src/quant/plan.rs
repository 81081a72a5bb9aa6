//! Which nodes are quantized and where Q/DQ pairs go. Weighted layers
//! (Conv, ConvTranspose, Gemm, MatMul with a constant weight) get their
//! weight quantized; their activation inputs and outputs get Q/DQ, with a
//! following Relu/Clip folded into the output (so onnxruntime fuses the
//! pattern into one integer kernel). Pool/Add/Concat partners get Q/DQ on
//! inputs and output; shape-only ops (MaxPool, Reshape, Flatten, ...) share
//! their input's parameters so the integer path runs through them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::graph::shape_infer::{infer_shapes, InferredShapes};
use crate::graph::{Graph, Model};
use crate::recipe::{LayerConfig, QuantizeParams};

/// A node whose weight is quantized.
#[derive(Debug, Clone)]
pub struct WeightLayer {
    pub node: usize,
    pub name: String,
    pub op_type: String,
    /// Input index of the weight and of the bias, if any.
    pub weight: usize,
    pub bias: Option<usize>,
    /// Output-channel axis of the weight.
    pub axis: usize,
    /// The activation input whose scale the bias scale derives from.
    pub activation: String,
    pub config: LayerConfig,
}

/// What to quantize in a graph.
#[derive(Debug, Clone, Default)]
pub struct QuantPlan {
    pub layers: Vec<WeightLayer>,
    /// Activation tensors with Q/DQ, each with the settings it is calibrated with.
    pub activations: BTreeMap<String, LayerConfig>,
    /// Tensors that reuse another tensor's parameters (output -> input of a shape-only op).
    pub ties: BTreeMap<String, String>,
    /// Quantizable nodes left in float, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Names of every node quantized (weighted layers and partners).
    pub quantized_nodes: BTreeSet<String>,
}

impl QuantPlan {
    /// The tensor whose observed range a tensor uses.
    pub fn representative<'a>(&'a self, name: &'a str) -> &'a str {
        let mut n = name;
        while let Some(next) = self.ties.get(n) {
            n = next;
        }
        n
    }
}

const WEIGHTED: &[&str] = &["Conv", "ConvTranspose", "Gemm", "MatMul"];
const PARTNERS: &[&str] = &["Add", "AveragePool", "GlobalAveragePool", "Concat", "Mul"];
const SHAPE_ONLY: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];
/// Activations folded into the preceding layer's output.
const FOLDED_ACTIVATIONS: &[&str] = &["Relu", "Clip"];

/// Plans quantization of `model` under `params`; `extra_skips` are node
/// names kept in float in addition to the recipe's (used by rollback).
pub fn plan(model: &Model, params: &QuantizeParams, extra_skips: &BTreeSet<String>) -> QuantPlan {
    let g = &model.graph;
    let consumers = g.consumers();
    let is_const = |t: &str| g.initializers.contains_key(t);
    let types = infer_shapes(model, &HashMap::new()).ok();
    let is_float = |t: &str| tensor_is_float(g, types.as_ref(), t);
    let enabled = |op: &str| params.ops.iter().any(|o| o == op);
    let mut plan = QuantPlan::default();
    let mut wants: Vec<(String, LayerConfig)> = Vec::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let op = node.op_type.as_str();
        if !node.is_onnx_domain() || !(WEIGHTED.contains(&op) || PARTNERS.contains(&op)) {
            continue;
        }
        if !enabled(op) {
            continue;
        }
        if params.skipped(&node.name, op) || extra_skips.contains(&node.name) {
            plan.skipped
                .push((node.label(), "skipped by the recipe".into()));
            continue;
        }
        let config = params.layer(&node.name, op).clone();
        let weighted = match weight_of(g, i) {
            Some(w) => Some(w),
            None if WEIGHTED.contains(&op) => {
                let acts = op == "MatMul"
                    && params.activation_matmul
                    && node.inputs.iter().all(|t| !is_const(t) && is_float(t));
                if !acts {
                    plan.skipped.push((
                        node.label(),
                        "no constant float weight of a supported layout".into(),
                    ));
                    continue;
                }
                None
            }
            None => None,
        };
        // Weighted layers read their activation at input 0; partners at every input.
        let act_inputs: Vec<&String> = node
            .inputs
            .iter()
            .enumerate()
            .filter(|(k, t)| !t.is_empty() && (weighted.is_none() || *k == 0))
            .map(|(_, t)| t)
            .collect();
        if act_inputs.is_empty()
            || act_inputs.iter().any(|t| is_const(t) || !is_float(t))
            || !node.outputs.first().is_some_and(|o| is_float(o))
        {
            plan.skipped
                .push((node.label(), "inputs are not all float activations".into()));
            continue;
        }
        if op == "Gemm" && node.int_or("transA", 0) != 0 {
            plan.skipped.push((node.label(), "Gemm with transA".into()));
            continue;
        }
        for t in &act_inputs {
            wants.push((t.to_string(), config.clone()));
        }
        // A graph output stays float: integer kernels write float outputs
        // directly, and the model's result keeps its precision.
        let out = folded_output(g, &consumers, i);
        if !g.outputs.iter().any(|o| o.name == out) {
            wants.push((out, config.clone()));
        }
        if let Some((w, b, axis)) = weighted {
            plan.layers.push(WeightLayer {
                node: i,
                name: node.name.clone(),
                op_type: op.to_string(),
                weight: w,
                bias: b,
                axis,
                activation: node.inputs[0].clone(),
                config,
            });
        }
        plan.quantized_nodes.insert(node.name.clone());
    }
    for (t, config) in wants {
        plan.activations.entry(t).or_insert(config);
    }
    tie_shape_only_ops(g, types.as_ref(), &mut plan);
    plan
}

/// (weight input, bias input, output-channel axis) of a weighted node.
fn weight_of(g: &Graph, i: usize) -> Option<(usize, Option<usize>, usize)> {
    let node = &g.nodes[i];
    let w = g.initializers.get(node.inputs.get(1)?)?;
    if !w.dtype.is_float() {
        return None;
    }
    let rank = w.dims.len();
    let bias = node
        .inputs
        .get(2)
        .filter(|b| !b.is_empty())
        .and_then(|b| g.initializers.get(b))
        .filter(|b| b.dtype.is_float() && b.dims.len() == 1)
        .map(|_| 2);
    match node.op_type.as_str() {
        "Conv" if rank >= 3 => Some((1, bias, 0)),
        "ConvTranspose" if rank >= 3 && node.int_or("group", 1) == 1 => Some((1, bias, 1)),
        "Gemm" if rank == 2 => {
            // A Gemm bias must be per output column to be quantized with it.
            let n = if node.int_or("transB", 0) != 0 {
                w.dims[0]
            } else {
                w.dims[1]
            };
            let bias = bias.filter(|_| {
                g.initializers
                    .get(&node.inputs[2])
                    .is_some_and(|b| b.dims == [n])
            });
            let axis = if node.int_or("transB", 0) != 0 { 0 } else { 1 };
            if node.inputs.len() > 2 && !node.inputs[2].is_empty() && bias.is_none() {
                return None;
            }
            Some((1, bias, axis))
        }
        "MatMul" if rank == 2 => Some((1, None, 1)),
        _ => None,
    }
}

/// The tensor that carries a layer's output: past a sole Relu/Clip consumer.
fn folded_output(g: &Graph, consumers: &HashMap<&str, Vec<usize>>, i: usize) -> String {
    let out = &g.nodes[i].outputs[0];
    let is_graph_output = g.outputs.iter().any(|o| &o.name == out);
    if let Some([only]) = consumers.get(out.as_str()).map(Vec::as_slice) {
        let next = &g.nodes[*only];
        let clip_ok = next.op_type != "Clip"
            || next
                .inputs
                .iter()
                .skip(1)
                .all(|t| t.is_empty() || g.initializers.contains_key(t));
        if !is_graph_output
            && next.is_onnx_domain()
            && FOLDED_ACTIVATIONS.contains(&next.op_type.as_str())
            && clip_ok
        {
            return next.outputs[0].clone();
        }
    }
    out.clone()
}

/// Shape-only ops whose output is quantized pass the integer tensor
/// through: their input gets Q/DQ with the same parameters.
fn tie_shape_only_ops(g: &Graph, types: Option<&InferredShapes>, plan: &mut QuantPlan) {
    loop {
        let mut changed = false;
        for node in &g.nodes {
            if !node.is_onnx_domain() || !SHAPE_ONLY.contains(&node.op_type.as_str()) {
                continue;
            }
            let (Some(input), Some(output)) = (node.inputs.first(), node.outputs.first()) else {
                continue;
            };
            if node.outputs.len() > 1 && node.outputs[1..].iter().any(|o| !o.is_empty()) {
                continue; // MaxPool with indices
            }
            if plan.ties.contains_key(output) || g.initializers.contains_key(input) {
                continue;
            }
            let Some(config) = plan.activations.get(output).cloned() else {
                continue;
            };
            if !tensor_is_float(g, types, input) {
                continue;
            }
            plan.activations.entry(input.clone()).or_insert(config);
            plan.ties.insert(output.clone(), input.clone());
            plan.quantized_nodes.insert(node.name.clone());
            changed = true;
        }
        if !changed {
            break;
        }
    }
}

/// Whether a tensor is float, from initializers, inferred types or value
/// infos; tensors of unknown type are left alone.
fn tensor_is_float(g: &Graph, types: Option<&InferredShapes>, name: &str) -> bool {
    if let Some(t) = g.initializers.get(name) {
        return t.dtype.is_float();
    }
    types
        .and_then(|t| t.dtype(name))
        .or_else(|| g.value_info(name).and_then(|v| v.dtype))
        .is_some_and(|d| d.is_float())
}
