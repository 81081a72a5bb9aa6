//! Data sets for calibration, training and evaluation: the `[data.NAME]`
//! schema (`DataConfig`), sources (npz/npy, IDX, image folders) read lazily
//! sample by sample, preprocessing (resize, crop, scale, mean/std, channel
//! order, layout), deterministic shuffling and augmentation from a seed,
//! streaming batches as candle tensors, and a content hash for cache keys.

mod array;
mod batches;
mod config;
mod dataset;
mod error;
mod hash;
mod idx;
mod images;
mod npy;
mod npz;
mod preprocess;
mod resize;
pub mod rng;

pub use batches::{epoch_order, Batch, BatchOptions, Batches};
pub use config::{Augment, ChannelOrder, DataConfig, Format, Layout, Preprocess, RandomCrop, Size};
pub use dataset::{open_dataset, Dataset, Sample};
pub use error::{DataError, FieldError};
pub use hash::content_hash;
