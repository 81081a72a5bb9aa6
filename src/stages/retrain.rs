//! `retrain`: fine-tunes the float model on labelled data (after pruning or
//! decomposition, or from scratch), validating after each epoch, keeping the
//! best epoch and stopping early when asked. Pruned weights (exact zeros)
//! stay zero. Checkpoints go to the stage's checkpoint folder in the cache.

use super::supervised::{validate, Supervised};
use super::{StageContext, StageError, StageOutput};
use crate::recipe::TrainParams;
use crate::train::{FitSummary, RunSetup, Trainer, Validation};

/// The loss curve's file in the stage's outputs (linked from report.md).
const LOSS_PLOT: &str = "loss_curve.svg";

pub fn run(ctx: &StageContext, params: &TrainParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(crate::recipe::MODEL);
    let model = ctx.model(input)?;
    let data = ctx.data.ok_or_else(|| {
        StageError::Invalid("retrain needs `data` (a labelled training set)".into())
    })?;
    let mut trainer = Trainer::new(model, params, ctx.device, &[], false)?;
    let mut objective = Supervised {
        model,
        loss: params.loss.clone(),
    };
    let mut validator = |m: &crate::graph::Model| -> Result<Validation, crate::train::TrainError> {
        match ctx.validation {
            Some(v) => validate(m, v, &params.loss, ctx.seed, ctx.device),
            None => Ok(Validation::default()),
        }
    };
    let setup = RunSetup {
        data,
        seed: ctx.seed,
        checkpoint_dir: ctx.checkpoint_dir.as_deref(),
        label: &ctx.spec.name,
    };
    let summary = trainer.fit(&setup, &mut objective, Some(&mut validator))?;
    let trained = trainer.model()?;
    let mut out = StageOutput::new(Some(trained), training_metrics(&summary));
    push_loss_plot(&mut out, &summary, ctx);
    Ok(out)
}

/// A training stage's metrics: the history, and the kept epoch's validation figures.
pub(super) fn training_metrics(summary: &FitSummary) -> serde_json::Value {
    let mut metrics = summary.to_json();
    let kept = summary
        .progress
        .epochs
        .iter()
        .find(|e| e["epoch"] == summary.kept_epoch);
    if let Some(kept) = kept {
        metrics["val_accuracy"] = kept["val_accuracy"].clone();
        metrics["val_loss"] = kept["val_loss"].clone();
    }
    metrics
}

/// Adds the loss plot (`loss_curve.svg`, linked from report.md) to a training stage's outputs.
pub(super) fn push_loss_plot(out: &mut StageOutput, summary: &FitSummary, ctx: &StageContext) {
    let title = format!("{} ({})", ctx.spec.name, ctx.spec.kind.name());
    if let Some(svg) = summary.loss_svg(&title) {
        out.files.push((LOSS_PLOT.to_string(), svg.into_bytes()));
    }
}
