//! A stored N-d array whose first axis indexes samples (npy, npz, IDX). An
//! uncompressed array is read sample by sample from its file at a byte
//! offset, so only the samples asked for are ever in memory; a compressed one
//! (deflated npz entry, gzipped IDX) is inflated once into memory.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::{open_file, DataError};
use super::npy::DType;

enum Storage {
    File(Mutex<std::fs::File>),
    Memory(Vec<u8>),
}

/// Samples of one array: element type, shape `[N, ...]`, and where the bytes are.
pub(crate) struct ArrayStore {
    path: PathBuf,
    pub dtype: DType,
    pub shape: Vec<usize>,
    offset: u64,
    storage: Storage,
}

impl ArrayStore {
    /// An array inside a file at byte `offset`; checks the file is long enough.
    pub fn in_file(
        path: &Path,
        offset: u64,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<Self, DataError> {
        let file = open_file(path)?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let s = ArrayStore {
            path: path.to_path_buf(),
            dtype,
            shape,
            offset,
            storage: Storage::File(Mutex::new(file)),
        };
        s.check_len(len)?;
        Ok(s)
    }

    /// An array held in memory, starting at `offset` in `bytes`.
    pub fn in_memory(
        path: &Path,
        bytes: Vec<u8>,
        offset: u64,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<Self, DataError> {
        let len = bytes.len() as u64;
        let s = ArrayStore {
            path: path.to_path_buf(),
            dtype,
            shape,
            offset,
            storage: Storage::Memory(bytes),
        };
        s.check_len(len)?;
        Ok(s)
    }

    fn check_len(&self, available: u64) -> Result<(), DataError> {
        if self.shape.is_empty() {
            return Err(DataError::shape(
                &self.path,
                "a 0-d array holds no samples; expected shape [N, ...]",
            ));
        }
        let expected = self
            .shape
            .iter()
            .try_fold(self.dtype.size as u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|t| t.checked_add(self.offset))
            .ok_or_else(|| {
                DataError::shape(&self.path, format!("shape {:?} is too large", self.shape))
            })?;
        if available < expected {
            return Err(DataError::Truncated {
                path: self.path.clone(),
                expected,
                found: available,
            });
        }
        Ok(())
    }

    /// Number of samples (the first axis).
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// The shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.shape[1..]
    }

    fn sample_bytes(&self) -> usize {
        self.sample_shape().iter().product::<usize>() * self.dtype.size
    }

    /// `n` raw bytes from `start` (relative to the array's first element).
    fn read_range(&self, start: u64, n: usize) -> Result<Vec<u8>, DataError> {
        let start = self.offset + start;
        match &self.storage {
            Storage::Memory(bytes) => {
                let s = start as usize;
                bytes
                    .get(s..s + n)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| DataError::Truncated {
                        path: self.path.clone(),
                        expected: (s + n) as u64,
                        found: bytes.len() as u64,
                    })
            }
            Storage::File(file) => {
                let mut buf = vec![0u8; n];
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.seek(SeekFrom::Start(start))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| DataError::io(&self.path, e))?;
                Ok(buf)
            }
        }
    }

    /// Sample `i` converted to f32.
    pub fn read_f32(&self, i: usize) -> Result<Vec<f32>, DataError> {
        let n = self.sample_bytes();
        let bytes = self.read_range((i * n) as u64, n)?;
        let mut out = Vec::with_capacity(bytes.len() / self.dtype.size);
        self.dtype.decode_f32(&bytes, &mut out);
        Ok(out)
    }

    /// Every element as i64 (for label arrays, which are small).
    pub fn read_all_i64(&self) -> Result<Vec<i64>, DataError> {
        let bytes = self.read_range(0, self.len() * self.sample_bytes())?;
        let mut out = Vec::with_capacity(self.len());
        for (i, b) in bytes.chunks_exact(self.dtype.size).enumerate() {
            let v = self.dtype.to_f64(b);
            if v.fract() != 0.0 || !v.is_finite() {
                return Err(DataError::BadLabels {
                    path: self.path.clone(),
                    message: format!("label {v} at index {i} is not an integer"),
                });
            }
            out.push(v as i64);
        }
        Ok(out)
    }
}

/// Labels `[N]` or `[N, 1]` from an array, checked against `n` samples.
pub(crate) fn labels_from(
    store: &ArrayStore,
    path: &Path,
    n: usize,
) -> Result<Vec<i64>, DataError> {
    if store.sample_shape().iter().product::<usize>() != 1 {
        return Err(DataError::BadLabels {
            path: path.to_path_buf(),
            message: format!(
                "labels must have shape [N] or [N, 1], found {:?}",
                store.shape
            ),
        });
    }
    if store.len() != n {
        return Err(DataError::LengthMismatch {
            path: path.to_path_buf(),
            x_len: n,
            y_len: store.len(),
        });
    }
    store.read_all_i64()
}
