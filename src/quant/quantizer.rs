//! The quantization of one model, from plan to written models: weights
//! quantized once, activations observed once, then any subset of layers
//! (all, or all but the rolled-back ones) built into fake-quant and deploy
//! models from the same statistics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::calibrate::{Calibrator, Watch};
use super::plan::{plan, QuantPlan, WeightLayer};
use super::qdq::{write_qdq, ActQuant, QdqForm};
use super::qparams::{IntGrid, QParams};
use super::range_search::choose_range;
use super::range_search::histograms_needed;
use super::weights::{bias_shift, quantize_weight, QuantWeight};
use crate::graph::{GraphError, Model, Tensor};
use crate::recipe::{ActivationConfig, ActivationType, QuantizeParams};

/// A model prepared for quantization.
pub struct Quantizer {
    pub float: Model,
    pub params: QuantizeParams,
    /// The plan with every configured layer quantized.
    pub full: QuantPlan,
    /// Quantized weight of each weighted layer, by node name.
    weights: BTreeMap<String, QuantWeight>,
    pub calibrator: Calibrator,
    /// Bias shifts from bias correction, by node name (after calibration).
    shifts: BTreeMap<String, Vec<f64>>,
    /// Searched activation ranges by (tensor, settings).
    ranges: Mutex<HashMap<(String, String), (f64, f64)>>,
}

/// The models and parameters of one build.
pub struct Built {
    pub plan: QuantPlan,
    pub model: Model,
    pub weights: Vec<QuantWeight>,
    pub acts: BTreeMap<String, ActQuant>,
    pub ranges: BTreeMap<String, (f64, f64)>,
}

pub fn grid_of(t: ActivationType) -> IntGrid {
    match t {
        ActivationType::Int8 => IntGrid::INT8,
        ActivationType::Uint8 => IntGrid::UINT8,
    }
}

impl Quantizer {
    /// Plans the model and quantizes its weights.
    pub fn new(float: Model, params: QuantizeParams) -> Result<Self, GraphError> {
        let full = plan(&float, &params, &BTreeSet::new());
        let mut weights = BTreeMap::new();
        for layer in &full.layers {
            let w = &float.graph.nodes[layer.node].inputs[layer.weight];
            let t = &float.graph.initializers[w];
            let values = t.to_f32_vec().ok_or_else(|| GraphError::BadTensor {
                name: w.clone(),
                reason: "cannot read weight values".into(),
            })?;
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let qw = quantize_weight(&values, &dims, Some(layer.axis), &layer.config.weight);
            weights.insert(layer.name.clone(), qw);
        }
        let mut watch: BTreeMap<String, Watch> = full
            .activations
            .iter()
            .map(|(t, c)| {
                let w = Watch {
                    bins: c.activation.bins,
                    channel_means: false,
                    histograms: histograms_needed(&c.activation),
                };
                (t.clone(), w)
            })
            .collect();
        for layer in full
            .layers
            .iter()
            .filter(|l| l.config.weight.bias_correction)
        {
            let entry = watch.entry(layer.activation.clone()).or_insert(Watch {
                bins: layer.config.activation.bins,
                channel_means: true,
                histograms: histograms_needed(&layer.config.activation),
            });
            entry.channel_means = true;
        }
        Ok(Quantizer {
            calibrator: Calibrator::new(&watch),
            float,
            params,
            full,
            weights,
            shifts: BTreeMap::new(),
            ranges: Mutex::new(HashMap::new()),
        })
    }

    /// The quantized weight of a weighted layer.
    pub fn weight(&self, layer: &str) -> Option<&QuantWeight> {
        self.weights.get(layer)
    }

    /// Replaces a layer's integer weights (same shape and scales), e.g.
    /// with learned rounding.
    pub fn set_weight_values(&mut self, layer: &str, values: Vec<i32>) {
        if let Some(w) = self.weights.get_mut(layer) {
            if w.values.len() == values.len() {
                w.values = values;
            }
        }
    }

    /// After calibration: the bias shifts of layers with bias correction.
    pub fn finish_calibration(&mut self) {
        for layer in &self.full.layers {
            if !layer.config.weight.bias_correction {
                continue;
            }
            let means = self
                .calibrator
                .observers
                .get(&layer.activation)
                .and_then(|o| o.channel_means());
            if let Some(means) = means {
                if let Some(shift) =
                    layer_shift(&self.float, layer, &self.weights[&layer.name], &means)
                {
                    self.shifts.insert(layer.name.clone(), shift);
                }
            }
        }
    }

    /// Weighted layers and partner nodes that rollback may return to float.
    pub fn candidates(&self) -> Vec<String> {
        let partners: Vec<String> = self
            .float
            .graph
            .nodes
            .iter()
            .filter(|n| {
                self.full.quantized_nodes.contains(&n.name)
                    && ["Add", "AveragePool", "GlobalAveragePool", "Concat", "Mul"]
                        .contains(&n.op_type.as_str())
            })
            .map(|n| n.name.clone())
            .collect();
        self.full
            .layers
            .iter()
            .map(|l| l.name.clone())
            .chain(partners)
            .collect()
    }

