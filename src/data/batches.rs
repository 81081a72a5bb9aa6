//! Batching: a `Batches` iterator over a `Dataset` that yields `[B, ...]` f32
//! tensors (and i64 `[B]` labels) on a device. The order is the natural one,
//! or a permutation fixed by (seed, epoch) when shuffling; augmentation is
//! drawn from (seed, epoch, sample index). Only the current batch's samples
//! are in memory; they are loaded on the rayon pool.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::config::DataConfig;
use super::dataset::{Dataset, Sample};
use super::error::DataError;
use super::rng::{derive_seed, permutation};

const SHUFFLE_TAG: u64 = 0x5348_5546;
const AUGMENT_TAG: u64 = 0x4155_4750;

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32 `[B, ...sample_shape]`.
    pub x: Tensor,
    /// i64 `[B]` when the data set has labels.
    pub y: Option<Tensor>,
    /// The data set indices of the samples, in batch order.
    pub indices: Vec<usize>,
}

/// How to walk a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    /// The recipe seed.
    pub seed: u64,
    pub epoch: u64,
    /// Apply the data set's configured augmentation (training only).
    pub augment: bool,
    /// Skip a last batch smaller than `batch_size`.
    pub drop_last: bool,
}

impl BatchOptions {
    /// `batch_size` and `shuffle` from the config; no augmentation.
    pub fn from_config(cfg: &DataConfig, seed: u64, epoch: u64) -> Self {
        BatchOptions {
            batch_size: cfg.batch_size.max(1),
            shuffle: cfg.shuffle,
            seed,
            epoch,
            augment: false,
            drop_last: false,
        }
    }
}

/// The sample order of one epoch: `0..n`, or a seeded permutation.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    if shuffle {
        permutation(n, derive_seed(seed, SHUFFLE_TAG, epoch, 0))
    } else {
        (0..n).collect()
    }
}

/// Iterator of `Result<Batch, DataError>` over one epoch.
pub struct Batches<'a> {
    ds: &'a dyn Dataset,
    opts: BatchOptions,
    order: Vec<usize>,
    pos: usize,
    device: Device,
}

impl<'a> Batches<'a> {
    pub fn new(ds: &'a dyn Dataset, opts: BatchOptions, device: &Device) -> Self {
        let opts = BatchOptions {
            batch_size: opts.batch_size.max(1),
            ..opts
        };
        let order = epoch_order(ds.len(), opts.shuffle, opts.seed, opts.epoch);
        Batches {
            ds,
            opts,
            order,
            pos: 0,
            device: device.clone(),
        }
    }

    /// Number of batches this epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.order.len(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Moves past the next `n` batches without loading them (resuming mid-epoch).
    pub fn skip_batches(&mut self, n: usize) {
        self.pos = (self.pos + n * self.opts.batch_size).min(self.order.len());
    }

    /// The sample order of this epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    fn load(&self, i: usize) -> Result<Sample, DataError> {
        if self.opts.augment {
            let seed = derive_seed(self.opts.seed, AUGMENT_TAG, self.opts.epoch, i as u64);
            self.ds.get_augmented(i, seed)
        } else {
            self.ds.get(i)
        }
    }

    /// Loads the samples `idx` on the rayon pool (in order).
    fn load_all(&self, idx: &[usize]) -> Result<Vec<Sample>, DataError> {
        if idx.len() < 4 {
            return idx.iter().map(|&i| self.load(i)).collect();
        }
        idx.par_iter().map(|&i| self.load(i)).collect()
    }

    fn make(&self, idx: Vec<usize>) -> Result<Batch, DataError> {
        let samples = self.load_all(&idx)?;
        let shape = self.ds.sample_shape();
        let per: usize = shape.iter().product();
        let mut xs = Vec::with_capacity(per * samples.len());
        let mut ys = Vec::with_capacity(samples.len());
        for (s, &i) in samples.iter().zip(&idx) {
            if s.x.len() != per {
                return Err(DataError::Shape {
                    path: format!("sample {i}").into(),
                    message: format!("{} values, expected {per} for shape {shape:?}", s.x.len()),
                });
            }
            xs.extend_from_slice(&s.x);
            ys.extend(s.y);
        }
        let mut dims = vec![samples.len()];
        dims.extend_from_slice(shape);
        let x = Tensor::from_vec(xs, dims, &self.device)?;
        let y = if self.ds.has_labels() && ys.len() == samples.len() {
            Some(Tensor::from_vec(ys, samples.len(), &self.device)?)
        } else {
            None
        };
        Ok(Batch { x, y, indices: idx })
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.opts.batch_size;
        let end = (self.pos + b).min(self.order.len());
        if end <= self.pos || (self.opts.drop_last && end - self.pos < b) {
            return None;
        }
        let idx = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(self.make(idx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .num_batches()
            .saturating_sub(self.pos.div_ceil(self.opts.batch_size));
        (left, Some(left))
    }
}
