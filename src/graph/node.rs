//! Graph nodes and typed access to their attributes.
//!
//! Attributes are kept as the protobuf `AttributeProto` values they were read
//! from, so every attribute (subgraphs, type protos, references) survives an
//! import/export round trip unchanged, also on ops amct does not know.

use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};

use super::{GraphError, Tensor};

/// One operator application.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    /// Operator domain; "" (or "ai.onnx") is the default ONNX domain.
    pub domain: String,
    /// Input value names; "" marks an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<AttributeProto>,
    pub doc_string: String,
    pub overload: String,
    pub metadata: Vec<(String, String)>,
    /// Fields amct does not interpret (device configurations), kept verbatim.
    pub device_configurations: Vec<crate::onnx::proto::NodeDeviceConfigurationProto>,
}

impl Node {
    /// A node in the default domain with no attributes.
    pub fn new(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        Node {
            name: name.to_string(),
            op_type: op_type.to_string(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// True if the node belongs to the default ONNX domain.
    pub fn is_onnx_domain(&self) -> bool {
        self.domain.is_empty() || self.domain == "ai.onnx"
    }

    /// A name for messages: `'name' (OpType)`.
    pub fn label(&self) -> String {
        format!("'{}' ({})", self.name, self.op_type)
    }

    /// The attribute called `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attributes
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    /// Input `i` if present and not the empty "omitted" name.
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(|a| a.i)
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(|a| a.f)
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    pub fn attr_floats(&self, name: &str) -> Option<&[f32]> {
        self.attr(name).map(|a| a.floats.as_slice())
    }

    pub fn attr_string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }

    /// Tensor-valued attribute decoded into an IR tensor.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>, GraphError> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            None => Ok(None),
            Some(t) => crate::onnx::tensor_from_proto(t, None)
                .map(Some)
                .map_err(|e| GraphError::BadNode {
                    node: self.label(),
                    reason: format!("attribute '{name}': {e}"),
                }),
        }
    }

    /// Integer attribute with a default.
    pub fn int_or(&self, name: &str, default: i64) -> i64 {
        self.attr_int(name).unwrap_or(default)
    }

    /// Float attribute with a default.
    pub fn float_or(&self, name: &str, default: f32) -> f32 {
        self.attr_float(name).unwrap_or(default)
    }

    /// Sets (or replaces) an integer attribute.
    pub fn set_int(&mut self, name: &str, value: i64) {
        self.set_attr(AttributeProto {
            name: Some(name.to_string()),
            i: Some(value),
            r#type: Some(AttributeType::Int as i32),
            ..Default::default()
        });
    }

    /// Sets (or replaces) an integer-list attribute.
    pub fn set_ints(&mut self, name: &str, values: &[i64]) {
        self.set_attr(AttributeProto {
            name: Some(name.to_string()),
            ints: values.to_vec(),
            r#type: Some(AttributeType::Ints as i32),
            ..Default::default()
        });
    }

    /// Sets (or replaces) a float attribute.
    pub fn set_float(&mut self, name: &str, value: f32) {
        self.set_attr(AttributeProto {
            name: Some(name.to_string()),
            f: Some(value),
            r#type: Some(AttributeType::Float as i32),
            ..Default::default()
        });
    }

    /// Sets (or replaces) a string attribute.
    pub fn set_string(&mut self, name: &str, value: &str) {
        self.set_attr(AttributeProto {
            name: Some(name.to_string()),
            s: Some(value.as_bytes().to_vec()),
            r#type: Some(AttributeType::String as i32),
            ..Default::default()
        });
    }

    fn set_attr(&mut self, attr: AttributeProto) {
        match self.attributes.iter_mut().find(|a| a.name == attr.name) {
            Some(slot) => *slot = attr,
            None => self.attributes.push(attr),
        }
    }

    /// Names of graph attributes' outer-scope references are not tracked;
    /// this tells whether the node carries subgraphs.
    pub fn has_subgraphs(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }
}
