//! AdaRound for `quantize`: keeps the float inputs of every layer that asks
//! for learned rounding over the first calibration batches, then learns
//! each layer's rounding (before bias correction, which sees the result).

use std::collections::BTreeMap;

use candle_core::{DType as CDType, Tensor};
use serde_json::{json, Value as Json};

use super::feed::batch_feeds;
use super::{StageContext, StageError};
use crate::data::{open_dataset, BatchOptions, Batches, DataConfig};
use crate::exec::{ExecOptions, Executor};
use crate::quant::adaround::{adaround, LayerProblem};
use crate::quant::Quantizer;
use crate::recipe::Rounding;

/// Learns the rounding of every layer configured for it; returns a report
/// per layer (output MSE with nearest and learned rounding).
pub fn run(ctx: &StageContext, q: &mut Quantizer, data: &DataConfig) -> Result<Json, StageError> {
    let layers: Vec<_> = q
        .full
        .layers
        .iter()
        .filter(|l| l.config.weight.rounding == Rounding::Adaround)
        .cloned()
        .collect();
    if layers.is_empty() {
        return Ok(Json::Null);
    }
    let batches = layers
        .iter()
        .map(|l| l.config.weight.adaround.batches)
        .max()
        .unwrap_or(1);
    let wanted: Vec<&str> = layers.iter().map(|l| l.activation.as_str()).collect();
    let mut inputs: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    {
        let exec = Executor::new(&q.float, ExecOptions::inference(ctx.device))?;
        let ds = open_dataset(data)?;
        let all = Batches::new(
            ds.as_ref(),
            BatchOptions::from_config(data, ctx.seed, 0),
            ctx.device,
        );
        for batch in all.take(batches) {
            let batch = batch?;
            let watched = |name: &str| wanted.contains(&name);
            exec.run_observed(
                &batch_feeds(&q.float, &batch.x)?,
                &watched,
                &mut |name, value| {
                    {
                        let t = value.tensor.to_dtype(CDType::F32)?.detach();
                        inputs.entry(name.to_string()).or_default().push(t);
                    }
                    Ok(())
                },
            )?;
        }
    }
    let bar = crate::progress::bar(layers.len() as u64, "layers", "adaround");
    let mut report = serde_json::Map::new();
    for layer in &layers {
        let node = &q.float.graph.nodes[layer.node];
        let init = |i: usize| {
            node.inputs
                .get(i)
                .and_then(|n| q.float.graph.initializers.get(n))
                .and_then(|t| t.to_f32_vec())
        };
        let (Some(weight), Some(quant), Some(xs)) = (
            init(layer.weight),
            q.weight(&layer.name),
            inputs.get(&layer.activation),
        ) else {
            continue;
        };
        let bias = layer.bias.and_then(init);
        let problem = LayerProblem {
            node,
            opset: q.float.onnx_opset(),
            weight: &weight,
            bias: bias.as_deref(),
            quant,
            inputs: xs,
        };
        let (values, result) = adaround(&problem, &layer.config.weight.adaround, ctx.device)?;
        report.insert(
            layer.name.clone(),
            json!({
                "nearest_mse": result.nearest_mse,
                "adaround_mse": result.learned_mse,
                "kept": if result.learned_mse < result.nearest_mse { "adaround" } else { "nearest" },
            }),
        );
        q.set_weight_values(&layer.name, values);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Json::Object(report))
}
