//! The in-memory model: a graph plus the model-level fields of the file.

use std::collections::{BTreeMap, HashMap};

use crate::onnx::proto;

use super::{Node, Tensor, ValueInfo};

/// An operator set import: domain ("" is ONNX) and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsetId {
    pub domain: String,
    pub version: i64,
}

/// A whole ONNX model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Model {
    pub ir_version: i64,
    pub opsets: Vec<OpsetId>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: i64,
    pub doc_string: String,
    pub metadata: Vec<(String, String)>,
    pub graph: Graph,
    /// Fields amct carries through without interpreting them.
    pub functions: Vec<proto::FunctionProto>,
    pub training_info: Vec<proto::TrainingInfoProto>,
    pub configuration: Vec<proto::DeviceConfigurationProto>,
}

impl Model {
    /// The opset version imported for the default ONNX domain (0 if none).
    pub fn onnx_opset(&self) -> i64 {
        self.opsets
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0)
    }
}

/// A computation graph. Initializers are kept apart from the true inputs:
/// `inputs` lists only values the caller must feed.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub doc_string: String,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// Known types of intermediate values.
    pub value_info: Vec<ValueInfo>,
    /// Constant tensors by name (sorted, so exports are stable).
    pub initializers: BTreeMap<String, Tensor>,
    /// Initializers that also appear as graph inputs with a default value
    /// (IR >= 4 allows overriding them); kept so the export can list them again.
    pub overridable_initializers: Vec<ValueInfo>,
    pub sparse_initializers: Vec<proto::SparseTensorProto>,
    pub quantization_annotation: Vec<proto::TensorAnnotation>,
    pub metadata: Vec<(String, String)>,
}

impl Graph {
    /// Map from value name to the index of the node producing it.
    pub fn producers(&self) -> HashMap<&str, usize> {
        let mut map = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for out in node.outputs.iter().filter(|o| !o.is_empty()) {
                map.insert(out.as_str(), i);
            }
        }
        map
    }

    /// Map from value name to the indices of the nodes reading it.
    pub fn consumers(&self) -> HashMap<&str, Vec<usize>> {
        let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for inp in node.inputs.iter().filter(|o| !o.is_empty()) {
                map.entry(inp.as_str()).or_default().push(i);
            }
        }
        map
    }

    /// The recorded type of a value (input, output or value_info), if any.
    pub fn value_info(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.value_info)
            .find(|v| v.name == name)
    }

    /// Number of parameters: elements in floating-point initializers.
    pub fn parameter_count(&self) -> usize {
        self.initializers
            .values()
            .filter(|t| t.dtype.is_float())
            .map(Tensor::numel)
            .sum()
    }
}
