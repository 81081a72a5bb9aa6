//! Model statistics for `amct inspect`: I/O types, opsets, op histogram,
//! parameters, MACs per layer, file size and the ops the executor cannot run.
//!
//! [`inspect`] reports the model as amct imported it (Constant nodes holding
//! tensors are initializers there, so they count as parameters and leave the
//! histogram), MACs from shape inference at a given batch size, and the size
//! of the file on disk with its external data. The JSON form of [`InspectReport`] is
//! a stable interface (the interop tests read it); [`InspectReport::to_text`]
//! renders a human summary.

mod file;
pub use file::external_data_files;
mod macs;
mod report;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::graph::shape_infer::{infer_shapes, InferredShapes};
use crate::graph::{DType, Dim, GraphError, Model, ValueInfo};

/// Why a model could not be inspected.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("cannot read '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode '{}' as an ONNX model: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("batch size must be at least 1, got {0}")]
    BadBatch(i64),
    #[error("shape inference failed: {0}")]
    Shapes(#[from] GraphError),
}

/// One dim in JSON: a number, a symbolic name, or "?" when unknown.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ShapeDim {
    Known(i64),
    Named(String),
}

impl From<&Dim> for ShapeDim {
    fn from(d: &Dim) -> Self {
        match d {
            Dim::Known(v) => ShapeDim::Known(*v),
            Dim::Symbolic(s) => ShapeDim::Named(s.clone()),
            Dim::Unknown => ShapeDim::Named("?".into()),
        }
    }
}

fn json_shape(shape: Option<&[Dim]>) -> Option<Vec<ShapeDim>> {
    shape.map(|s| s.iter().map(ShapeDim::from).collect())
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpsetEntry {
    pub domain: String,
    pub version: i64,
}

/// A graph input or output; `shape` is null when even the rank is unknown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IoEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Option<Vec<ShapeDim>>,
}

/// A node with MACs or parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerEntry {
    pub name: String,
    pub op_type: String,
    pub macs: u64,
    pub params: u64,
    pub output_shape: Option<Vec<ShapeDim>>,
}

/// A node the executor cannot run, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnsupportedEntry {
    pub node: String,
    pub op_type: String,
    pub reason: String,
}

/// Everything `amct inspect` reports. Field names and order are the JSON contract.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub ir_version: i64,
    pub opsets: Vec<OpsetEntry>,
    pub inputs: Vec<IoEntry>,
    pub outputs: Vec<IoEntry>,
    /// Node count per op type over the main graph.
    pub op_histogram: BTreeMap<String, u64>,
    /// Elements of floating-point initializers (sparse ones counted dense).
    pub parameters: u64,
    /// Total multiply-accumulates at `batch`; the sum of `layers[].macs`.
    pub macs: u64,
    pub layers: Vec<LayerEntry>,
    /// Model file plus the external data files it references.
    pub size_bytes: u64,
    pub unsupported: Vec<UnsupportedEntry>,
    /// Batch size the MACs were counted at (not part of the JSON).
    #[serde(skip)]
    pub batch: i64,
}

/// Inspects the model loaded from `path`; MACs are counted with the
/// symbolic (batch) dims of the graph inputs set to `batch`.
pub fn inspect(path: &Path, model: &Model, batch: i64) -> Result<InspectReport, InspectError> {
    let size = file::size_on_disk(path)?;
    build(path.display().to_string(), model, batch, size)
}

/// Inspects an in-memory model: `path` is empty and the size is what the
/// model would take serialized with inline weights.
pub fn inspect_model(model: &Model, batch: i64) -> Result<InspectReport, InspectError> {
    let size = prost::Message::encoded_len(&crate::onnx::model_to_proto(model)) as u64;
    build(String::new(), model, batch, size)
}

