//! Conversion between `TensorProto` and IR tensors.
//!
//! Reading accepts every storage form ONNX allows (raw_data, the typed
//! repeated fields, external data files) and checks the payload length
//! against the shape. Writing always uses raw_data (strings use
//! string_data); external placement is decided by the exporter.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::proto::{tensor_proto::DataLocation, StringStringEntryProto, TensorProto};
use super::OnnxError;
use crate::graph::{tensor::numel_of, DType, Tensor, TensorData};

/// Decodes a tensor; `base_dir` resolves external data locations.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let err = |reason: String| OnnxError::Tensor {
        name: name.clone(),
        reason,
    };
    let dtype = DType(t.data_type.unwrap_or(0));
    if dtype == DType::UNDEFINED {
        return Err(err("data_type is missing or UNDEFINED".into()));
    }
    if t.segment.is_some() {
        return Err(err("segmented tensors are not supported".into()));
    }
    let numel = numel_of(&t.dims).ok_or_else(|| err(format!("invalid dims {:?}", t.dims)))?;
    let metadata = t
        .metadata_props
        .iter()
        .map(|e| {
            (
                e.key.clone().unwrap_or_default(),
                e.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    let data = if dtype == DType::STRING {
        if t.string_data.len() != numel {
            return Err(err(format!(
                "has {} strings but shape {:?} needs {numel}",
                t.string_data.len(),
                t.dims
            )));
        }
        TensorData::Strings(t.string_data.clone())
    } else {
        let bytes = if t.data_location == Some(DataLocation::External as i32) {
            read_external(t, base_dir).map_err(err)?
        } else if let Some(raw) = &t.raw_data {
            raw.clone()
        } else {
            typed_fields_to_raw(t, dtype, numel).map_err(err)?
        };
        let expected = dtype
            .byte_len(numel)
            .ok_or_else(|| err(format!("element type {dtype} is not supported")))?;
        if bytes.len() != expected {
            return Err(err(format!(
                "data is {} bytes but shape {:?} of {dtype} needs {expected} bytes{}",
                bytes.len(),
                t.dims,
                if bytes.len() < expected {
                    " (data shorter than its shape)"
                } else {
                    " (data longer than its shape)"
                }
            )));
        }
        TensorData::Raw(Arc::new(bytes))
    };
    Ok(Tensor {
        name,
        dtype,
        dims: t.dims.clone(),
        data,
        doc_string: t.doc_string.clone().unwrap_or_default(),
        metadata,
    })
}

/// Encodes a tensor with its data inline (raw_data or string_data).
pub fn tensor_to_proto(t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        name: Some(t.name.clone()),
        dims: t.dims.clone(),
        data_type: Some(t.dtype.0),
        doc_string: (!t.doc_string.is_empty()).then(|| t.doc_string.clone()),
        metadata_props: t
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    };
    match &t.data {
        TensorData::Raw(bytes) => p.raw_data = Some(bytes.as_ref().clone()),
        TensorData::Strings(s) => p.string_data = s.clone(),
    }
    p
}

fn read_external(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let location = get("location").ok_or("external data without a 'location' entry")?;
    let offset: u64 = match get("offset") {
        Some(s) => s
            .parse()
            .map_err(|_| format!("bad external data offset '{s}'"))?,
        None => 0,
    };
    let length: Option<u64> = match get("length") {
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("bad external data length '{s}'"))?,
        ),
        None => None,
    };
    let base = base_dir.ok_or("external data needs the model's directory")?;
    let path = base.join(&location);
    let mut file = File::open(&path)
        .map_err(|e| format!("cannot open external data '{}': {e}", path.display()))?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let length = length.unwrap_or(file_len.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(format!(
            "external data '{}' is {file_len} bytes, too short for offset {offset} + length {length}",
            path.display()
        ));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; length as usize];
    file.read_exact(&mut buf)
        .map_err(|e| format!("reading '{}': {e}", path.display()))?;
    Ok(buf)
}

fn typed_fields_to_raw(t: &TensorProto, dtype: DType, numel: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(dtype.byte_len(numel).unwrap_or(0));
    match dtype {
        DType::F32 | DType::COMPLEX64 => t
            .float_data
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::F64 | DType::COMPLEX128 => t
            .double_data
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::I64 => t
            .int64_data
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::U64 => t
            .uint64_data
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::U32 => t
            .uint64_data
            .iter()
            .for_each(|&v| out.extend((v as u32).to_le_bytes())),
        DType::I32 => t
            .int32_data
            .iter()
            .for_each(|v| out.extend(v.to_le_bytes())),
        DType::I16 | DType::U16 | DType::F16 | DType::BF16 => t
            .int32_data
            .iter()
            .for_each(|&v| out.extend((v as u16).to_le_bytes())),
        DType::I4 | DType::U4 | DType::F4E2M1 => {
            // Each int32 holds two packed 4-bit elements in its low byte.
            let bytes = numel.div_ceil(2);
            out.extend(t.int32_data.iter().take(bytes).map(|&v| v as u8));
        }
        d if d.bits() == Some(8) => out.extend(t.int32_data.iter().map(|&v| v as u8)),
        other => {
            return Err(format!(
                "element type {other} cannot be read from typed fields"
            ))
        }
    }
    Ok(out)
}
