//! Conversion of value infos (types and shapes) and metadata entries.

use super::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::graph::{DType, Dim, ValueInfo};

pub(crate) fn entries_from_proto(entries: &[StringStringEntryProto]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e.key.clone().unwrap_or_default(),
                e.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

pub(crate) fn entries_to_proto(entries: &[(String, String)]) -> Vec<StringStringEntryProto> {
    entries
        .iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

pub(crate) fn value_info_from_proto(v: &ValueInfoProto) -> ValueInfo {
    let mut info = ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        doc_string: v.doc_string.clone().unwrap_or_default(),
        metadata: entries_from_proto(&v.metadata_props),
        ..Default::default()
    };
    match &v.r#type {
        Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            denotation: None,
        }) => {
            info.dtype = t.elem_type.filter(|&e| e != 0).map(DType);
            info.shape = t
                .shape
                .as_ref()
                .map(|s| s.dim.iter().map(dim_from_proto).collect());
            if t.shape
                .as_ref()
                .is_some_and(|s| s.dim.iter().any(|d| d.denotation.is_some()))
            {
                info.raw_type = v.r#type.clone();
            }
        }
        Some(other) => info.raw_type = Some(other.clone()),
        None => {}
    }
    info
}

pub(crate) fn value_info_to_proto(v: &ValueInfo) -> ValueInfoProto {
    let ty = match &v.raw_type {
        Some(raw) => Some(raw.clone()),
        None if v.dtype.is_none() && v.shape.is_none() => None,
        None => Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: v.dtype.map(|d| d.0),
                shape: v.shape.as_ref().map(|dims| TensorShapeProto {
                    dim: dims.iter().map(dim_to_proto).collect(),
                }),
            })),
        }),
    };
    ValueInfoProto {
        name: Some(v.name.clone()),
        r#type: ty,
        doc_string: (!v.doc_string.is_empty()).then(|| v.doc_string.clone()),
        metadata_props: entries_to_proto(&v.metadata),
    }
}

fn dim_from_proto(d: &Dimension) -> Dim {
    match &d.value {
        Some(dimension::Value::DimValue(v)) => Dim::Known(*v),
        Some(dimension::Value::DimParam(s)) => Dim::Symbolic(s.clone()),
        None => Dim::Unknown,
    }
}

fn dim_to_proto(d: &Dim) -> Dimension {
    Dimension {
        denotation: None,
        value: match d {
            Dim::Known(v) => Some(dimension::Value::DimValue(*v)),
            Dim::Symbolic(s) => Some(dimension::Value::DimParam(s.clone())),
            Dim::Unknown => None,
        },
    }
}

pub(crate) fn opt_string(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}