/// Elements of floating-point initializers, sparse ones counted dense.
pub fn parameter_count(model: &Model) -> u64 {
    let graph = &model.graph;
    let sparse = graph
        .sparse_initializers
        .iter()
        .filter(|s| {
            s.values
                .as_ref()
                .and_then(|v| v.data_type)
                .is_some_and(|t| DType(t).is_float())
        })
        .map(|s| {
            s.dims
                .iter()
                .map(|&d| d.max(0) as u64)
                .fold(1u64, u64::saturating_mul)
        });
    sparse.fold(graph.parameter_count() as u64, u64::saturating_add)
}

/// Shape overrides that pin every non-numeric dim of the graph inputs:
/// leading dims (and dims sharing a leading dim's name) become `batch`, the
/// rest 1.
pub fn batch_overrides(model: &Model, batch: i64) -> HashMap<String, Vec<Dim>> {
    let inputs = &model.graph.inputs;
    let batch_names: HashSet<&str> = inputs
        .iter()
        .filter_map(|v| match v.shape.as_deref()?.first()? {
            Dim::Symbolic(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let mut out = HashMap::new();
    for v in inputs {
        let Some(shape) = &v.shape else { continue };
        if shape.iter().all(|d| d.known().is_some()) {
            continue;
        }
        let pinned = shape
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(k) => Dim::Known(*k),
                Dim::Symbolic(s) if batch_names.contains(s.as_str()) => Dim::Known(batch),
                _ if i == 0 => Dim::Known(batch),
                _ => Dim::Known(1),
            })
            .collect();
        out.insert(v.name.clone(), pinned);
    }
    out
}

fn build(
    path: String,
    model: &Model,
    batch: i64,
    size_bytes: u64,
) -> Result<InspectReport, InspectError> {
    if batch < 1 {
        return Err(InspectError::BadBatch(batch));
    }
    let graph = &model.graph;
    let shapes = infer_shapes(model, &batch_overrides(model, batch))?;
    let mut layers = Vec::new();
    let mut unsupported = Vec::new();
    let mut op_histogram = BTreeMap::new();
    for node in &graph.nodes {
        *op_histogram.entry(node.op_type.clone()).or_default() += 1;
        let name = if node.name.is_empty() {
            node.outputs.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let (m, p) = (
            macs::node_macs(node, &shapes),
            macs::node_params(node, graph),
        );
        if m > 0 || p > 0 {
            let output_shape = json_shape(node.outputs.first().and_then(|o| shapes.shape(o)));
            layers.push(LayerEntry {
                name: name.clone(),
                op_type: node.op_type.clone(),
                macs: m,
                params: p,
                output_shape,
            });
        }
        if let Err(reason) = crate::exec::ops::check(node) {
            unsupported.push(UnsupportedEntry {
                node: name,
                op_type: node.op_type.clone(),
                reason,
            });
        }
    }
    Ok(InspectReport {
        path,
        ir_version: model.ir_version,
        opsets: model
            .opsets
            .iter()
            .map(|o| OpsetEntry {
                domain: o.domain.clone(),
                version: o.version,
            })
            .collect(),
        inputs: graph.inputs.iter().map(|v| io_entry(v, None)).collect(),
        outputs: graph
            .outputs
            .iter()
            .map(|v| io_entry(v, Some(&shapes)))
            .collect(),
        op_histogram,
        parameters: parameter_count(model),
        macs: layers
            .iter()
            .map(|l| l.macs)
            .fold(0u64, u64::saturating_add),
        layers,
        size_bytes,
        unsupported,
        batch,
    })
}

/// The declared type, completed from inference where the file says nothing.
fn io_entry(v: &ValueInfo, shapes: Option<&InferredShapes>) -> IoEntry {
    let inferred = shapes.and_then(|s| s.get(&v.name));
    let dtype = v.dtype.or(inferred.and_then(|i| i.dtype));
    let shape = v
        .shape
        .as_deref()
        .or(inferred.and_then(|i| i.shape.as_deref()));
    IoEntry {
        name: v.name.clone(),
        dtype: dtype.map_or("undefined", |d| d.name()).to_string(),
        shape: json_shape(shape),
    }
}
