//! Named values: element type and (possibly symbolic) shape.

use std::fmt;

use crate::onnx::proto::TypeProto;

use super::DType;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    /// A named dimension such as "batch" or "N".
    Symbolic(String),
    /// Neither a value nor a name is known.
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Formats a shape as `[N, 3, 224, 224]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A typed, named value (graph input, output or intermediate).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ValueInfo {
    pub name: String,
    /// Element type when the value is a tensor of known type.
    pub dtype: Option<DType>,
    /// Shape when known; `None` means the rank is unknown.
    pub shape: Option<Vec<Dim>>,
    pub doc_string: String,
    pub metadata: Vec<(String, String)>,
    /// The type as read from the file when it is not a plain tensor type
    /// (sequence, map, optional, sparse) or carries denotations, kept verbatim.
    pub raw_type: Option<TypeProto>,
}

impl ValueInfo {
    /// A tensor value with a fully known shape.
    pub fn tensor(name: &str, dtype: DType, dims: &[i64]) -> Self {
        ValueInfo {
            name: name.to_string(),
            dtype: Some(dtype),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            ..Default::default()
        }
    }

    /// The shape as integers if every dim is known.
    pub fn known_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(Dim::known).collect()
    }
}
