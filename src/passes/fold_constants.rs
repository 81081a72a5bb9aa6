//! `fold_constants`: nodes whose outputs are known before the model runs
//! are replaced by their values.
//!
//! A node folds when all its inputs are constants (non-overridable
//! initializers, or values folded earlier in this pass): it is evaluated
//! alone with the executor. A node with non-constant inputs folds when
//! static shape inference, run from the graph inputs and initializers alone,
//! knows its integer outputs exactly (`Shape` of a value with a fully known
//! shape, and what is computed from it), which is what makes
//! `Reshape`/`Expand` targets constant. Recorded intermediate shapes
//! (`value_info`) are not trusted for this: exporters may trace them at one
//! batch size.
//!
//! Never folded: random ops, Dropout, (De)QuantizeLinear (folding would undo
//! quantization), nodes with subgraphs or in other domains, excluded nodes,
//! and outputs over [`MAX_ELEMENTS`] elements or that would blow small
//! inputs up into large tensors (more than [`GROWTH_FREE`] elements and over
//! twice the input elements). Ops the executor does not support are
//! skipped; other evaluation failures are errors naming the node. Folded
//! values become initializers; one that is a graph output becomes a
//! Constant node instead (graph outputs are produced by nodes), so output
//! names stay. The producers left without readers are removed by
//! `eliminate_dead_nodes`.

use std::collections::{HashMap, HashSet};

use candle_core::DType as CDType;

use super::util;
use super::{is_excluded, PassError, PassResult};
use crate::exec::{ExecError, ExecOptions, Executor};
use crate::graph::shape_infer::{infer_shapes, InferredShapes};
use crate::graph::tensor::numel_of;
use crate::graph::{topological_order, DType, Graph, Model, Node, Tensor, ValueInfo};
use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};

const PASS: &str = "fold_constants";

/// Largest folded output, in elements.
pub const MAX_ELEMENTS: usize = 16 << 20;
/// Outputs up to this many elements fold regardless of their inputs' size.
pub const GROWTH_FREE: usize = 1 << 16;

