//! The training loop shared by `retrain`, `qat` and `distill`: epochs of
//! seeded batches, forward in training mode, an objective's loss, backward,
//! optional gradient clipping, an optimizer step at the scheduled rate,
//! BatchNormalization running statistics written back, validation after
//! each epoch (keep-best, early stopping), a progress bar, and checkpoints
//! from which a killed run resumes with bit-identical results on CPU.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType as CDType, Device, Tensor, Var};
use serde_json::json;

use super::checkpoint::{self, Checkpoint, Progress};
use super::graph::{
    channel_max, quantization_scales, select_params, training_graph, weight_quantizers, with_values,
};
use super::optim::{clip_scale, grad_norm, Optimizer, Param};
use super::schedule::Schedule;
use super::summary::FitSummary;
use super::TrainError;
use crate::data::{open_dataset, Batch, BatchOptions, Batches, DataConfig};
use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::Model;
use crate::recipe::{BatchNormMode, TrainParams, ValidationMetric};

/// What a training stage optimizes.
pub trait Objective {
    /// The graph inputs for one batch.
    fn feeds(&mut self, batch: &Batch) -> Result<HashMap<String, Value>, TrainError>;
    /// The batch's loss from the model's graph outputs (in order), and the
    /// number of correct top-1 predictions when the objective has labels.
    fn loss(
        &mut self,
        outputs: &[Value],
        batch: &Batch,
    ) -> Result<(Tensor, Option<usize>), TrainError>;
}

/// Validation figures of one epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validation {
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
}

/// Validates the model (inference form) after an epoch.
pub type Validator<'a> = &'a mut dyn FnMut(&Model) -> Result<Validation, TrainError>;

/// Where and how one `fit` reads its data and keeps its checkpoints.
pub struct RunSetup<'a> {
    pub data: &'a DataConfig,
    pub seed: u64,
    pub checkpoint_dir: Option<&'a Path>,
    /// The progress bar's label (the stage name).
    pub label: &'a str,
}

/// A weight scale that follows its weight: `scale = channel max * ratio`, the ratio
/// fixed by the calibrated scale (which keeps a clip or a low-bit grid chosen by `quantize`).
struct WeightRange {
    weight: Var,
    scale: Var,
    axis: Option<usize>,
    ratio: Tensor,
}

/// Named tensors (a parameter snapshot).
type Named = Vec<(String, Tensor)>;

/// A model being trained.
pub struct Trainer {
    source: Model,
    exec: Executor,
    params: Vec<Param>,
    /// The running-statistic initializers, in `graph.running` order.
    running: Vec<Var>,
    /// QAT: weight scales recomputed from their weights after every step.
    weight_ranges: Vec<WeightRange>,
    outputs: usize,
    cfg: TrainParams,
    optimizer: Optimizer,
    device: Device,
}

