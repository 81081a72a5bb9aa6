//! The `Dataset` trait (random access to preprocessed samples), the internal
//! `Source` trait the file formats implement, and `open_dataset`, which
//! validates a config, opens its source, builds the preprocessing pipeline
//! and applies `limit`. Opening reads headers only, never all samples.

use std::path::PathBuf;

use super::config::{DataConfig, Format};
use super::error::DataError;
use super::preprocess::{Pipeline, SourceInfo};
use super::{idx, images, npz};

/// One preprocessed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Values in the configured layout, `sample_shape()` elements.
    pub x: Vec<f32>,
    /// Class index, when the data set has labels.
    pub y: Option<i64>,
}

/// Random access to the samples of a data set, decoded on demand.
pub trait Dataset: Send + Sync {
    /// Number of samples (after `limit`).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample, without the batch axis.
    fn sample_shape(&self) -> &[usize];

    /// Whether every sample has a label.
    fn has_labels(&self) -> bool;

    /// Class names by label index (image folders only).
    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// Sample `i` with preprocessing, without augmentation.
    fn get(&self, i: usize) -> Result<Sample, DataError>;

    /// Sample `i` with the configured augmentation drawn from `seed`;
    /// the same as `get` where no augmentation is configured.
    fn get_augmented(&self, i: usize, seed: u64) -> Result<Sample, DataError> {
        let _ = seed;
        self.get(i)
    }
}

/// A raw sample as stored: values in stored units (0..255 for 8-bit data).
pub(crate) struct Raw {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub y: Option<i64>,
}

/// A file format's view of a data set, before preprocessing.
pub(crate) trait Source: Send + Sync {
    fn info(&self) -> &SourceInfo;
    fn len(&self) -> usize;
    fn has_labels(&self) -> bool;
    fn class_names(&self) -> Option<&[String]> {
        None
    }
    fn read(&self, i: usize) -> Result<Raw, DataError>;
    /// The file sample `i` comes from, for error messages.
    fn origin(&self, i: usize) -> PathBuf;
}

struct PipelineDataset {
    src: Box<dyn Source>,
    pipe: Pipeline,
    len: usize,
}

impl PipelineDataset {
    fn fetch(&self, i: usize, aug: Option<u64>) -> Result<Sample, DataError> {
        if i >= self.len {
            return Err(DataError::OutOfRange {
                index: i,
                len: self.len,
            });
        }
        let raw = self.src.read(i)?;
        let (x, shape) = self.pipe.apply(&raw.shape, raw.data, aug);
        if shape != self.pipe.out_shape {
            return Err(DataError::InconsistentSize {
                path: self.src.origin(i),
                found: shape,
                expected: self.pipe.out_shape.clone(),
            });
        }
        Ok(Sample { x, y: raw.y })
    }
}

impl Dataset for PipelineDataset {
    fn len(&self) -> usize {
        self.len
    }
    fn sample_shape(&self) -> &[usize] {
        &self.pipe.out_shape
    }
    fn has_labels(&self) -> bool {
        self.src.has_labels()
    }
    fn class_names(&self) -> Option<&[String]> {
        self.src.class_names()
    }
    fn get(&self, i: usize) -> Result<Sample, DataError> {
        self.fetch(i, None)
    }
    fn get_augmented(&self, i: usize, seed: u64) -> Result<Sample, DataError> {
        self.fetch(i, Some(seed))
    }
}

/// Opens the data set described by `cfg` (paths already resolved).
pub fn open_dataset(cfg: &DataConfig) -> Result<Box<dyn Dataset>, DataError> {
    if let Err(errs) = cfg.validate() {
        if let Some(e) = errs.into_iter().next() {
            return Err(DataError::Config(e));
        }
    }
    let src: Box<dyn Source> = match cfg.format {
        Format::Npz => Box::new(npz::open_npz(cfg)?),
        Format::Npy => Box::new(npz::open_npy(cfg)?),
        Format::Idx => Box::new(idx::open(cfg)?),
        Format::Images => Box::new(images::open(cfg)?),
    };
    if src.len() == 0 {
        return Err(DataError::Empty {
            path: cfg.path.clone(),
        });
    }
    let pipe = Pipeline::new(cfg, src.info())?;
    let len = cfg.limit.map_or(src.len(), |l| l.min(src.len()));
    Ok(Box::new(PipelineDataset { src, pipe, len }))
}
