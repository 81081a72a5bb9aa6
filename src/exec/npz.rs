//! Reading and writing .npz files of named arrays (numpy's `np.savez`).
//!
//! Values keep their ONNX element type: int8/uint8/int32/bool arrays are
//! read into i64 storage and written back with their own numpy type.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType as CDType, Device, Tensor};

use super::error::{ExecError, Result};
use super::Value;
use crate::graph::DType;

fn npz_err(path: &Path, reason: impl std::fmt::Display) -> ExecError {
    ExecError::Input {
        name: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every array of an .npz file, keyed by its name (".npy" stripped).
pub fn read_npz(path: &Path, device: &Device, float: CDType) -> Result<HashMap<String, Value>> {
    if !path.exists() {
        return Err(npz_err(path, "file not found"));
    }
    let arrays =
        Tensor::read_npz(path).map_err(|e| npz_err(path, format!("cannot read as .npz: {e}")))?;
    let mut out = HashMap::new();
    for (name, t) in arrays {
        let dtype = match t.dtype() {
            CDType::F32 => DType::F32,
            CDType::F64 => DType::F64,
            CDType::F16 => DType::F16,
            CDType::BF16 => DType::BF16,
            CDType::U8 => DType::U8,
            CDType::U32 => DType::U32,
            CDType::I16 => DType::I16,
            CDType::I32 => DType::I32,
            CDType::I64 => DType::I64,
            other => {
                return Err(npz_err(
                    path,
                    format!("array '{name}' has unsupported type {other:?}"),
                ))
            }
        };
        let storage = if dtype.is_float() { float } else { CDType::I64 };
        let t = t.to_dtype(storage)?.to_device(device)?;
        out.insert(
            name.trim_end_matches(".npy").to_string(),
            Value::new(t, dtype),
        );
    }
    Ok(out)
}

/// Writes named values to an .npz file (written to a temporary name, then renamed).
pub fn write_npz(path: &Path, values: &[(String, Value)]) -> Result<()> {
    let mut tensors = Vec::with_capacity(values.len());
    for (name, v) in values {
        let t = v.tensor.to_device(&Device::Cpu)?;
        let t = match v.dtype {
            DType::F64 => t.to_dtype(CDType::F64)?,
            DType::F16 => t.to_dtype(CDType::F16)?,
            d if d.is_float() => t.to_dtype(CDType::F32)?,
            DType::U8 | DType::BOOL => t.to_dtype(CDType::U8)?,
            DType::I32 => t.to_dtype(CDType::I32)?,
            DType::I16 => t.to_dtype(CDType::I16)?,
            DType::U32 => t.to_dtype(CDType::U32)?,
            _ => t.to_dtype(CDType::I64)?,
        };
        tensors.push((name.clone(), t));
    }
    let tmp = path.with_extension("npz.tmp");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_npz(&refs, &tmp).map_err(|e| npz_err(path, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| npz_err(path, format!("cannot write: {e}")))?;
    Ok(())
}