impl Trainer {
    /// Prepares `model` for training with `cfg`; initializers in `frozen` are not trained.
    /// With `qat`, QuantizeLinear/DequantizeLinear pairs train as fake quantization.
    pub fn new(
        model: &Model,
        cfg: &TrainParams,
        device: &Device,
        frozen: &[String],
        qat: bool,
    ) -> Result<Self, TrainError> {
        let mut graph = training_graph(model, cfg.batch_norm);
        graph.frozen.extend(frozen.iter().cloned());
        let options = ExecOptions {
            device: device.clone(),
            float: CDType::F32,
            track_params: true,
            train: cfg.batch_norm == BatchNormMode::Train,
            qat,
        };
        let exec = Executor::new(&graph.model, options)?;
        let vars: HashMap<&str, &Var> = exec.params().collect();
        // Weight scales follow their weights (AMCT's ARQ); activation scales are learned.
        let mut weight_ranges = Vec::new();
        for wq in weight_quantizers(model).into_iter().filter(|_| qat) {
            let (Some(w), Some(s)) = (vars.get(wq.weight.as_str()), vars.get(wq.scale.as_str()))
            else {
                continue;
            };
            let start = channel_max(w.as_tensor(), wq.axis)?;
            let floor = start.maximum(f32::MIN_POSITIVE as f64)?;
            let ratio = (s.as_tensor().flatten_all()? / floor)?;
            graph.frozen.push(wq.scale.clone());
            weight_ranges.push(WeightRange {
                weight: (*w).clone(),
                scale: (*s).clone(),
                axis: wq.axis,
                ratio,
            });
        }
        let scales = if qat {
            quantization_scales(model)
        } else {
            Vec::new()
        };
        let params = select_params(exec.params(), &graph.frozen, &scales, cfg.keep_sparsity)?;
        let running = graph
            .running
            .iter()
            .map(|r| {
                vars.get(r.initializer.as_str())
                    .map(|v| (*v).clone())
                    .ok_or_else(|| TrainError::Internal(format!("no variable '{}'", r.initializer)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trainer {
            outputs: model.graph.outputs.len(),
            source: model.clone(),
            exec,
            params,
            running,
            weight_ranges,
            cfg: cfg.clone(),
            optimizer: Optimizer::new(&cfg.optimizer),
            device: device.clone(),
        })
    }

    /// The trained parameters.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The source model with the current values of every initializer.
    pub fn model(&self) -> Result<Model, TrainError> {
        self.values_into(&self.source)
    }

    /// `model` (a graph with the same initializers, e.g. before a training rewrite) with
    /// the current values of every initializer.
    pub fn values_into(&self, model: &Model) -> Result<Model, TrainError> {
        let values: Vec<(&str, &Tensor)> = self
            .exec
            .params()
            .map(|(n, v)| (n, v.as_tensor()))
            .collect();
        with_values(model, values.into_iter())
    }

    /// Copies of every initializer's current value.
    fn snapshot(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::new();
        for (n, v) in self.exec.params() {
            out.push((n.to_string(), v.as_tensor().copy()?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn restore(&self, values: &[(String, Tensor)]) -> Result<(), TrainError> {
        let vars: HashMap<&str, &Var> = self.exec.params().collect();
        for (name, t) in values {
            let var = vars
                .get(name.as_str())
                .ok_or_else(|| TrainError::Checkpoint(format!("unknown parameter '{name}'")))?;
            if var.dims() != t.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "parameter '{name}' is {:?} in the checkpoint, {:?} in the model",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn save(
        &self,
        dir: &Path,
        progress: &Progress,
        best: &Option<Named>,
    ) -> Result<(), TrainError> {
        let mut tensors: Vec<(String, Tensor)> = self
            .snapshot()?
            .into_iter()
            .map(|(n, t)| (format!("param/{n}"), t))
            .collect();
        let (steps, state) = self.optimizer.state();
        tensors.extend(state.into_iter().map(|(n, t)| (format!("optim/{n}"), t)));
        for (n, t) in best.iter().flatten() {
            tensors.push((format!("best/{n}"), t.clone()));
        }
        checkpoint::save(
            dir,
            &Checkpoint {
                progress: progress.clone(),
                tensors,
                optimizer_steps: steps,
            },
        )
    }

    /// Resumes from the checkpoint in `dir`: returns its progress and best parameters.
    fn resume(&mut self, dir: &Path) -> Result<Option<(Progress, Option<Named>)>, TrainError> {
        let Some(ckpt) = checkpoint::load(dir, &self.device)? else {
            return Ok(None);
        };
        let (mut params, mut optim, mut best) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in ckpt.tensors {
            match name.split_once('/') {
                Some(("param", n)) => params.push((n.to_string(), t)),
                Some(("optim", n)) => optim.push((n.to_string(), t)),
                Some(("best", n)) => best.push((n.to_string(), t)),
                _ => return Err(TrainError::Checkpoint(format!("unexpected entry '{name}'"))),
            }
        }
        self.restore(&params)?;
        self.optimizer.load_state(ckpt.optimizer_steps, optim)?;
        Ok(Some((ckpt.progress, (!best.is_empty()).then_some(best))))
    }

    /// Trains on `setup.data` with `objective`; validates after each epoch when `validate` is given.
    pub fn fit(
        &mut self,
        setup: &RunSetup,
        objective: &mut dyn Objective,
        mut validate: Option<Validator>,
    ) -> Result<FitSummary, TrainError> {
        let t0 = Instant::now();
        let cfg = self.cfg.clone();
        let ds = open_dataset(setup.data)?;
        let options = |epoch: usize| BatchOptions {
            batch_size: setup.data.batch_size.max(1),
            shuffle: setup.data.shuffle,
            seed: setup.seed,
            epoch: epoch as u64,
            augment: setup.data.augment.is_some(),
            drop_last: cfg.drop_last,
        };
        let per_epoch = Batches::new(ds.as_ref(), options(0), &self.device).num_batches();
        if per_epoch == 0 {
            return Err(TrainError::Data(crate::data::DataError::Shape {
                path: setup.data.path.clone(),
                message: format!(
                    "{} samples make no full batch of {} (set drop_last = false or a smaller batch_size)",
                    ds.len(),
                    setup.data.batch_size
                ),
            }));
        }
        let total = (cfg.epochs * per_epoch).min(cfg.max_steps.unwrap_or(usize::MAX));
        let schedule = Schedule::new(&cfg.schedule, cfg.optimizer.lr, per_epoch, total);
        let curve_every = (per_epoch / 20).max(1);
        let (mut p, mut best) = (Progress::default(), None);
        let mut resumed_at_step = None;
        if let Some(dir) = setup.checkpoint_dir {
            if let Some((progress, b)) = self.resume(dir)? {
                tracing::info!(
                    stage = setup.label,
                    step = progress.step,
                    "resuming from checkpoint"
                );
                resumed_at_step = Some(progress.step);
                (p, best) = (progress, b);
            }
        }
        let mut stopped_early = false;
        let mut samples_seen = 0usize;
        while p.epoch < cfg.epochs && p.step < total {
            let epoch_start = Instant::now();
            let mut batches = Batches::new(ds.as_ref(), options(p.epoch), &self.device);
            batches.skip_batches(p.batches_done);
            let in_epoch = per_epoch.min(total - (p.step - p.batches_done));
            let label = format!("{} epoch {}/{}", setup.label, p.epoch + 1, cfg.epochs);
            let bar = crate::progress::bar(in_epoch as u64, "steps", label.clone());
            bar.set_position(p.batches_done as u64);
            let mut lr = schedule.lr(p.step);
            for batch in batches {
                if p.step >= total {
                    break;
                }
                let batch = batch?;
                lr = schedule.lr(p.step);
                let (loss, correct) = self.step(objective, &batch, lr)?;
                let n = batch.x.dim(0)?;
                samples_seen += n;
                p.step += 1;
                p.batches_done += 1;
                p.epoch_loss += loss * n as f64;
                p.epoch_correct += correct.unwrap_or(0);
                p.labelled |= correct.is_some();
                p.epoch_samples += n;
                p.window_loss += loss;
                p.window_steps += 1;
                if p.window_steps == curve_every {
                    p.curve
                        .push((p.step, p.window_loss / p.window_steps as f64));
                    (p.window_loss, p.window_steps) = (0.0, 0);
                }
                bar.inc(1);
                if p.batches_done % 10 == 0 || p.batches_done == in_epoch {
                    let rate = samples_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                    let acc = correct.map_or(String::new(), |_| {
                        format!(
                            " acc {:.2}%",
                            100.0 * p.epoch_correct as f64 / p.epoch_samples.max(1) as f64
                        )
                    });
                    bar.set_message(format!(
                        "{label} loss {:.4}{acc} lr {lr:.3e} {rate:.0} samples/s",
                        p.epoch_loss / p.epoch_samples.max(1) as f64
                    ));
                }
                if let Some(dir) = setup.checkpoint_dir {
                    if cfg.checkpoint_every > 0 && p.step % cfg.checkpoint_every == 0 {
                        self.save(dir, &p, &best)?;
                    }
                }
            }
            bar.finish_and_clear();
            if p.window_steps > 0 {
                p.curve
                    .push((p.step, p.window_loss / p.window_steps as f64));
                (p.window_loss, p.window_steps) = (0.0, 0);
            }
            let validation = match validate.as_mut() {
                Some(v) => Some(v(&self.model()?)?),
                None => None,
            };
            let samples = p.epoch_samples.max(1) as f64;
            let train_accuracy = p.labelled.then(|| p.epoch_correct as f64 / samples);
            let record = json!({
                "epoch": p.epoch + 1,
                "step": p.step,
                "lr": lr,
                "train_loss": p.epoch_loss / samples,
                "train_accuracy": train_accuracy,
                "val_loss": validation.and_then(|v| v.loss),
                "val_accuracy": validation.and_then(|v| v.accuracy),
                "seconds": epoch_start.elapsed().as_secs_f64(),
            });
            crate::progress::suspend(
                || tracing::info!(stage = setup.label, record = %record, "epoch done"),
            );
            p.epochs.push(record);
            let score = validation.and_then(|v| match cfg.metric {
                ValidationMetric::Accuracy => v.accuracy,
                ValidationMetric::Loss => v.loss.map(|l| -l),
            });
            if let Some(score) = score {
                if p.best.is_none_or(|(b, _)| score > b) {
                    p.best = Some((score, p.epoch));
                    p.stale_epochs = 0;
                    if cfg.keep_best {
                        best = Some(self.snapshot()?);
                    }
                } else {
                    p.stale_epochs += 1;
                }
            }
            p.epoch += 1;
            (
                p.batches_done,
                p.epoch_loss,
                p.epoch_correct,
                p.epoch_samples,
            ) = (0, 0.0, 0, 0);
            if let Some(dir) = setup.checkpoint_dir {
                self.save(dir, &p, &best)?;
            }
            if cfg
                .early_stopping
                .is_some_and(|patience| p.stale_epochs >= patience)
            {
                stopped_early = true;
                break;
            }
        }
        let mut kept_epoch = p.epoch;
        if let (true, Some(values), Some((_, e))) = (cfg.keep_best, &best, p.best) {
            self.restore(values)?;
            kept_epoch = e + 1;
        }
        if let Some(b) = p.best.as_mut() {
            if cfg.metric == ValidationMetric::Loss {
                b.0 = -b.0;
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        Ok(FitSummary {
            progress: p,
            resumed_at_step,
            stopped_early,
            kept_epoch,
            seconds,
            samples_per_s: samples_seen as f64 / seconds.max(1e-9),
        })
    }

    /// One optimizer step on `batch`; returns the loss and the correct count.
    fn step(
        &mut self,
        objective: &mut dyn Objective,
        batch: &Batch,
        lr: f64,
    ) -> Result<(f64, Option<usize>), TrainError> {
        let feeds = objective.feeds(batch)?;
        let outs = self.exec.run(&feeds)?;
        let (model_outs, running) = outs.split_at(self.outputs.min(outs.len()));
        let (loss, correct) = objective.loss(model_outs, batch)?;
        let value = loss.to_dtype(CDType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(TrainError::Diverged(format!(
                "loss is {value} at step {}; lower the learning rate or set clip_grad_norm",
                self.optimizer.steps() + 1
            )));
        }
        let grads = loss.backward()?;
        let scale = match self.cfg.clip_grad_norm {
            Some(max) => clip_scale(grad_norm(&self.params, &grads)?, Some(max)),
            None => 1.0,
        };
        self.optimizer.step(&self.params, &grads, lr, scale)?;
        for (var, v) in self.running.iter().zip(running) {
            let t = v
                .tensor
                .detach()
                .to_dtype(var.dtype())?
                .reshape(var.shape())?;
            var.set(&t)?;
        }
        for r in &self.weight_ranges {
            let max = channel_max(&r.weight.as_tensor().detach(), r.axis)?;
            let s = (max * &r.ratio)?.maximum(f32::MIN_POSITIVE as f64)?;
            r.scale.set(&s.reshape(r.scale.shape())?)?;
        }
        Ok((value, correct))
    }
}
