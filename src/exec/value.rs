//! Runtime values: a candle tensor plus the ONNX element type it stands for.
//!
//! candle lacks int8/int16/int32/bool; amct stores every integer and boolean
//! type as candle `I64` and every float type in the executor's compute float
//! type (f32, or f64 for gradient checks), and remembers the ONNX type so
//! outputs are written back with the right one.

use candle_core::{DType as CDType, Device, Storage, Tensor};

use super::error::{ExecError, Result};
use crate::graph::{DType, Tensor as IrTensor};

/// Calls `f` with the tensor's values as one f32 slice: borrowed from a contiguous f32 CPU
/// tensor, copied otherwise.
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    if t.dtype() == CDType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    let flat = t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1::<f32>()?;
    Ok(f(&flat))
}

/// A tensor flowing through the executor.
#[derive(Clone, Debug)]
pub struct Value {
    pub tensor: Tensor,
    /// The ONNX element type this value has in the model.
    pub dtype: DType,
}

impl Value {
    pub fn new(tensor: Tensor, dtype: DType) -> Self {
        Value { tensor, dtype }
    }

    /// Shape as a vector of usizes.
    pub fn dims(&self) -> &[usize] {
        self.tensor.dims()
    }

    pub fn rank(&self) -> usize {
        self.tensor.rank()
    }

    /// Converts an IR constant to a runtime value on `device`.
    pub fn from_ir(t: &IrTensor, device: &Device, float: CDType) -> Result<Self> {
        let bad = |reason: &str| ExecError::Input {
            name: t.name.clone(),
            reason: reason.to_string(),
        };
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let tensor = if t.dtype.is_float() {
            let values = t
                .to_f64_vec()
                .ok_or_else(|| bad("cannot read float data"))?;
            Tensor::from_vec(values, shape, device)?.to_dtype(float)?
        } else if t.dtype.is_integer() {
            let values = t
                .to_i64_vec()
                .ok_or_else(|| bad("cannot read integer data"))?;
            Tensor::from_vec(values, shape, device)?
        } else {
            return Err(bad(&format!(
                "element type {} is not supported by the executor",
                t.dtype
            )));
        };
        Ok(Value::new(tensor, t.dtype))
    }

    /// The elements as i64 (for shape-like inputs: axes, shapes, indices).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        Ok(self
            .tensor
            .flatten_all()?
            .to_dtype(CDType::I64)?
            .to_vec1::<i64>()?)
    }

    /// The elements as f64.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self
            .tensor
            .flatten_all()?
            .to_dtype(CDType::F64)?
            .to_vec1::<f64>()?)
    }

    /// True when stored as a candle float tensor.
    pub fn is_float(&self) -> bool {
        self.tensor.dtype().is_float()
    }
}

/// candle storage type used for an ONNX type.
pub fn storage_dtype(dtype: DType, float: CDType) -> Option<CDType> {
    if dtype.is_float() {
        Some(float)
    } else if dtype.is_integer() {
        Some(CDType::I64)
    } else {
        None
    }
}
