//! `quantize`: post-training quantization. Plans which layers are
//! quantized, quantizes weights offline, calibrates activations on the
//! stage's data set, optionally rolls sensitive layers back to float, and
//! writes `model.onnx` (= fake-quant), `fake_quant.onnx`, `deploy.onnx` and
//! `quant_record.json`.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{json, Value as Json};

use super::feed::{batch_feeds, sample_chunks, STATISTICS_CHUNK};
use super::{StageContext, StageError, StageOutput};
use crate::data::{open_dataset, BatchOptions, Batches};
use crate::exec::{ExecOptions, Executor};
use crate::graph::Model;
use crate::quant::equalize::cross_layer_equalize;
use crate::quant::{record::quant_record, QdqForm, Quantizer};
use crate::recipe::{EqualizeMethod, QuantizeParams, MODEL};

pub fn run(ctx: &StageContext, params: &QuantizeParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(MODEL);
    let mut float = ctx.model(input)?.clone();
    check_opset(&mut float, params)?;
    let data = ctx.data.ok_or_else(|| {
        StageError::Invalid("a quantize stage needs `data` (the calibration set)".into())
    })?;
    let t0 = Instant::now();
    let mut phases = serde_json::Map::new();
    let mut lap = |name: &str, since: &mut Instant| {
        phases.insert(name.to_string(), json!(since.elapsed().as_secs_f64()));
        *since = Instant::now();
    };
    let mut since = Instant::now();
    let equalized = match &params.equalize {
        Some(eq) if eq.method == EqualizeMethod::Cle => cross_layer_equalize(&mut float, 4),
        Some(eq) => super::smoothquant::run(ctx, &mut float, eq.alpha, data, params.batches)?,
        None => 0,
    };
    let mut q = Quantizer::new(float, params.clone()).map_err(graph)?;
    let exec = Executor::new(&q.float, ExecOptions::inference(ctx.device))?;
    lap("prepare", &mut since);
    let ds = open_dataset(data)?;
    let batches = Batches::new(
        ds.as_ref(),
        BatchOptions::from_config(data, ctx.seed, 0),
        ctx.device,
    );
    let total = match params.batches {
        0 => batches.num_batches(),
        n => n.min(batches.num_batches()),
    };
    let bar = crate::progress::bar(
        total as u64,
        "batches",
        format!("calibrate {}", ctx.spec.name),
    );
    for batch in batches.take(total) {
        let batch = batch?;
        for x in sample_chunks(&batch.x, STATISTICS_CHUNK)? {
            q.calibrator
                .observe_batch(&exec, &batch_feeds(&q.float, &x)?)?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(exec);
    lap("calibrate", &mut since);
    let adaround = super::adaround::run(ctx, &mut q, data)?;
    q.finish_calibration();
    lap("adaround", &mut since);
    let calibration_seconds = t0.elapsed().as_secs_f64();

    let rollback = match &params.rollback {
        Some(rb) => Some(super::quantize_rollback::run(ctx, &q, rb, data)?),
        None => None,
    };
    lap("rollback", &mut since);
    let skips: BTreeSet<String> = rollback
        .as_ref()
        .map(|r| r.float_layers.iter().cloned().collect())
        .unwrap_or_default();
    let fake = q.build(&skips, QdqForm::FakeQuant).map_err(graph)?;
    let deploy = q.build(&skips, QdqForm::Deploy).map_err(graph)?;
    lap("build", &mut since);
    let rollback_json = rollback.as_ref().map(|r| r.to_json());
    let record = quant_record(
        &fake.plan,
        &fake.acts,
        &fake.ranges,
        &fake.weights,
        rollback_json.as_ref(),
    );
    let record_bytes =
        serde_json::to_vec_pretty(&record).map_err(|e| StageError::Internal(e.to_string()))?;
    let metrics = json!({
        "quantized_layers": fake.plan.layers.len(),
        "quantized_nodes": fake.plan.quantized_nodes.len(),
        "quantized_tensors": fake.plan.activations.len(),
        "float_nodes": fake.plan.skipped.len(),
        "calibration_batches": total,
        "equalized": equalized,
        "adaround": adaround,
        "calibration_seconds": calibration_seconds,
        "phase_seconds": phases,
        "deploy_size_bytes": size_of(&deploy.model),
        "rollback": rollback_json.unwrap_or(Json::Null),
    });
    let mut out = StageOutput::new(Some(fake.model), metrics);
    out.aliases.push("fake_quant.onnx".into());
    out.extra_models.push(("deploy.onnx".into(), deploy.model));
    out.files.push(("quant_record.json".into(), record_bytes));
    Ok(out)
}

fn graph(e: crate::graph::GraphError) -> StageError {
    StageError::Exec(e.into())
}

fn size_of(model: &Model) -> usize {
    use prost::Message;
    crate::onnx::model_to_proto(model).encoded_len()
}

/// QuantizeLinear needs opset 10, and opset 13 for per-channel scales:
/// older models are upgraded to opset 13 when per-channel weights are asked for.
fn check_opset(model: &mut Model, params: &QuantizeParams) -> Result<(), StageError> {
    let opset = model.onnx_opset();
    let per_channel = std::iter::once(&params.default)
        .chain(params.types.values())
        .chain(params.layers.values())
        .any(|c| c.weight.per_channel);
    if per_channel && opset < crate::passes::TARGET_OPSET {
        let changed = crate::passes::upgrade_opset(model)?;
        tracing::info!(
            from = opset,
            changed,
            "upgraded the model to opset 13 for per-channel weights"
        );
    } else if opset < 10 {
        return Err(StageError::Invalid(format!(
            "the model uses ONNX opset {opset}; QuantizeLinear needs opset 10 or newer"
        )));
    }
    Ok(())
}
