//! `quant_record.json`: the scale and zero point of every quantized tensor,
//! each layer's weight settings, what stayed float and why, and the
//! rollback decision, so a deployment can be audited or reproduced.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::plan::QuantPlan;
use super::qdq::ActQuant;
use super::weights::QuantWeight;

/// The record of one quantized model.
pub fn quant_record(
    plan: &QuantPlan,
    acts: &BTreeMap<String, ActQuant>,
    ranges: &BTreeMap<String, (f64, f64)>,
    weights: &[QuantWeight],
    rollback: Option<&Json>,
) -> Json {
    let mut tensors = serde_json::Map::new();
    for (name, config) in &plan.activations {
        let rep = plan.representative(name);
        let Some(a) = acts.get(rep) else { continue };
        let mut entry = json!({
            "scale": a.params.scale,
            "zero_point": a.params.zero_point,
            "type": if a.grid.signed { "int8" } else { "uint8" },
            "range": ranges.get(rep).map(|r| [r.0, r.1]),
            "algo": config.activation.algo,
            "symmetric": config.activation.symmetric,
        });
        if rep != name {
            entry["shares_parameters_of"] = json!(rep);
        }
        tensors.insert(name.clone(), entry);
    }
    let mut layers = serde_json::Map::new();
    for (layer, w) in plan.layers.iter().zip(weights) {
        layers.insert(
            layer.name.clone(),
            json!({
                "op_type": layer.op_type,
                "input": layer.activation,
                "weight": {
                    "bits": w.grid.bits,
                    "type": if w.storage.signed { "int8" } else { "uint8" },
                    "axis": w.axis,
                    "algo": layer.config.weight.algo,
                    "scale": w.scales(),
                    "zero_point": vec![w.stored_zero_point(); w.params.len()],
                },
                "bias_correction": layer.config.weight.bias_correction,
            }),
        );
    }
    let skipped: Vec<Json> = plan
        .skipped
        .iter()
        .map(|(node, reason)| json!({ "node": node, "reason": reason }))
        .collect();
    json!({
        "format": "amct-quant-record",
        "version": 1,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "tensors": tensors,
        "layers": layers,
        "float_nodes": skipped,
        "rollback": rollback,
    })
}
