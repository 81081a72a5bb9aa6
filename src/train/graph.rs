//! The graph a training executor runs, and what it trains. With
//! `batch_norm = "train"`, every BatchNormalization whose statistics are
//! initializers runs with `training_mode = 1` and two extra graph outputs,
//! its updated running mean and variance, which the trainer writes back
//! after each step; with `"frozen"` it runs on its running statistics and
//! none of its inputs change. Trained models are exported by writing the
//! parameters back into the (unchanged) source graph.

use candle_core::{DType as CDType, Tensor, Var};

use super::optim::Param;
use super::TrainError;
use crate::graph::LeBytes;
use crate::graph::{DType, Model, Tensor as IrTensor, ValueInfo};
use crate::recipe::BatchNormMode;

/// A model prepared for training.
pub struct TrainGraph {
    pub model: Model,
    /// The source model's graph outputs come first; these follow, in this order.
    pub running: Vec<RunningStat>,
    /// Initializers that must not be trained (BatchNormalization statistics,
    /// and in frozen mode its scale and bias).
    pub frozen: Vec<String>,
}

/// A BatchNormalization running statistic: the graph output holding its
/// new value and the initializer it replaces.
#[derive(Debug, Clone)]
pub struct RunningStat {
    pub output: String,
    pub initializer: String,
}

/// Builds the training graph of `model`.
pub fn training_graph(model: &Model, mode: BatchNormMode) -> TrainGraph {
    let mut m = model.clone();
    let mut running = Vec::new();
    let mut frozen = Vec::new();
    let initializers = &model.graph.initializers;
    for node in m.graph.nodes.iter_mut() {
        if node.op_type != "BatchNormalization" || node.inputs.len() < 5 {
            continue;
        }
        let stats_are_constant = node.inputs[3..5]
            .iter()
            .all(|n| initializers.contains_key(n));
        frozen.extend(node.inputs[3..5].iter().cloned());
        if mode == BatchNormMode::Frozen {
            frozen.extend(node.inputs[1..3].iter().cloned());
            node.set_int("training_mode", 0);
            continue;
        }
        if !stats_are_constant {
            continue;
        }
        node.set_int("training_mode", 1);
        node.outputs.truncate(1);
        for (i, what) in [(3, "mean"), (4, "var")] {
            let output = format!("{}__amct_running_{what}", node.outputs[0]);
            node.outputs.push(output.clone());
            running.push(RunningStat {
                output,
                initializer: node.inputs[i].clone(),
            });
        }
    }
    for r in &running {
        m.graph.outputs.push(ValueInfo {
            name: r.output.clone(),
            dtype: Some(DType::F32),
            ..Default::default()
        });
    }
    frozen.sort();
    frozen.dedup();
    TrainGraph {
        model: m,
        running,
        frozen,
    }
}

/// The trained parameters among the executor's float initializers: all but
/// `frozen`, in name order (so updates and checkpoints are deterministic).
/// Weights of rank 2 and more get weight decay; with `keep_sparsity`, those
/// holding exact zeros (but not only zeros) get a mask that keeps them zero;
/// those in `positive` (quantization scales) never fall below a thousandth of
/// their smallest starting value.
pub fn select_params<'a>(
    all: impl Iterator<Item = (&'a str, &'a Var)>,
    frozen: &[String],
    positive: &[String],
    keep_sparsity: bool,
) -> Result<Vec<Param>, TrainError> {
    let mut params = Vec::new();
    for (name, var) in all {
        if frozen.iter().any(|f| f == name) {
            continue;
        }
        let rank = var.rank();
        let mask = if keep_sparsity && rank >= 2 {
            zero_mask(var.as_tensor())?
        } else {
            None
        };
        params.push(Param {
            name: name.to_string(),
            var: var.clone(),
            decay: rank >= 2,
            mask,
            floor: match positive.iter().any(|l| l == name) {
                // A thousandth of the smallest starting value.
                true => Some(
                    var.as_tensor()
                        .flatten_all()?
                        .min(0)?
                        .to_dtype(CDType::F64)?
                        .to_scalar::<f64>()?
                        * 1e-3,
                ),
                false => None,
            },
        });
    }
    params.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(params)
}

