//! Training over the executor, shared by the `retrain`, `qat` and `distill`
//! stages: optimizers, learning-rate schedules, losses, the training graph
//! (BatchNormalization modes, parameter selection, sparsity masks),
//! checkpoints, and the loop that ties them together.

pub mod checkpoint;
pub mod graph;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod summary;
pub mod trainer;

use thiserror::Error;

pub use summary::FitSummary;
pub use trainer::{Objective, RunSetup, Trainer, Validation, Validator};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("checkpoint {0}")]
    Checkpoint(String),
    #[error("internal: {0}")]
    Internal(String),
}
