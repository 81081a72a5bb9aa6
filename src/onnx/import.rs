//! Import: ONNX file → graph IR, in explicit phases.
//!
//! 1. read and decode the protobuf (errors name the file);
//! 2. convert every field (tensors decoded, external data read);
//! 3. normalize what exporters produce: Constant nodes holding tensors become
//!    initializers, initializers listed among graph inputs (IR 3) are taken
//!    out of the input list (kept as overridable so export restores them);
//! 4. `verify` the result.
//!
//! Unknown ops are kept as opaque nodes with every attribute.

use std::collections::HashSet;
use std::path::Path;

use prost::Message;

use super::proto::{GraphProto, ModelProto, NodeProto};
use super::tensor_io::tensor_from_proto;
use super::value_io::{entries_from_proto, value_info_from_proto};
use super::OnnxError;
use crate::graph::{verify, verify_model, Graph, Model, Node, OpsetId, Tensor};

/// Reads, decodes, normalizes and verifies a model file.
pub fn load_model(path: &Path) -> Result<Model, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    model_from_bytes(&bytes, path)
}

/// Decodes model bytes; `path` names the file in errors and locates external data.
pub fn model_from_bytes(bytes: &[u8], path: &Path) -> Result<Model, OnnxError> {
    if bytes.is_empty() {
        return Err(OnnxError::Invalid {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    model_from_proto(&proto, path.parent()).map_err(|e| match e {
        OnnxError::Tensor { name, reason } => OnnxError::Invalid {
            path: path.to_path_buf(),
            reason: format!("tensor '{name}': {reason}"),
        },
        OnnxError::Invalid { reason, .. } => OnnxError::Invalid {
            path: path.to_path_buf(),
            reason,
        },
        OnnxError::Graph { source, .. } => OnnxError::Graph {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// Converts a decoded model; `base_dir` resolves external data.
pub fn model_from_proto(proto: &ModelProto, base_dir: Option<&Path>) -> Result<Model, OnnxError> {
    let invalid = |reason: String| OnnxError::Invalid {
        path: Default::default(),
        reason,
    };
    let graph_proto = proto
        .graph
        .as_ref()
        .ok_or_else(|| invalid("the model has no graph".into()))?;
    let ir_version = proto.ir_version.unwrap_or(0);
    if ir_version <= 0 {
        return Err(invalid(
            "ir_version is missing (is this an ONNX model?)".into(),
        ));
    }
    let mut graph = graph_from_proto(graph_proto, base_dir)?;
    normalize_constants(&mut graph).map_err(|source| OnnxError::Graph {
        path: Default::default(),
        source,
    })?;
    verify(&graph).map_err(|source| OnnxError::Graph {
        path: Default::default(),
        source,
    })?;
    let model = Model {
        ir_version,
        opsets: proto
            .opset_import
            .iter()
            .map(|o| OpsetId {
                domain: o.domain.clone().unwrap_or_default(),
                version: o.version.unwrap_or(0),
            })
            .collect(),
        producer_name: proto.producer_name.clone().unwrap_or_default(),
        producer_version: proto.producer_version.clone().unwrap_or_default(),
        domain: proto.domain.clone().unwrap_or_default(),
        model_version: proto.model_version.unwrap_or(0),
        doc_string: proto.doc_string.clone().unwrap_or_default(),
        metadata: entries_from_proto(&proto.metadata_props),
        graph,
        functions: proto.functions.clone(),
        training_info: proto.training_info.clone(),
        configuration: proto.configuration.clone(),
    };
    verify_model(&model).map_err(|source| OnnxError::Graph {
        path: Default::default(),
        source,
    })?;
    Ok(model)
}

fn graph_from_proto(g: &GraphProto, base_dir: Option<&Path>) -> Result<Graph, OnnxError> {
    let mut graph = Graph {
        name: g.name.clone().unwrap_or_default(),
        doc_string: g.doc_string.clone().unwrap_or_default(),
        nodes: g.node.iter().map(node_from_proto).collect(),
        outputs: g.output.iter().map(value_info_from_proto).collect(),
        value_info: g.value_info.iter().map(value_info_from_proto).collect(),
        sparse_initializers: g.sparse_initializer.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata: entries_from_proto(&g.metadata_props),
        ..Default::default()
    };
    for t in &g.initializer {
        let tensor = tensor_from_proto(t, base_dir)?;
        if tensor.name.is_empty() {
            return Err(OnnxError::Invalid {
                path: Default::default(),
                reason: "an initializer has no name".into(),
            });
        }
        graph.initializers.insert(tensor.name.clone(), tensor);
    }
    for input in g.input.iter().map(value_info_from_proto) {
        if graph.initializers.contains_key(&input.name) {
            graph.overridable_initializers.push(input);
        } else {
            graph.inputs.push(input);
        }
    }
    Ok(graph)
}

pub(crate) fn node_from_proto(n: &NodeProto) -> Node {
    Node {
        name: n.name.clone().unwrap_or_default(),
        op_type: n.op_type.clone().unwrap_or_default(),
        domain: n.domain.clone().unwrap_or_default(),
        inputs: n.input.clone(),
        outputs: n.output.clone(),
        attributes: n.attribute.clone(),
        doc_string: n.doc_string.clone().unwrap_or_default(),
        overload: n.overload.clone().unwrap_or_default(),
        metadata: entries_from_proto(&n.metadata_props),
        device_configurations: n.device_configurations.clone(),
    }
}

/// Constant nodes in the ONNX domain whose value is a dense tensor (or a
/// scalar/list attribute) become initializers, unless their output is a
/// graph output.
fn normalize_constants(graph: &mut Graph) -> Result<(), crate::graph::GraphError> {
    let graph_outputs: HashSet<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
    let mut kept = Vec::with_capacity(graph.nodes.len());
    for node in std::mem::take(&mut graph.nodes) {
        let convertible = node.op_type == "Constant"
            && node.is_onnx_domain()
            && node.outputs.len() == 1
            && !graph_outputs.contains(&node.outputs[0])
            && !graph.initializers.contains_key(&node.outputs[0]);
        match convertible
            .then(|| constant_value(&node))
            .transpose()?
            .flatten()
        {
            Some(mut tensor) => {
                tensor.name = node.outputs[0].clone();
                graph.initializers.insert(tensor.name.clone(), tensor);
            }
            None => kept.push(node),
        }
    }
    graph.nodes = kept;
    Ok(())
}

/// The tensor a Constant node produces, `None` for forms kept as nodes (sparse).
fn constant_value(node: &Node) -> Result<Option<Tensor>, crate::graph::GraphError> {
    let name = node.outputs[0].as_str();
    if let Some(t) = node.attr_tensor("value")? {
        return Ok(Some(t));
    }
    if let Some(v) = node.attr("value_float").and_then(|a| a.f) {
        return Tensor::from_f32(name, vec![], &[v]).map(Some);
    }
    if let Some(a) = node.attr("value_floats") {
        return Tensor::from_f32(name, vec![a.floats.len() as i64], &a.floats).map(Some);
    }
    if let Some(v) = node.attr("value_int").and_then(|a| a.i) {
        return Tensor::from_i64(name, vec![], &[v]).map(Some);
    }
    if let Some(a) = node.attr("value_ints") {
        return Tensor::from_i64(name, vec![a.ints.len() as i64], &a.ints).map(Some);
    }
    Ok(None)
}