const NEVER: &[&str] = &[
    "Constant",
    "Dropout",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// Folds every node whose outputs are known; returns how many nodes folded.
pub fn fold_constants(model: &Model, exclude: &HashSet<String>) -> PassResult {
    let g = &model.graph;
    // Shapes derived from the graph inputs and initializers alone: recorded
    // intermediate shapes may be traced at one batch size and must not become
    // constants.
    let mut bare = model.clone();
    bare.graph.value_info.clear();
    bare.graph.outputs.iter_mut().for_each(|o| o.shape = None);
    let shapes = infer_shapes(&bare, &HashMap::new()).map_err(PassError::graph(PASS))?;
    let order = topological_order(g).map_err(PassError::graph(PASS))?;
    let mut known: HashMap<String, Tensor> = g
        .initializers
        .keys()
        .filter_map(|n| util::constant(model, n).map(|t| (n.clone(), t.clone())))
        .collect();
    let mut folded: HashMap<usize, Vec<Tensor>> = HashMap::new();
    for i in order {
        let node = &g.nodes[i];
        let candidate = node.is_onnx_domain()
            && !NEVER.contains(&node.op_type.as_str())
            && !node.has_subgraphs()
            && !is_excluded(exclude, node)
            && node.inputs.iter().any(|s| !s.is_empty())
            && node.outputs.iter().all(|s| !s.is_empty());
        if !candidate {
            continue;
        }
        let all_known = node
            .inputs
            .iter()
            .all(|s| s.is_empty() || known.contains_key(s));
        let values = match all_known {
            true => evaluate(model, node, &known, &shapes)?,
            false => None,
        };
        if let Some(values) = values.or_else(|| static_values(node, &shapes)) {
            for t in &values {
                known.insert(t.name.clone(), t.clone());
            }
            folded.insert(i, values);
        }
    }
    let count = folded.len();
    let mut m = model.clone();
    replace(&mut m.graph, folded);
    util::tidy(&mut m);
    Ok((m, count))
}

/// Outputs whose integer contents shape inference knows exactly.
fn static_values(node: &Node, shapes: &InferredShapes) -> Option<Vec<Tensor>> {
    node.outputs
        .iter()
        .map(|name| {
            let dtype = shapes.dtype(name).filter(|d| d.is_integer())?;
            let dims = shapes.known_shape(name)?;
            let ints: Option<Vec<i64>> =
                shapes.int_value(name)?.iter().map(|d| d.known()).collect();
            let ints = ints.filter(|v| Some(v.len()) == numel_of(&dims))?;
            util::int_tensor(name, dtype, dims, &ints)
        })
        .collect()
}

/// Runs `node` alone on its constant inputs; `None` when it should not fold.
fn evaluate(
    model: &Model,
    node: &Node,
    known: &HashMap<String, Tensor>,
    shapes: &InferredShapes,
) -> Result<Option<Vec<Tensor>>, PassError> {
    let inputs: Vec<&Tensor> = node.inputs.iter().filter_map(|s| known.get(s)).collect();
    if inputs
        .iter()
        .any(|t| !t.dtype.is_float() && !t.dtype.is_integer())
    {
        return Ok(None);
    }
    let in_elems: usize = inputs.iter().map(|t| t.numel()).sum();
    let fits = |n: usize| n <= MAX_ELEMENTS && (n <= GROWTH_FREE || n <= 2 * in_elems);
    let predicted = node
        .outputs
        .iter()
        .map(|o| shapes.known_shape(o).and_then(|d| numel_of(&d)));
    if predicted.into_iter().flatten().any(|n| !fits(n)) {
        return Ok(None);
    }
    let mut graph = Graph {
        name: "fold".into(),
        nodes: vec![node.clone()],
        outputs: node
            .outputs
            .iter()
            .map(|o| ValueInfo {
                name: o.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for t in &inputs {
        graph.initializers.insert(t.name.clone(), (*t).clone());
    }
    let tiny = Model {
        ir_version: model.ir_version,
        opsets: model.opsets.clone(),
        graph,
        ..Default::default()
    };
    let float = if inputs.iter().any(|t| t.dtype == DType::F64) {
        CDType::F64
    } else {
        CDType::F32
    };
    let options = ExecOptions {
        float,
        track_params: false,
        ..Default::default()
    };
    let run = Executor::new(&tiny, options).and_then(|e| e.run(&HashMap::new()));
    let values = match run {
        Ok(v) => v,
        Err(ExecError::Unsupported { .. }) => return Ok(None),
        Err(e) => {
            return Err(PassError::node(
                PASS,
                node,
                format!("evaluating constant inputs: {e}"),
            ))
        }
    };
    let tensors: Option<Vec<Tensor>> = node
        .outputs
        .iter()
        .zip(&values)
        .map(|(name, v)| util::value_to_tensor(name, v).filter(|t| fits(t.numel())))
        .collect();
    Ok(tensors.filter(|t| t.len() == node.outputs.len()))
}

/// Swaps folded nodes for initializers (Constant nodes for graph outputs).
fn replace(g: &mut Graph, mut folded: HashMap<usize, Vec<Tensor>>) {
    let outputs = util::output_names(g);
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, node) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        let Some(values) = folded.remove(&i) else {
            nodes.push(node);
            continue;
        };
        for t in values {
            if outputs.contains(&t.name) {
                nodes.push(constant_node(&node, t));
            } else {
                util::put_initializer(g, t);
            }
        }
    }
    g.nodes = nodes;
}

fn constant_node(from: &Node, t: Tensor) -> Node {
    let mut node = Node::new(&from.name, "Constant", &[], &[&t.name]);
    node.attributes.push(AttributeProto {
        name: Some("value".into()),
        t: Some(crate::onnx::tensor_to_proto(&t)),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    });
    node
}
