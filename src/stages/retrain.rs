//! `retrain`: fine-tunes the float model on labelled data (after pruning or
//! decomposition, or from scratch), validating after each epoch, keeping the
//! best epoch and stopping early when asked. Pruned weights (exact zeros)
//! stay zero. Checkpoints go to the stage's checkpoint folder in the cache.

use super::supervised::{validate, Supervised};
use super::{StageContext, StageError, StageOutput};
use crate::recipe::TrainParams;
use crate::train::{RunSetup, Trainer, Validation};

/// The loss curve's file in the stage's outputs (linked from report.md).
const LOSS_PLOT: &str = "loss_curve.svg";

pub fn run(ctx: &StageContext, params: &TrainParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(crate::recipe::MODEL);
    let model = ctx.model(input)?;
    let data = ctx.data.ok_or_else(|| {
        StageError::Invalid("retrain needs `data` (a labelled training set)".into())
    })?;
    let mut trainer = Trainer::new(model, params, ctx.device, &[])?;
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
    let mut metrics = summary.to_json();
    if let Some(last) = summary
        .progress
        .epochs
        .iter()
        .rev()
        .find(|e| e["epoch"] == summary.kept_epoch)
    {
        metrics["val_accuracy"] = last["val_accuracy"].clone();
        metrics["val_loss"] = last["val_loss"].clone();
    }
    let mut out = StageOutput::new(Some(trained), metrics);
    if let Some(svg) = summary.loss_svg(&format!("{} ({})", ctx.spec.name, ctx.spec.kind.name())) {
        out.files.push((LOSS_PLOT.to_string(), svg.into_bytes()));
    }
    Ok(out)
}
