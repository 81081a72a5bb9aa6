//! `distill`: block-wise distillation from a float teacher, no labels needed.
//! The teacher's layers (Conv, ConvTranspose, Gemm, MatMul) are grouped into
//! consecutive blocks (`block_size` layers, or starting at `block_starts`).
//! The student (a quantized model, trained as in `qat`, or a float one, e.g.
//! pruned) is rewired so that every block reads the teacher's value of its
//! input tensor (quantized by the student's own input quantizer) and its
//! output is compared with the teacher's (MSE or cosine; the last block's is
//! the model output, optionally with a KL term on the logits). All blocks
//! train at once in one pass, each on the teacher's input, as AMCT's
//! block-wise distillation does one block at a time.

use std::collections::HashMap;

use candle_core::Tensor;

use super::supervised::validate;
use super::{StageContext, StageError, StageOutput};
use crate::data::Batch;
use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::{DType, Model, ValueInfo};
use crate::quant::qat_graph::{export, record, training_graph, BiasSlot};
use crate::quant::QdqForm;
use crate::recipe::{BlockLoss, DistillConfig, DistillParams};
use crate::train::loss::{cosine_distance, kl_divergence, mse};
use crate::train::{Objective, RunSetup, TrainError, Trainer, Validation};

const LAYERS: [&str; 4] = ["Conv", "ConvTranspose", "Gemm", "MatMul"];
const TEACHER_SUFFIX: &str = "__amct_teacher";

/// Block boundaries: the input tensors of the first layer of every block but the first.
fn boundaries(teacher: &Model, cfg: &DistillConfig) -> Result<Vec<String>, StageError> {
    let order = crate::graph::topological_order(&teacher.graph)
        .map_err(|e| StageError::Invalid(e.to_string()))?;
    let layers: Vec<&crate::graph::Node> = order
        .iter()
        .map(|&i| &teacher.graph.nodes[i])
        .filter(|n| LAYERS.contains(&n.op_type.as_str()))
        .collect();
    let inputs: Vec<String> = teacher
        .graph
        .inputs
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let starts: Vec<&crate::graph::Node> = if cfg.block_starts.is_empty() {
        layers
            .iter()
            .skip(cfg.block_size)
            .step_by(cfg.block_size)
            .copied()
            .collect()
    } else {
        let mut v = Vec::new();
        for name in &cfg.block_starts {
            let node = layers.iter().find(|n| &n.name == name).ok_or_else(|| {
                StageError::Invalid(format!(
                    "distill.block_starts: the teacher has no layer named '{name}'"
                ))
            })?;
            v.push(*node);
        }
        v
    };
    let mut out: Vec<String> = starts
        .iter()
        .map(|n| n.inputs[0].clone())
        .filter(|t| !inputs.contains(t))
        .collect();
    out.dedup();
    Ok(out)
}

/// The student rewired for block-wise training: for each boundary `T`, the
/// student's own value (`T_float` before its quantizer, else `T`) becomes a
/// graph output, and its readers read the graph input `T` + TEACHER_SUFFIX.
/// Returns the graph and, per boundary, (student output name, teacher tensor).
fn rewire(
    student: &Model,
    bounds: &[String],
) -> Result<(Model, Vec<(String, String)>), StageError> {
    let mut m = student.clone();
    let mut pairs = Vec::new();
    for t in bounds {
        let float = format!("{t}_float");
        let produced = |name: &str| {
            m.graph
                .nodes
                .iter()
                .any(|n| n.outputs.iter().any(|o| o == name))
        };
        let src = if produced(&float) {
            float
        } else if produced(t) {
            t.clone()
        } else {
            return Err(StageError::Invalid(format!(
                "distill: the student has no tensor '{t}' (the teacher's block boundary); are teacher and student the same network?"
            )));
        };
        let fed = format!("{t}{TEACHER_SUFFIX}");
        for node in m.graph.nodes.iter_mut() {
            for i in node.inputs.iter_mut().filter(|i| **i == src) {
                *i = fed.clone();
            }
        }
        m.graph.inputs.push(ValueInfo {
            name: fed,
            dtype: Some(DType::F32),
            ..Default::default()
        });
        m.graph.outputs.push(ValueInfo {
            name: src.clone(),
            dtype: Some(DType::F32),
            ..Default::default()
        });
        pairs.push((src, t.clone()));
    }
    Ok((m, pairs))
}

/// Feeds the student the batch and the teacher's boundary values; the loss
/// compares each block's output with the teacher's.
struct BlockWise {
    teacher: Executor,
    input: String,
    /// (student output, teacher tensor) per boundary, in student-output order after the model outputs.
    pairs: Vec<(String, String)>,
    model_outputs: usize,
    cfg: DistillConfig,
    targets: HashMap<String, Tensor>,
    teacher_logits: Option<Tensor>,
}

