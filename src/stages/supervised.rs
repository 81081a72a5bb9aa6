//! Supervised training pieces shared by `retrain` and `qat`: the objective
//! (the configured loss between the model's first output and the batch's
//! labels) and the per-epoch validation (mean loss and top-1 accuracy on a
//! held-out data set, run in inference form).

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor};

use super::feed::{batch_feeds, first_output};
use crate::data::{open_dataset, Batch, BatchOptions, Batches, DataConfig};
use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::Model;
use crate::recipe::{LossConfig, LossKind};
use crate::train::loss::{correct, cross_entropy, mse};
use crate::train::{Objective, TrainError, Validation};

/// The loss of `logits` `[N, C]` against integer `labels` `[N]`: cross-entropy,
/// or MSE against one-hot targets (the label value itself when `C == 1`).
pub fn supervised_loss(
    logits: &Tensor,
    labels: &Tensor,
    cfg: &LossConfig,
) -> Result<Tensor, TrainError> {
    let logits = logits.flatten_from(1)?;
    match cfg.kind {
        LossKind::CrossEntropy => cross_entropy(&logits, labels, cfg.label_smoothing),
        LossKind::Mse => {
            let (n, c) = logits.dims2()?;
            let target = if c == 1 {
                labels.to_dtype(logits.dtype())?.reshape((n, 1))?
            } else {
                let idx = labels.to_dtype(CDType::U32)?.reshape((n, 1))?;
                let ones = Tensor::ones((n, 1), logits.dtype(), logits.device())?;
                Tensor::zeros((n, c), logits.dtype(), logits.device())?
                    .scatter_add(&idx, &ones, 1)?
            };
            mse(&logits, &target)
        }
    }
}

fn labels_of(batch: &Batch) -> Result<&Tensor, TrainError> {
    batch.y.as_ref().ok_or_else(|| {
        TrainError::Shape(
            "the training data set has no labels (give `labels` or an npz `y`)".into(),
        )
    })
}

/// Labels as the training target of the model's first output.
pub struct Supervised<'a> {
    pub model: &'a Model,
    pub loss: LossConfig,
}

impl Objective for Supervised<'_> {
    fn feeds(&mut self, batch: &Batch) -> Result<HashMap<String, Value>, TrainError> {
        batch_feeds(self.model, &batch.x).map_err(|e| TrainError::Shape(e.to_string()))
    }

    fn loss(
        &mut self,
        outputs: &[Value],
        batch: &Batch,
    ) -> Result<(Tensor, Option<usize>), TrainError> {
        let logits = outputs
            .first()
            .ok_or_else(|| TrainError::Shape("the model has no output".into()))?
            .tensor
            .flatten_from(1)?;
        let labels = labels_of(batch)?;
        let loss = supervised_loss(&logits, labels, &self.loss)?;
        Ok((loss, Some(correct(&logits.detach(), labels)?)))
    }
}

/// Mean loss and top-1 accuracy of `model` on `data` (inference form).
pub fn validate(
    model: &Model,
    data: &DataConfig,
    loss: &LossConfig,
    seed: u64,
    device: &Device,
) -> Result<Validation, TrainError> {
    let exec = Executor::new(model, ExecOptions::inference(device))?;
    let ds = open_dataset(data)?;
    let batches = Batches::new(
        ds.as_ref(),
        BatchOptions::from_config(data, seed, 0),
        device,
    );
    let bar = crate::progress::bar(batches.num_batches() as u64, "batches", "validation");
    let (mut loss_sum, mut right, mut samples) = (0f64, 0usize, 0usize);
    for batch in batches {
        let batch = batch?;
        let logits =
            first_output(&exec, model, &batch.x).map_err(|e| TrainError::Shape(e.to_string()))?;
        let labels = labels_of(&batch)?;
        let n = batch.indices.len();
        let l = supervised_loss(&logits, labels, loss)?
            .to_dtype(CDType::F64)?
            .to_scalar::<f64>()?;
        loss_sum += l * n as f64;
        right += correct(&logits, labels)?;
        samples += n;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = samples.max(1) as f64;
    Ok(Validation {
        loss: Some(loss_sum / n),
        accuracy: Some(right as f64 / n),
    })
}