    /// Builds the model with every planned layer quantized except `skips`.
    pub fn build(&self, skips: &BTreeSet<String>, form: QdqForm) -> Result<Built, GraphError> {
        let mut plan = plan(&self.float, &self.params, skips);
        let mut model = self.float.clone();
        for layer in plan.layers.iter_mut() {
            if let Some(shift) = self.shifts.get(&layer.name) {
                apply_shift(&mut model, layer, shift)?;
            }
        }
        let weights: Vec<QuantWeight> = plan
            .layers
            .iter()
            .map(|l| self.weights[&l.name].clone())
            .collect();
        let mut acts = BTreeMap::new();
        let mut ranges = BTreeMap::new();
        for (t, config) in &plan.activations {
            let rep = plan.representative(t);
            if acts.contains_key(rep) {
                continue;
            }
            let obs = self
                .calibrator
                .observers
                .get(rep)
                .ok_or_else(|| GraphError::BadTensor {
                    name: rep.to_string(),
                    reason: "was not observed during calibration".into(),
                })?;
            let cfg = &plan.activations.get(rep).unwrap_or(config).activation;
            let grid = grid_of(cfg.dtype);
            let (lo, hi) = self.range_of(rep, obs, cfg, grid);
            let params = QParams::for_activation(lo, hi, grid, cfg.symmetric);
            acts.insert(rep.to_string(), ActQuant { params, grid });
            ranges.insert(rep.to_string(), (lo, hi));
        }
        let model = write_qdq(&model, &plan, &acts, &weights, form)?;
        Ok(Built {
            plan,
            model,
            weights,
            acts,
            ranges,
        })
    }
}

impl Quantizer {
    /// The searched range of a tensor under `cfg`, computed once per
    /// (tensor, settings): rollback builds many models from the same statistics.
    fn range_of(
        &self,
        tensor: &str,
        obs: &super::observer::Observer,
        cfg: &ActivationConfig,
        grid: IntGrid,
    ) -> (f64, f64) {
        let key = (tensor.to_string(), format!("{cfg:?}"));
        let mut memo = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        *memo
            .entry(key)
            .or_insert_with(|| choose_range(obs, cfg, grid))
    }
}

/// Adds a bias shift to a layer's bias, creating a zero bias when it has none.
fn apply_shift(
    model: &mut Model,
    layer: &mut WeightLayer,
    shift: &[f64],
) -> Result<(), GraphError> {
    let g = &mut model.graph;
    let node = &mut g.nodes[layer.node];
    let old: Vec<f32> = match layer.bias {
        Some(b) => g.initializers[&node.inputs[b]]
            .to_f32_vec()
            .unwrap_or_else(|| vec![0.0; shift.len()]),
        None => vec![0.0; shift.len()],
    };
    let values: Vec<f32> = old
        .iter()
        .zip(shift)
        .map(|(&b, &s)| (b as f64 + s) as f32)
        .collect();
    let mut name = format!("{}_corrected_bias", layer.name);
    while g.initializers.contains_key(&name) {
        name.push('_');
    }
    g.initializers.insert(
        name.clone(),
        Tensor::from_f32(&name, vec![values.len() as i64], &values)?,
    );
    match layer.bias {
        Some(b) => node.inputs[b] = name,
        None => {
            node.inputs.resize(2, String::new());
            node.inputs.push(name);
            layer.bias = Some(2);
        }
    }
    Ok(())
}

/// The bias shift of a Conv or Gemm (alpha = beta = 1) from its input means.
fn layer_shift(
    m: &Model,
    layer: &WeightLayer,
    qw: &QuantWeight,
    means: &[f64],
) -> Option<Vec<f64>> {
    let node = &m.graph.nodes[layer.node];
    let w = m
        .graph
        .initializers
        .get(&node.inputs[layer.weight])?
        .to_f32_vec()?;
    let wq = qw.dequantized();
    let d = &qw.dims;
    match layer.op_type.as_str() {
        "Conv" => {
            let groups = node.int_or("group", 1).max(1) as usize;
            let inner: usize = d[2..].iter().product();
            Some(bias_shift(&w, &wq, d[0], d[1], inner, groups, means))
        }
        "Gemm" if node.float_or("alpha", 1.0) == 1.0 && node.float_or("beta", 1.0) == 1.0 => {
            // Lay B out as [N, K].
            let (w, wq) = if node.int_or("transB", 0) != 0 {
                (w, wq)
            } else {
                (transpose(&w, d[0], d[1]), transpose(&wq, d[0], d[1]))
            };
            let (n, k) = if node.int_or("transB", 0) != 0 {
                (d[0], d[1])
            } else {
                (d[1], d[0])
            };
            Some(bias_shift(&w, &wq, n, k, 1, 1, means))
        }
        _ => None,
    }
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
