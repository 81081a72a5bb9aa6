//! Parameters of a `retrain` stage (and the training settings `qat` and
//! `distill` share): epochs, optimizer, learning-rate schedule, loss,
//! BatchNormalization mode, gradient clipping, checkpoints, validation,
//! keep-best and early stopping. Unknown keys are rejected by serde;
//! values serde cannot check are checked by [`TrainParams::problems`].

use serde::{Deserialize, Serialize};

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (optionally Nesterov) momentum, PyTorch's form.
    Sgd,
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    Adamw,
}

/// `optimizer = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    #[serde(default = "default_optimizer")]
    pub kind: OptimizerKind,
    /// Peak learning rate (after warm-up).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// L2 penalty for SGD, decoupled decay for AdamW. Applied to weights of
    /// rank 2 and more only (not to biases or normalization parameters).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW's moment decay rates.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW's denominator term.
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: default_optimizer(),
            lr: default_lr(),
            momentum: default_momentum(),
            nesterov: false,
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_adam_eps(),
        }
    }
}

/// The shape of the learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    /// Multiplied by `gamma` every `step_epochs` epochs.
    Step,
    /// Half a cosine from the peak down to `min_lr` at the last step.
    Cosine,
}

/// `schedule = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default = "default_schedule")]
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from 0 to the peak learning rate.
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "one")]
    pub step_epochs: usize,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default)]
    pub min_lr: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: default_schedule(),
            warmup_steps: 0,
            step_epochs: 1,
            gamma: default_gamma(),
            min_lr: 0.0,
        }
    }
}

/// The training loss on the model's first output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax cross-entropy against integer labels.
    CrossEntropy,
    /// Mean squared error against the labels as float targets.
    Mse,
}

/// `loss = { ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default = "default_loss")]
    pub kind: LossKind,
    /// Cross-entropy against (1 - s) one-hot + s / classes.
    #[serde(default)]
    pub label_smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: default_loss(),
            label_smoothing: 0.0,
        }
    }
}

/// What BatchNormalization does while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// Batch statistics; running statistics updated by each node's momentum;
    /// scale and bias trained.
    Train,
    /// Running statistics, as at inference; no BatchNormalization input changes.
    Frozen,
}

/// The validation metric that picks the best epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMetric {
    /// Top-1 accuracy (higher is better); needs labels.
    Accuracy,
    /// The training loss on the validation set (lower is better).
    Loss,
}

/// Parameters of a `retrain` stage.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    #[serde(default = "one")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (all epochs together).
    pub max_steps: Option<usize>,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub loss: LossConfig,
    /// Scale all gradients so their global L2 norm is at most this.
    pub clip_grad_norm: Option<f64>,
    #[serde(default = "default_batch_norm")]
    pub batch_norm: BatchNormMode,
    /// Weights (rank 2 and more) that hold exact zeros keep them: pruned
    /// weights stay pruned.
    #[serde(default = "yes")]
    pub keep_sparsity: bool,
    /// Save a checkpoint every N optimizer steps (and at each epoch's end);
    /// 0 = epoch ends only. A killed run resumes from the last one.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    #[serde(default = "default_metric")]
    pub metric: ValidationMetric,
    /// Return the epoch with the best validation metric, not the last one.
    #[serde(default = "yes")]
    pub keep_best: bool,
    /// Stop when the validation metric has not improved for N epochs.
    pub early_stopping: Option<usize>,
    /// Skip a last batch smaller than the batch size.
    #[serde(default = "yes")]
    pub drop_last: bool,
}

impl TrainParams {
    /// Values out of range, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let o = &self.optimizer;
        if self.epochs == 0 {
            out.push(("epochs", "must be at least 1".to_string()));
        }
        if self.max_steps == Some(0) {
            out.push(("max_steps", "must be at least 1".to_string()));
        }
        if !(o.lr.is_finite() && o.lr > 0.0) {
            out.push(("optimizer", format!("lr must be positive, got {}", o.lr)));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            out.push(("optimizer", "momentum must be in [0, 1)".to_string()));
        }
        if o.nesterov && (o.kind != OptimizerKind::Sgd || o.momentum == 0.0) {
            out.push((
                "optimizer",
                "nesterov needs kind = \"sgd\" and a momentum above 0".to_string(),
            ));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            out.push(("optimizer", "weight_decay must be 0 or more".to_string()));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) || o.eps.is_nan() || o.eps <= 0.0 {
            out.push((
                "optimizer",
                "betas must be in [0, 1) and eps above 0".to_string(),
            ));
        }
        let s = &self.schedule;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if s.step_epochs == 0
            || !positive(s.gamma)
            || s.min_lr.is_nan()
            || s.min_lr < 0.0
            || s.min_lr > o.lr
        {
            out.push((
                "schedule",
                "step_epochs must be at least 1, gamma above 0, 0 <= min_lr <= lr".to_string(),
            ));
        }
        if !(0.0..1.0).contains(&self.loss.label_smoothing) {
            out.push(("loss", "label_smoothing must be in [0, 1)".to_string()));
        }
        if self.loss.label_smoothing > 0.0 && self.loss.kind != LossKind::CrossEntropy {
            out.push((
                "loss",
                "label_smoothing applies to cross_entropy only".to_string(),
            ));
        }
        if self.clip_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            out.push(("clip_grad_norm", "must be above 0".to_string()));
        }
        if self.early_stopping == Some(0) {
            out.push(("early_stopping", "must be at least 1 epoch".to_string()));
        }
        out
    }
}

fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_lr() -> f64 {
    0.01
}
fn default_momentum() -> f64 {
    0.9
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_gamma() -> f64 {
    0.1
}
fn default_loss() -> LossKind {
    LossKind::CrossEntropy
}
fn default_batch_norm() -> BatchNormMode {
    BatchNormMode::Train
}
fn default_checkpoint_every() -> usize {
    200
}
fn default_metric() -> ValidationMetric {
    ValidationMetric::Accuracy
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

/// What a distilled block's output is compared with the teacher's by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockLoss {
    Mse,
    /// 1 - cosine similarity per sample.
    Cosine,
}

/// `distill = { ... }` of a `distill` stage.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Layers (Conv, ConvTranspose, Gemm, MatMul) per block, counted in the teacher.
    #[serde(default = "two")]
    pub block_size: usize,
    /// Blocks start at these layers (node names) instead of every `block_size` layers.
    #[serde(default)]
    pub block_starts: Vec<String>,
    #[serde(default = "default_block_loss")]
    pub loss: BlockLoss,
    /// Weight of KL(teacher ‖ student) on the final logits (0 = block losses only).
    #[serde(default)]
    pub kl_weight: f64,
    #[serde(default = "one_f64")]
    pub temperature: f64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            block_size: two(),
            block_starts: Vec::new(),
            loss: default_block_loss(),
            kl_weight: 0.0,
            temperature: 1.0,
        }
    }
}

impl DistillConfig {
    /// Values out of range, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.block_size == 0 {
            out.push(("distill", "block_size must be at least 1".to_string()));
        }
        if !(self.kl_weight.is_finite() && self.kl_weight >= 0.0) {
            out.push(("distill", "kl_weight must be 0 or more".to_string()));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            out.push(("distill", "temperature must be above 0".to_string()));
        }
        out
    }
}

/// Parameters of a `distill` stage: training settings and the blocks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistillParams {
    #[serde(flatten)]
    pub train: TrainParams,
    pub distill: DistillConfig,
}

fn two() -> usize {
    2
}
fn one_f64() -> f64 {
    1.0
}
fn default_block_loss() -> BlockLoss {
    BlockLoss::Mse
}
