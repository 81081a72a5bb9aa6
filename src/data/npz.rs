//! npz archives (a zip of `.npy` arrays: samples `x`, optional labels `y`)
//! and single `.npy` files, with labels optionally from a separate `.npy`.
//! Stored (uncompressed) arrays are read sample by sample from the file;
//! deflated ones (`np.savez_compressed`) are inflated once into memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use zip::CompressionMethod;

use super::array::{labels_from, ArrayStore};
use super::config::DataConfig;
use super::dataset::{Raw, Source};
use super::error::{open_file, DataError};
use super::npy;
use super::preprocess::SourceInfo;

/// Samples from an array, labels (if any) held in memory.
pub(crate) struct ArraySource {
    pub info: SourceInfo,
    pub path: PathBuf,
    pub x: ArrayStore,
    pub y: Option<Vec<i64>>,
}

impl ArraySource {
    pub fn new(path: &Path, x: ArrayStore, y: Option<Vec<i64>>, add_channel: bool) -> Self {
        let info = SourceInfo {
            first_shape: x.sample_shape().to_vec(),
            planar: false,
            add_channel,
            is_u8: x.dtype.is_u8(),
        };
        ArraySource {
            info,
            path: path.to_path_buf(),
            x,
            y,
        }
    }
}

impl Source for ArraySource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn len(&self) -> usize {
        self.x.len()
    }
    fn has_labels(&self) -> bool {
        self.y.is_some()
    }
    fn read(&self, i: usize) -> Result<Raw, DataError> {
        Ok(Raw {
            shape: self.x.sample_shape().to_vec(),
            data: self.x.read_f32(i)?,
            y: self.y.as_ref().and_then(|y| y.get(i).copied()),
        })
    }
    fn origin(&self, _i: usize) -> PathBuf {
        self.path.clone()
    }
}

fn bad_npy(path: &Path, message: String) -> DataError {
    DataError::BadNpy {
        path: path.to_path_buf(),
        message,
    }
}

/// A `.npy` file read in place.
fn npy_file(path: &Path) -> Result<ArrayStore, DataError> {
    let mut f = open_file(path)?;
    let h = npy::read_header(&mut f).map_err(|m| bad_npy(path, m))?;
    ArrayStore::in_file(path, h.data_offset, h.dtype, h.shape)
}

/// The array `name` of an npz archive, or `None` when it has no such entry.
fn npz_array(path: &Path, name: &str) -> Result<Option<ArrayStore>, DataError> {
    let bad = |e: zip::result::ZipError| DataError::BadNpz {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(open_file(path)?).map_err(bad)?;
    let Some(index) = zip
        .index_for_name(&format!("{name}.npy"))
        .or_else(|| zip.index_for_name(name))
    else {
        return Ok(None);
    };
    let mut entry = zip.by_index(index).map_err(bad)?;
    let entry_name = entry
        .name()
        .map(|n| n.into_owned())
        .unwrap_or_else(|_| name.to_string());
    let ctx = PathBuf::from(format!("{}:{entry_name}", path.display()));
    if entry.compression() == CompressionMethod::Stored && !entry.encrypted() {
        if let Some(start) = entry.data_start() {
            let size = entry.size();
            let h = npy::read_header(&mut entry).map_err(|m| bad_npy(&ctx, m))?;
            let need = h
                .nbytes()
                .map_or(u64::MAX, |n| n.saturating_add(h.data_offset));
            if size < need {
                return Err(DataError::Truncated {
                    path: ctx,
                    expected: need,
                    found: size,
                });
            }
            drop(entry);
            return ArrayStore::in_file(path, start + h.data_offset, h.dtype, h.shape).map(Some);
        }
    }
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(&ctx, e))?;
    let h = npy::read_header(&mut bytes.as_slice()).map_err(|m| bad_npy(&ctx, m))?;
    ArrayStore::in_memory(&ctx, bytes, h.data_offset, h.dtype, h.shape).map(Some)
}

fn npz_names(path: &Path) -> String {
    let names = open_file(path)
        .ok()
        .and_then(|f| zip::ZipArchive::new(f).ok())
        .map(|z| {
            z.file_names()
                .flatten()
                .map(|n| n.trim_end_matches(".npy").to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn labels_file(cfg: &DataConfig, n: usize) -> Result<Option<Vec<i64>>, DataError> {
    match &cfg.labels {
        None => Ok(None),
        Some(l) => labels_from(&npy_file(l)?, l, n).map(Some),
    }
}

/// `format = "npz"`.
pub(crate) fn open_npz(cfg: &DataConfig) -> Result<ArraySource, DataError> {
    let path = &cfg.path;
    let x = npz_array(path, cfg.x_name())?.ok_or_else(|| DataError::MissingArray {
        path: path.clone(),
        name: cfg.x_name().to_string(),
        present: npz_names(path),
    })?;
    let y = if cfg.labels.is_some() {
        labels_file(cfg, x.len())?
    } else {
        match npz_array(path, cfg.y_name())? {
            Some(y) => Some(labels_from(&y, path, x.len())?),
            None if cfg.y.is_some() => {
                return Err(DataError::MissingArray {
                    path: path.clone(),
                    name: cfg.y_name().to_string(),
                    present: npz_names(path),
                })
            }
            None => None,
        }
    };
    Ok(ArraySource::new(path, x, y, false))
}

/// `format = "npy"`: the samples in one `.npy`, labels from `labels`.
pub(crate) fn open_npy(cfg: &DataConfig) -> Result<ArraySource, DataError> {
    let x = npy_file(&cfg.path)?;
    let y = labels_file(cfg, x.len())?;
    Ok(ArraySource::new(&cfg.path, x, y, false))
}
