//! Constant tensors held by the IR (initializers and attribute tensors).
//!
//! Data is kept as little-endian bytes in ONNX's raw layout (4-bit types
//! packed two per byte), shared behind an `Arc` so cloning a graph is cheap.
//! String tensors keep their elements separately. Constructors check that the
//! byte length matches the shape.

use std::sync::Arc;

use super::{DType, GraphError};

/// A constant tensor: element type, shape and raw little-endian data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub data: TensorData,
    pub doc_string: String,
    /// `(key, value)` metadata carried over from the file.
    pub metadata: Vec<(String, String)>,
}

/// The payload of a [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Fixed-width elements, little-endian, ONNX raw layout.
    Raw(Arc<Vec<u8>>),
    /// UTF-8 (or arbitrary) byte strings, one per element.
    Strings(Vec<Vec<u8>>),
}

impl Tensor {
    /// Builds a tensor from raw bytes, checking the length against the shape.
    pub fn from_raw(
        name: impl Into<String>,
        dtype: DType,
        dims: Vec<i64>,
        bytes: Vec<u8>,
    ) -> Result<Self, GraphError> {
        let name = name.into();
        let numel = numel_of(&dims).ok_or_else(|| GraphError::BadTensor {
            name: name.clone(),
            reason: format!("invalid dims {dims:?}"),
        })?;
        let expected = dtype.byte_len(numel).ok_or_else(|| GraphError::BadTensor {
            name: name.clone(),
            reason: format!("element type {dtype} has no fixed size"),
        })?;
        if bytes.len() != expected {
            return Err(GraphError::BadTensor {
                reason: format!(
                    "data is {} bytes but shape {dims:?} of {dtype} needs {expected} bytes{}",
                    bytes.len(),
                    if bytes.len() < expected {
                        " (data shorter than its shape)"
                    } else {
                        ""
                    }
                ),
                name,
            });
        }
        Ok(Tensor {
            name,
            dtype,
            dims,
            data: TensorData::Raw(Arc::new(bytes)),
            doc_string: String::new(),
            metadata: Vec::new(),
        })
    }

    /// A float32 tensor from values.
    pub fn from_f32(
        name: impl Into<String>,
        dims: Vec<i64>,
        values: &[f32],
    ) -> Result<Self, GraphError> {
        Tensor::from_raw(
            name,
            DType::F32,
            dims,
            le_bytes(values.iter().map(|v| v.to_le_bytes())),
        )
    }

    /// An int64 tensor from values.
    pub fn from_i64(
        name: impl Into<String>,
        dims: Vec<i64>,
        values: &[i64],
    ) -> Result<Self, GraphError> {
        Tensor::from_raw(
            name,
            DType::I64,
            dims,
            le_bytes(values.iter().map(|v| v.to_le_bytes())),
        )
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel_of(&self.dims).unwrap_or(0)
    }

    /// Raw bytes, or `None` for string tensors.
    pub fn raw(&self) -> Option<&[u8]> {
        match &self.data {
            TensorData::Raw(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// Size of the payload in bytes.
    pub fn byte_size(&self) -> usize {
        match &self.data {
            TensorData::Raw(b) => b.len(),
            TensorData::Strings(s) => s.iter().map(Vec::len).sum(),
        }
    }

    /// Elements converted to f64 (integers and floats), `None` for other types.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let raw = self.raw()?;
        Some(match self.dtype {
            DType::F32 => chunks::<4>(raw)
                .map(|b| f32::from_le_bytes(b) as f64)
                .collect(),
            DType::F64 => chunks::<8>(raw).map(f64::from_le_bytes).collect(),
            DType::F16 => chunks::<2>(raw)
                .map(|b| half::f16::from_le_bytes(b).to_f64())
                .collect(),
            DType::BF16 => chunks::<2>(raw)
                .map(|b| half::bf16::from_le_bytes(b).to_f64())
                .collect(),
            _ => self.to_i64_vec()?.into_iter().map(|v| v as f64).collect(),
        })
    }

    /// Elements converted to f32.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.dtype == DType::F32 {
            return Some(chunks::<4>(self.raw()?).map(f32::from_le_bytes).collect());
        }
        Some(self.to_f64_vec()?.into_iter().map(|v| v as f32).collect())
    }

    /// Elements converted to i64 (integer and boolean types only).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let raw = self.raw()?;
        Some(match self.dtype {
            DType::I64 => chunks::<8>(raw).map(i64::from_le_bytes).collect(),
            DType::I32 => chunks::<4>(raw)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
            DType::U32 => chunks::<4>(raw)
                .map(|b| u32::from_le_bytes(b) as i64)
                .collect(),
            DType::U64 => chunks::<8>(raw)
                .map(|b| u64::from_le_bytes(b) as i64)
                .collect(),
            DType::I16 => chunks::<2>(raw)
                .map(|b| i16::from_le_bytes(b) as i64)
                .collect(),
            DType::U16 => chunks::<2>(raw)
                .map(|b| u16::from_le_bytes(b) as i64)
                .collect(),
            DType::I8 => raw.iter().map(|&b| b as i8 as i64).collect(),
            DType::U8 | DType::BOOL => raw.iter().map(|&b| b as i64).collect(),
            _ => return None,
        })
    }
}

/// Product of dims, `None` if any is negative or it overflows.
pub fn numel_of(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// The concatenated little-endian encodings of `items`, in one allocation of the exact size
/// (`flat_map(..).collect()` has no size hint and grows a large tensor's buffer by doubling,
/// each time on fresh pages).
pub fn le_bytes<const N: usize>(items: impl ExactSizeIterator<Item = [u8; N]>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(items.len() * N);
    items.for_each(|b| bytes.extend_from_slice(&b));
    bytes
}

/// `le_bytes` as a method of the iterator.
pub trait LeBytes {
    fn le_bytes(self) -> Vec<u8>;
}

impl<const N: usize, I: ExactSizeIterator<Item = [u8; N]>> LeBytes for I {
    fn le_bytes(self) -> Vec<u8> {
        le_bytes(self)
    }
}
