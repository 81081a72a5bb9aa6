//! Stage kinds: one file per kind. A stage reads the models it references
//! (already loaded) and its data set, and returns a model and/or metrics.

mod adaround;
mod compare;
mod distill;
mod eval;
mod feed;
mod fuse;
mod qat;
mod quantize;
mod quantize_rollback;
mod retrain;
mod smoothquant;
mod supervised;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Device;
use thiserror::Error;

use crate::data::DataConfig;
use crate::graph::Model;
use crate::recipe::{StageParams, StageSpec};

/// Everything a stage may read.
pub struct StageContext<'a> {
    pub spec: &'a StageSpec,
    /// Models by stage name ("model" is the source), for every reference.
    pub models: &'a BTreeMap<String, Arc<Model>>,
    pub data: Option<&'a DataConfig>,
    /// A training stage's held-out set (`validation = "NAME"`).
    pub validation: Option<&'a DataConfig>,
    /// Where a training stage keeps its checkpoints (per cache key).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub seed: u64,
    pub device: &'a Device,
}

impl StageContext<'_> {
    /// The model named by a reference.
    pub fn model(&self, name: &str) -> Result<&Model, StageError> {
        self.models
            .get(name)
            .map(Arc::as_ref)
            .ok_or_else(|| StageError::Internal(format!("model of `{name}` was not loaded")))
    }
}

/// A stage's results.
pub struct StageOutput {
    pub model: Option<Model>,
    /// Further names for `model.onnx` (linked, not written twice).
    pub aliases: Vec<String>,
    /// Further models saved next to `model.onnx` (e.g. `deploy.onnx`).
    pub extra_models: Vec<(String, Model)>,
    /// Further files saved next to `model.onnx` (e.g. `quant_record.json`).
    pub files: Vec<(String, Vec<u8>)>,
    pub metrics: serde_json::Value,
}

impl StageOutput {
    /// An output with a model (or metrics) and nothing else.
    pub fn new(model: Option<Model>, metrics: serde_json::Value) -> Self {
        StageOutput {
            model,
            aliases: Vec::new(),
            extra_models: Vec::new(),
            files: Vec::new(),
            metrics,
        }
    }
}

#[derive(Debug, Error)]
pub enum StageError {
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error("{0}")]
    Invalid(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// Runs the stage described by `ctx.spec`.
pub fn run_stage(ctx: &StageContext) -> Result<StageOutput, StageError> {
    match &ctx.spec.params {
        StageParams::Fuse(p) => fuse::run(ctx, p),
        StageParams::Quantize(p) => quantize::run(ctx, p),
        StageParams::Eval(p) => eval::run(ctx, p),
        StageParams::Distill(p) => distill::run(ctx, p),
        StageParams::Train(p) if ctx.spec.kind == crate::recipe::StageKind::Qat => qat::run(ctx, p),
        StageParams::Train(p) => retrain::run(ctx, p),
    }
}