impl Objective for BlockWise {
    fn feeds(&mut self, batch: &Batch) -> Result<HashMap<String, Value>, TrainError> {
        let x = Value::new(batch.x.clone(), DType::F32);
        let feeds = HashMap::from([(self.input.clone(), x.clone())]);
        let wanted: Vec<&str> = self.pairs.iter().map(|(_, t)| t.as_str()).collect();
        let mut targets = HashMap::new();
        let outs = self
            .teacher
            .run_observed(&feeds, &|n| wanted.contains(&n), &mut |n, v| {
                targets.insert(n.to_string(), v.tensor.detach());
                Ok(())
            })?;
        self.teacher_logits = outs.into_iter().next().map(|v| v.tensor.detach());
        let mut student = HashMap::from([(self.input.clone(), x)]);
        for (_, t) in &self.pairs {
            let v = targets
                .get(t)
                .ok_or_else(|| TrainError::Shape(format!("the teacher did not produce '{t}'")))?;
            student.insert(
                format!("{t}{TEACHER_SUFFIX}"),
                Value::new(v.clone(), DType::F32),
            );
        }
        self.targets = targets;
        Ok(student)
    }

    fn loss(
        &mut self,
        outputs: &[Value],
        _batch: &Batch,
    ) -> Result<(Tensor, Option<usize>), TrainError> {
        let block = |s: &Tensor, t: &Tensor| match self.cfg.loss {
            BlockLoss::Mse => mse(s, t),
            BlockLoss::Cosine => cosine_distance(s, t),
        };
        let logits = &outputs[0].tensor;
        let teacher_logits = self
            .teacher_logits
            .as_ref()
            .ok_or_else(|| TrainError::Internal("no teacher output".into()))?;
        let mut total = block(&logits.flatten_from(1)?, &teacher_logits.flatten_from(1)?)?;
        for (i, (_, t)) in self.pairs.iter().enumerate() {
            let s = &outputs[self.model_outputs + i].tensor;
            total = (total + block(s, &self.targets[t])?)?;
        }
        if self.cfg.kl_weight > 0.0 {
            let kl = kl_divergence(logits, teacher_logits, self.cfg.temperature)?;
            total = (total + (kl * self.cfg.kl_weight)?)?;
        }
        Ok((total, None))
    }
}

pub fn run(ctx: &StageContext, params: &DistillParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(crate::recipe::MODEL);
    let student = ctx.model(input)?;
    let teacher_name = ctx
        .spec
        .teacher
        .as_deref()
        .ok_or_else(|| StageError::Invalid("distill needs `teacher`".into()))?;
    let teacher = ctx.model(teacher_name)?;
    let data = ctx
        .data
        .ok_or_else(|| StageError::Invalid("distill needs `data`".into()))?;
    let quantized = student
        .graph
        .nodes
        .iter()
        .any(|n| n.op_type == "QuantizeLinear");
    let (base, biases): (Model, Vec<BiasSlot>) = if quantized {
        let g = training_graph(student)
            .map_err(|e| StageError::Invalid(format!("distill student `{input}`: {e}")))?;
        (g.model, g.biases)
    } else {
        (student.clone(), Vec::new())
    };
    let bounds = boundaries(teacher, &params.distill)?;
    let (graph, pairs) = rewire(&base, &bounds)?;
    let mut trainer = Trainer::new(&graph, &params.train, ctx.device, &[], quantized)?;
    let mut objective = BlockWise {
        teacher: Executor::new(teacher, ExecOptions::inference(ctx.device))?,
        input: super::feed::input_name(teacher)?,
        pairs,
        model_outputs: base.graph.outputs.len(),
        cfg: params.distill.clone(),
        targets: HashMap::new(),
        teacher_logits: None,
    };
    let train = &params.train;
    let mut validator = |m: &Model| -> Result<Validation, TrainError> {
        match ctx.validation {
            // The rewired graph's values, put back into the plain student graph.
            Some(v) => validate(&current(m, &base), v, &train.loss, ctx.seed, ctx.device),
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
    let trained = trainer.values_into(&base)?;
    let metrics = super::retrain::training_metrics(&summary);
    let mut metrics = metrics;
    metrics["blocks"] = serde_json::json!(bounds.len() + 1);
    metrics["block_boundaries"] = serde_json::json!(bounds);
    let mut out = if quantized {
        let invalid =
            |e: crate::graph::GraphError| StageError::Invalid(format!("distill export: {e}"));
        let fake = export(&trained, &biases, QdqForm::FakeQuant).map_err(invalid)?;
        let deploy = export(&trained, &biases, QdqForm::Deploy).map_err(invalid)?;
        let record_json = record(&deploy, metrics.clone());
        let bytes = serde_json::to_vec_pretty(&record_json)
            .map_err(|e| StageError::Internal(e.to_string()))?;
        let mut out = StageOutput::new(Some(fake), metrics);
        out.aliases.push("fake_quant.onnx".into());
        out.extra_models.push(("deploy.onnx".into(), deploy));
        out.files.push(("quant_record.json".into(), bytes));
        out
    } else {
        StageOutput::new(Some(trained), metrics)
    };
    super::retrain::push_loss_plot(&mut out, &summary, ctx);
    Ok(out)
}

/// The trained values of the rewired graph `m` in the plain student graph `base`.
fn current(m: &Model, base: &Model) -> Model {
    let mut out = base.clone();
    for (name, t) in &m.graph.initializers {
        if out.graph.initializers.contains_key(name) {
            out.graph.initializers.insert(name.clone(), t.clone());
        }
    }
    out
}
