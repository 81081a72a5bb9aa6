//! Sparse initializers (`SparseTensorProto`) expanded to dense tensors for
//! execution; the file keeps them sparse.

use std::path::Path;

use super::proto::SparseTensorProto;
use super::{tensor_from_proto, OnnxError};
use crate::graph::{tensor::numel_of, Tensor};

/// Expands a sparse tensor (linear [NNZ] or coordinate [NNZ, rank] indices).
pub fn sparse_to_dense(
    s: &SparseTensorProto,
    base_dir: Option<&Path>,
) -> Result<Tensor, OnnxError> {
    let values_proto = s.values.as_ref().ok_or_else(|| OnnxError::Tensor {
        name: "<sparse>".into(),
        reason: "sparse tensor without values".into(),
    })?;
    let values = tensor_from_proto(values_proto, base_dir)?;
    let name = values.name.clone();
    let err = |reason: String| OnnxError::Tensor {
        name: name.clone(),
        reason,
    };
    let numel = numel_of(&s.dims).ok_or_else(|| err(format!("invalid dims {:?}", s.dims)))?;
    let elem = values
        .dtype
        .byte_len(1)
        .filter(|_| values.dtype.bits().is_some_and(|b| b >= 8));
    let elem = elem.ok_or_else(|| err(format!("sparse {} is not supported", values.dtype)))?;
    let raw = values
        .raw()
        .ok_or_else(|| err("sparse string tensors are not supported".into()))?;
    let nnz = values.numel();
    let indices = match &s.indices {
        Some(i) => tensor_from_proto(i, base_dir)?
            .to_i64_vec()
            .ok_or_else(|| err("indices are not integers".into()))?,
        None => Vec::new(),
    };
    let rank = s.dims.len();
    let linear: Vec<i64> = if indices.len() == nnz {
        indices
    } else if rank > 0 && indices.len() == nnz * rank {
        indices
            .chunks(rank)
            .map(|c| {
                c.iter()
                    .zip(&s.dims)
                    .fold(0i64, |acc, (&i, &d)| acc * d + i)
            })
            .collect()
    } else {
        return Err(err(format!(
            "{} indices for {nnz} values of rank {rank}",
            indices.len()
        )));
    };
    let mut dense = vec![0u8; numel * elem];
    for (k, &idx) in linear.iter().enumerate() {
        let idx = usize::try_from(idx)
            .ok()
            .filter(|&i| i < numel)
            .ok_or_else(|| err(format!("index {idx} out of range")))?;
        dense[idx * elem..(idx + 1) * elem].copy_from_slice(&raw[k * elem..(k + 1) * elem]);
    }
    Tensor::from_raw(name.clone(), values.dtype, s.dims.clone(), dense)
        .map_err(|e| err(e.to_string()))
}
