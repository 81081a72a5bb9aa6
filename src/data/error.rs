//! Typed errors of the data layer. Every variant that concerns a file names
//! it; configuration errors name the key inside the `[data.NAME]` table so
//! the recipe layer can add file:line:col.

use std::path::PathBuf;

/// A problem with one key of a `[data.NAME]` table, found by
/// [`DataConfig::validate`](super::DataConfig::validate) or when a data set
/// is opened. `key` is dotted and relative to the table (`preprocess.mean`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Errors of opening, reading, preprocessing and batching a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data set {kind} not found: {path}")]
    NotFound { path: PathBuf, kind: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an IDX file (magic bytes {magic:02x?}, expected 00 00 <type> <rank>)")]
    NotIdx { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: truncated data: expected {expected} bytes, found {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: not a valid .npy array: {message}")]
    BadNpy { path: PathBuf, message: String },
    #[error("{path}: not a valid npz (zip) file: {message}")]
    BadNpz { path: PathBuf, message: String },
    #[error("{path}: no array '{name}' (arrays present: {present})")]
    MissingArray {
        path: PathBuf,
        name: String,
        present: String,
    },
    #[error("{path}: {x_len} samples but {y_len} labels")]
    LengthMismatch {
        path: PathBuf,
        x_len: usize,
        y_len: usize,
    },
    #[error("{path}: {message}")]
    BadLabels { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error(
        "{path}: image gives sample shape {found:?} but the data set's samples are {expected:?}; \
         set `preprocess.resize = [h, w]` or `preprocess.center_crop` so all samples have one size"
    )]
    InconsistentSize {
        path: PathBuf,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: no samples (empty data set)")]
    Empty { path: PathBuf },
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
    #[error("unknown data format '{0}' (expected one of npz, npy, images, idx)")]
    UnknownFormat(String),
    #[error("sample index {index} out of range (data set has {len} samples)")]
    OutOfRange { index: usize, len: usize },
    #[error("invalid data config: {0}")]
    Config(FieldError),
    #[error("building a batch tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        DataError::Config(FieldError::new(key, message))
    }

    pub(crate) fn shape(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Shape {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Opens a file, mapping a missing file to [`DataError::NotFound`].
pub(crate) fn open_file(path: &std::path::Path) -> Result<std::fs::File, DataError> {
    std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                kind: "file",
            }
        } else {
            DataError::io(path, e)
        }
    })
}