/// A weight quantizer: QuantizeLinear on a float initializer, with an initializer scale.
#[derive(Debug, Clone)]
pub struct WeightQuantizer {
    pub weight: String,
    pub scale: String,
    /// The per-channel axis; `None` for one scale.
    pub axis: Option<usize>,
}

/// The weight quantizers of a fake-quant graph.
pub fn weight_quantizers(model: &Model) -> Vec<WeightQuantizer> {
    let inits = &model.graph.initializers;
    model
        .graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear" && n.inputs.len() >= 2)
        .filter(|n| inits.contains_key(&n.inputs[0]) && inits.contains_key(&n.inputs[1]))
        .map(|n| {
            let rank = inits[&n.inputs[0]].dims.len().max(1) as i64;
            let vector = inits[&n.inputs[1]].numel() > 1;
            WeightQuantizer {
                weight: n.inputs[0].clone(),
                scale: n.inputs[1].clone(),
                axis: vector.then(|| n.int_or("axis", 1).rem_euclid(rank) as usize),
            }
        })
        .collect()
}

/// Per-channel (or whole-tensor) largest magnitude of `w`, shaped like its scale.
pub fn channel_max(w: &Tensor, axis: Option<usize>) -> Result<Tensor, TrainError> {
    let a = w.abs()?;
    Ok(match axis {
        Some(axis) => a.transpose(0, axis)?.flatten_from(1)?.max(1)?,
        // One element, as the trainer divides the flattened scale by it.
        None => a.flatten_all()?.max_keepdim(0)?,
    })
}

/// The scales of QuantizeLinear/DequantizeLinear nodes that are initializers.
pub fn quantization_scales(model: &Model) -> Vec<String> {
    let mut out: Vec<String> = model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
        .filter_map(|n| n.inputs.get(1))
        .filter(|s| model.graph.initializers.contains_key(*s))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// 0 where `w` is exactly zero, 1 elsewhere; `None` when no element (or every element) is zero.
fn zero_mask(w: &Tensor) -> Result<Option<Tensor>, TrainError> {
    let nonzero = w.ne(0.0)?.to_dtype(w.dtype())?;
    let kept = nonzero
        .to_dtype(CDType::F64)?
        .sum_all()?
        .to_scalar::<f64>()? as usize;
    Ok((kept > 0 && kept < w.elem_count()).then_some(nonzero))
}

/// `model` with every initializer named in `values` replaced by the value
/// (converted to the initializer's element type; its shape kept).
pub fn with_values<'a>(
    model: &Model,
    values: impl Iterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Model, TrainError> {
    let mut out = model.clone();
    for (name, t) in values {
        let Some(old) = out.graph.initializers.get(name) else {
            continue;
        };
        let t = t.flatten_all()?;
        let bytes: Vec<u8> = match old.dtype {
            DType::F32 => {
                let values = t.to_dtype(CDType::F32)?.to_vec1::<f32>()?;
                let mut bytes = Vec::with_capacity(values.len() * 4);
                values
                    .iter()
                    .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
                bytes
            }
            DType::F64 => t
                .to_dtype(CDType::F64)?
                .to_vec1::<f64>()?
                .iter()
                .map(|v| v.to_le_bytes())
                .le_bytes(),
            DType::F16 => t
                .to_dtype(CDType::F16)?
                .to_vec1::<half::f16>()?
                .iter()
                .map(|v| v.to_le_bytes())
                .le_bytes(),
            DType::BF16 => t
                .to_dtype(CDType::BF16)?
                .to_vec1::<half::bf16>()?
                .iter()
                .map(|v| v.to_le_bytes())
                .le_bytes(),
            other => {
                return Err(TrainError::Shape(format!(
                    "initializer '{name}' of type {other:?} cannot hold trained values"
                )))
            }
        };
        let mut replaced = IrTensor::from_raw(name, old.dtype, old.dims.clone(), bytes)
            .map_err(|e| TrainError::Shape(format!("initializer '{name}': {e}")))?;
        replaced.doc_string = old.doc_string.clone();
        replaced.metadata = old.metadata.clone();
        out.graph.initializers.insert(name.to_string(), replaced);
    }
    Ok(out)
}
