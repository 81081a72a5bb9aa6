//! Export: graph IR → ONNX file.
//!
//! Writes atomically (temporary file in the same directory, then rename), so
//! an interrupted write never leaves a half model. Large weights can go to an
//! external data file next to the model; models whose inline size would pass
//! protobuf's 2 GiB limit always do.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto,
};
use super::tensor_io::tensor_to_proto;
use super::value_io::{entries_to_proto, opt_string, value_info_to_proto};
use super::OnnxError;
use crate::graph::{Graph, Model, Node, ValueInfo};

/// Protobuf messages cannot exceed 2 GiB; stay clear of it.
const INLINE_LIMIT: usize = 1_800_000_000;

/// How weights are placed when saving.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Put every tensor of at least `external_threshold` bytes in `<model>.data`.
    pub external_data: bool,
    pub external_threshold: usize,
}

/// Builds the protobuf message with all data inline.
pub fn model_to_proto(model: &Model) -> ModelProto {
    ModelProto {
        ir_version: Some(model.ir_version),
        opset_import: model
            .opsets
            .iter()
            .map(|o| OperatorSetIdProto {
                domain: Some(o.domain.clone()),
                version: Some(o.version),
            })
            .collect(),
        producer_name: opt_string(&model.producer_name),
        producer_version: opt_string(&model.producer_version),
        domain: opt_string(&model.domain),
        model_version: (model.model_version != 0).then_some(model.model_version),
        doc_string: opt_string(&model.doc_string),
        graph: Some(graph_to_proto(&model.graph, model.ir_version)),
        metadata_props: entries_to_proto(&model.metadata),
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
        configuration: model.configuration.clone(),
    }
}

/// Writes `model` to `path` atomically, with external data if asked or needed.
pub fn save_model(model: &Model, path: &Path, options: &ExportOptions) -> Result<(), OnnxError> {
    let mut proto = model_to_proto(model);
    let inline_size: usize = model
        .graph
        .initializers
        .values()
        .map(|t| t.byte_size())
        .sum();
    if options.external_data || inline_size > INLINE_LIMIT {
        let threshold = if options.external_data {
            options.external_threshold
        } else {
            1024
        };
        move_to_external(&mut proto, path, threshold)?;
    }
    write_atomically(path, &proto.encode_to_vec())
}

fn graph_to_proto(g: &Graph, ir_version: i64) -> GraphProto {
    let mut inputs: Vec<_> = g.inputs.iter().map(value_info_to_proto).collect();
    inputs.extend(g.overridable_initializers.iter().map(value_info_to_proto));
    if ir_version < 4 {
        // IR 3 requires every initializer among the graph inputs.
        for (name, t) in &g.initializers {
            if !g.overridable_initializers.iter().any(|v| &v.name == name) {
                let info = ValueInfo::tensor(name, t.dtype, &t.dims);
                inputs.push(value_info_to_proto(&info));
            }
        }
    }
    GraphProto {
        node: g.nodes.iter().map(node_to_proto).collect(),
        name: Some(g.name.clone()),
        initializer: g.initializers.values().map(tensor_to_proto).collect(),
        sparse_initializer: g.sparse_initializers.clone(),
        doc_string: opt_string(&g.doc_string),
        input: inputs,
        output: g.outputs.iter().map(value_info_to_proto).collect(),
        value_info: g.value_info.iter().map(value_info_to_proto).collect(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata_props: entries_to_proto(&g.metadata),
    }
}

pub(crate) fn node_to_proto(n: &Node) -> NodeProto {
    NodeProto {
        input: n.inputs.clone(),
        output: n.outputs.clone(),
        name: opt_string(&n.name),
        op_type: Some(n.op_type.clone()),
        domain: opt_string(&n.domain),
        overload: opt_string(&n.overload),
        attribute: n.attributes.clone(),
        doc_string: opt_string(&n.doc_string),
        metadata_props: entries_to_proto(&n.metadata),
        device_configurations: n.device_configurations.clone(),
    }
}

/// Moves initializer payloads of at least `threshold` bytes to `<path>.data`.
fn move_to_external(
    proto: &mut ModelProto,
    path: &Path,
    threshold: usize,
) -> Result<(), OnnxError> {
    let data_path = external_data_path(path);
    let location = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.onnx.data".into());
    let mut blob: Vec<u8> = Vec::new();
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(());
    };
    for t in graph.initializer.iter_mut() {
        let Some(raw) = t.raw_data.take_if(|r| r.len() >= threshold.max(1)) else {
            continue;
        };
        if raw.len() >= 4096 {
            blob.resize(blob.len().next_multiple_of(4096), 0);
        }
        set_external(t, &location, blob.len(), raw.len());
        blob.extend_from_slice(&raw);
    }
    write_atomically(&data_path, &blob)
}

fn set_external(t: &mut TensorProto, location: &str, offset: usize, length: usize) {
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        entry("location", location.to_string()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
}

/// `model.onnx` → `model.onnx.data`.
pub fn external_data_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    path.with_file_name(name)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it into place.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let err = |source| OnnxError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}
