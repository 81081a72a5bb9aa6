//! `qat`: quantization-aware training of a quantized model (the output of a
//! `quantize` stage, whose calibration initialises every scale). The weights,
//! biases, weight scales (per channel) and activation scales are trained on
//! labelled data through fake quantization: rounding passes gradients
//! straight through, scales learn with LSQ's gradient (learnable clipping).
//! Writes the same outputs as `quantize`: `fake_quant.onnx` (= model.onnx),
//! `deploy.onnx` and `quant_record.json`.

use super::supervised::{validate, Supervised};
use super::{StageContext, StageError, StageOutput};
use crate::quant::qat_graph::{export, record, training_graph};
use crate::quant::QdqForm;
use crate::recipe::TrainParams;
use crate::train::{RunSetup, Trainer, Validation};

pub fn run(ctx: &StageContext, params: &TrainParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(crate::recipe::MODEL);
    let model = ctx.model(input)?;
    let data = ctx
        .data
        .ok_or_else(|| StageError::Invalid("qat needs `data` (a labelled training set)".into()))?;
    let graph = training_graph(model)
        .map_err(|e| StageError::Invalid(format!("qat input `{input}`: {e}")))?;
    let mut trainer = Trainer::new(&graph.model, params, ctx.device, &[], true)?;
    let mut objective = Supervised {
        model: &graph.model,
        loss: params.loss.clone(),
    };
    // Validation runs the QAT graph as plain ONNX: exact integer quantization.
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
    let fake = export(&trained, &graph.biases, QdqForm::FakeQuant)
        .map_err(|e| StageError::Invalid(format!("qat export: {e}")))?;
    let deploy = export(&trained, &graph.biases, QdqForm::Deploy)
        .map_err(|e| StageError::Invalid(format!("qat export: {e}")))?;
    let metrics = super::retrain::training_metrics(&summary);
    let record_json = record(&deploy, metrics.clone());
    let record_bytes =
        serde_json::to_vec_pretty(&record_json).map_err(|e| StageError::Internal(e.to_string()))?;
    let mut out = StageOutput::new(Some(fake), metrics);
    out.aliases.push("fake_quant.onnx".into());
    out.extra_models.push(("deploy.onnx".into(), deploy));
    out.files.push(("quant_record.json".into(), record_bytes));
    super::retrain::push_loss_plot(&mut out, &summary, ctx);
    Ok(out)
}
