//! Parameters of a `quantize` stage: calibration, weight and activation
//! settings, which layers, per-layer and per-type overrides, equalization
//! and accuracy-based rollback. Overrides are merged onto the stage-wide
//! settings here, so every layer's settings are complete after parsing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::RecipeError;
use super::located::deserialize_at;
use super::source::RecipeSource;

/// How an activation's clip range is chosen from what calibration saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationAlgo {
    /// Observed minimum and maximum.
    Minmax,
    /// A percentile of the magnitudes (or both tails when asymmetric).
    Percentile,
    /// Least KL divergence between the float and quantized histograms.
    Entropy,
    /// Least quantization error over clips scaled from the maximum.
    Mse,
    /// AMCT's IFMR: percentile clips scaled over a search range, least error.
    Ifmr,
    /// AMCT's HFMG: merged histogram, least-error range over its bins.
    Hfmg,
}

/// How weight scales are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightAlgo {
    /// Largest magnitude per channel (AMCT's ARQ).
    Minmax,
    /// Clip per channel searched for the least squared error.
    Mse,
}

/// Storage type of quantized weights. `Uint8` keeps the same symmetric
/// integers and stores them shifted by 128 (zero point 128): the same real
/// values, but onnxruntime then runs its u8u8 kernels, which do not
/// saturate on AVX2 CPUs without VNNI (see docs/quantize.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    Int8,
    Uint8,
}

/// Integer type of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    Int8,
    Uint8,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationConfig {
    #[serde(default = "default_activation_algo")]
    pub algo: ActivationAlgo,
    #[serde(default)]
    pub symmetric: bool,
    #[serde(default = "default_activation_type", rename = "type")]
    pub dtype: ActivationType,
    /// Percentile kept by `percentile` (and IFMR's starting clip), in percent.
    #[serde(default = "default_percentile")]
    pub percentile: f64,
    /// Histogram bins (entropy, mse, ifmr, hfmg, percentile).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// IFMR: the clip is scaled by factors from `search_range[0]` to
    /// `search_range[1]` in steps of `search_step`.
    #[serde(default = "default_search_range")]
    pub search_range: [f64; 2],
    #[serde(default = "default_search_step")]
    pub search_step: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightConfig {
    #[serde(default = "default_weight_algo")]
    pub algo: WeightAlgo,
    /// 4 to 8.
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// Storage type: `int8` (zero point 0) or `uint8` (zero point 128).
    #[serde(default = "default_weight_type", rename = "type")]
    pub dtype: WeightType,
    #[serde(default = "yes")]
    pub per_channel: bool,
    /// Adds the expected output shift caused by weight rounding back to the bias.
    #[serde(default)]
    pub bias_correction: bool,
    /// `nearest`, or `adaround`: each weight rounded up or down as learned
    /// on the calibration batches to reproduce the layer's float output.
    #[serde(default = "default_rounding")]
    pub rounding: Rounding,
    #[serde(default)]
    pub adaround: AdaRoundConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    Nearest,
    Adaround,
}

/// AdaRound's optimisation settings (AMCT's names in brackets).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaRoundConfig {
    /// Optimisation steps per layer (num_iteration).
    #[serde(default = "default_ada_iterations")]
    pub iterations: usize,
    /// Weight of the rounding regulariser (reg_param).
    #[serde(default = "default_ada_reg")]
    pub reg: f64,
    /// Annealing of the regulariser's exponent, start and end (beta_range).
    #[serde(default = "default_ada_beta")]
    pub beta: [f64; 2],
    /// Fraction of the steps before the regulariser starts (warm_start).
    #[serde(default = "default_ada_warm")]
    pub warm_start: f64,
    /// Adam learning rate.
    #[serde(default = "default_ada_lr")]
    pub lr: f64,
    /// Calibration batches whose layer inputs are kept for the optimisation.
    #[serde(default = "default_ada_batches")]
    pub batches: usize,
}

impl Default for AdaRoundConfig {
    fn default() -> Self {
        AdaRoundConfig {
            iterations: default_ada_iterations(),
            reg: default_ada_reg(),
            beta: default_ada_beta(),
            warm_start: default_ada_warm(),
            lr: default_ada_lr(),
            batches: default_ada_batches(),
        }
    }
}

/// Settings of one layer (or one op type) that differ from the stage's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    pub activation: ActivationConfig,
    pub weight: WeightConfig,
    /// Keep this layer in float.
    #[serde(default)]
    pub skip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EqualizeMethod {
    /// Cross-layer equalization of consecutive convolutions.
    Cle,
    /// SmoothQuant-style: activation outliers migrated into the weights.
    Smoothquant,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EqualizeConfig {
    pub method: EqualizeMethod,
    /// SmoothQuant's migration strength (0 = all on activations, 1 = all on weights).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RollbackMetric {
    /// Top-1 accuracy drop against labels, in percentage points.
    Top1,
    /// Mean cosine similarity of the outputs with the float model's.
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    pub metric: RollbackMetric,
    /// Top1: the largest accepted drop in points; Cosine: the smallest accepted similarity.
    pub tolerance: f64,
    /// Batches of the stage's data set used to score (0 = all).
    #[serde(default)]
    pub batches: usize,
}

/// Parameters of a `quantize` stage, overrides resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizeParams {
    /// Calibration batches (0 = the whole data set).
    pub batches: usize,
    /// Op types quantized.
    pub ops: Vec<String>,
    /// MatMul with two activation inputs quantized too.
    pub activation_matmul: bool,
    pub skip_layers: Vec<String>,
    pub skip_types: Vec<String>,
    /// Stage-wide settings.
    pub default: LayerConfig,
    /// Per op type settings (complete).
    pub types: BTreeMap<String, LayerConfig>,
    /// Per node name settings (complete).
    pub layers: BTreeMap<String, LayerConfig>,
    pub equalize: Option<EqualizeConfig>,
    pub rollback: Option<RollbackConfig>,
}

impl QuantizeParams {
    /// The settings of a node: its name's override, else its type's, else the stage's.
    pub fn layer(&self, name: &str, op_type: &str) -> &LayerConfig {
        self.layers
            .get(name)
            .or_else(|| self.types.get(op_type))
            .unwrap_or(&self.default)
    }

    /// Whether the node stays in float by configuration.
    pub fn skipped(&self, name: &str, op_type: &str) -> bool {
        self.skip_layers.iter().any(|s| s == name)
            || self.skip_types.iter().any(|s| s == op_type)
            || self.layer(name, op_type).skip
    }
}

/// Op types quantized unless the recipe says otherwise: the ones
/// onnxruntime's CPU provider runs as integer kernels.
pub const DEFAULT_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
    "Concat",
];

/// The raw `[stages.NAME]` table of a quantize stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuantize {
    #[serde(default = "default_batches")]
    batches: usize,
    #[serde(default)]
    ops: Option<Vec<String>>,
    #[serde(default)]
    activation_matmul: bool,
    #[serde(default)]
    skip_layers: Vec<String>,
    #[serde(default)]
    skip_types: Vec<String>,
    #[serde(default)]
    activation: Option<toml::Table>,
    #[serde(default)]
    weight: Option<toml::Table>,
    #[serde(default)]
    types: BTreeMap<String, toml::Table>,
    #[serde(default)]
    layers: BTreeMap<String, toml::Table>,
    #[serde(default)]
    equalize: Option<EqualizeConfig>,
    #[serde(default)]
    rollback: Option<RollbackConfig>,
}

/// Parses and checks a quantize stage's parameters (`table` without the
/// reference keys); `name` is the stage's name.
pub fn parse_quantize(
    source: &RecipeSource,
    name: &str,
    table: toml::Table,
) -> Result<QuantizeParams, RecipeError> {
    let base = ["stages", name];
    let raw: RawQuantize = deserialize_at(source, &base, toml::Value::Table(table))?;
    let activation = raw.activation.clone().unwrap_or_default();
    let weight = raw.weight.clone().unwrap_or_default();
    let complete =
        |path: &[&str], over: Option<&toml::Table>| -> Result<LayerConfig, RecipeError> {
            let mut act = activation.clone();
            let mut wt = weight.clone();
            let mut skip = toml::Value::Boolean(false);
            if let Some(over) = over {
                for (k, v) in over {
                    match (k.as_str(), v) {
                        ("activation", toml::Value::Table(t)) => act.extend(t.clone()),
                        ("weight", toml::Value::Table(t)) => wt.extend(t.clone()),
                        ("skip", v) => skip = v.clone(),
                        ("activation" | "weight", _) => {
                            let mut p = path.to_vec();
                            p.push(k);
                            return Err(source.error(&p, format!("`{k}` must be a table")));
                        }
                        _ => {
                            let mut p = path.to_vec();
                            p.push(k);
                            return Err(source.key_error(
                                &p,
                                format!(
                                    "unknown key `{k}` in [{}] (expected activation, weight, skip)",
                                    path.join(".")
                                ),
                            ));
                        }
                    }
                }
            }
            let mut t = toml::Table::new();
            t.insert("activation".into(), toml::Value::Table(act));
            t.insert("weight".into(), toml::Value::Table(wt));
            t.insert("skip".into(), skip);
            let config: LayerConfig = deserialize_at(source, path, toml::Value::Table(t))?;
            check_layer(source, path, &config)?;
            Ok(config)
        };
    let default = complete(&base, None)?;
    let mut types = BTreeMap::new();
    for (op, over) in &raw.types {
        let path = ["stages", name, "types", op.as_str()];
        types.insert(op.clone(), complete(&path, Some(over))?);
    }
    let mut layers = BTreeMap::new();
    for (layer, over) in &raw.layers {
        let path = ["stages", name, "layers", layer.as_str()];
        layers.insert(layer.clone(), complete(&path, Some(over))?);
    }
    if let Some(eq) = &raw.equalize {
        if !(0.0..=1.0).contains(&eq.alpha) {
            return Err(source.error(
                &["stages", name, "equalize", "alpha"],
                format!("`alpha` must be between 0 and 1, got {}", eq.alpha),
            ));
        }
    }
    if let Some(rb) = &raw.rollback {
        let ok = match rb.metric {
            RollbackMetric::Top1 => (0.0..=100.0).contains(&rb.tolerance),
            RollbackMetric::Cosine => (-1.0..=1.0).contains(&rb.tolerance),
        };
        if !ok {
            return Err(source.error(
                &["stages", name, "rollback", "tolerance"],
                "`tolerance` is a top-1 drop in points (0 to 100) or a cosine floor (-1 to 1)",
            ));
        }
    }
    Ok(QuantizeParams {
        batches: raw.batches,
        ops: raw
            .ops
            .unwrap_or_else(|| DEFAULT_OPS.iter().map(|s| s.to_string()).collect()),
        activation_matmul: raw.activation_matmul,
        skip_layers: raw.skip_layers,
        skip_types: raw.skip_types,
        default,
        types,
        layers,
        equalize: raw.equalize,
        rollback: raw.rollback,
    })
}

fn check_layer(
    source: &RecipeSource,
    path: &[&str],
    config: &LayerConfig,
) -> Result<(), RecipeError> {
    let at = |section: &'static str, key: &'static str| {
        let mut p = path.to_vec();
        p.extend([section, key]);
        p
    };
    let w = &config.weight;
    if !(4..=8).contains(&w.bits) {
        return Err(source.error(
            &at("weight", "bits"),
            format!("weight `bits` must be 4 to 8, got {}", w.bits),
        ));
    }
    let ada = &w.adaround;
    if ada.iterations == 0 || ada.batches == 0 {
        return Err(source.error(
            &at("weight", "adaround"),
            "adaround `iterations` and `batches` must be at least 1",
        ));
    }
    if !(0.0..1.0).contains(&ada.warm_start) || ada.lr <= 0.0 || ada.reg < 0.0 {
        return Err(source.error(
            &at("weight", "adaround"),
            "adaround needs 0 <= warm_start < 1, lr > 0 and reg >= 0",
        ));
    }
    let a = &config.activation;
    if !(a.percentile > 50.0 && a.percentile <= 100.0) {
        return Err(source.error(
            &at("activation", "percentile"),
            format!(
                "`percentile` is in percent, above 50 and at most 100, got {}",
                a.percentile
            ),
        ));
    }
    if !(256..=65536).contains(&a.bins) {
        return Err(source.error(
            &at("activation", "bins"),
            format!("`bins` must be 256 to 65536, got {}", a.bins),
        ));
    }
    let [lo, hi] = a.search_range;
    if !(lo > 0.0 && lo <= hi) {
        return Err(source.error(
            &at("activation", "search_range"),
            format!("`search_range` must be [low, high] with 0 < low <= high, got [{lo}, {hi}]"),
        ));
    }
    if a.search_step.is_nan() || a.search_step <= 0.0 {
        return Err(source.error(
            &at("activation", "search_step"),
            "`search_step` must be positive",
        ));
    }
    Ok(())
}

fn yes() -> bool {
    true
}
fn default_batches() -> usize {
    4
}
fn default_bits() -> u32 {
    8
}
fn default_weight_type() -> WeightType {
    WeightType::Int8
}
fn default_activation_algo() -> ActivationAlgo {
    ActivationAlgo::Hfmg
}
fn default_weight_algo() -> WeightAlgo {
    WeightAlgo::Minmax
}
/// uint8 activations with int8 weights (u8s8) is the combination
/// onnxruntime's x86 CPU kernels fuse everywhere (with int8 activations it
/// leaves convolutions whose input is shared, and Add, in float).
fn default_activation_type() -> ActivationType {
    ActivationType::Uint8
}
fn default_percentile() -> f64 {
    99.999
}
fn default_bins() -> usize {
    2048
}
fn default_search_range() -> [f64; 2] {
    [0.7, 1.3]
}
fn default_search_step() -> f64 {
    0.01
}
fn default_alpha() -> f64 {
    0.5
}
fn default_rounding() -> Rounding {
    Rounding::Nearest
}
fn default_ada_iterations() -> usize {
    500
}
fn default_ada_reg() -> f64 {
    0.01
}
fn default_ada_beta() -> [f64; 2] {
    [20.0, 2.0]
}
fn default_ada_warm() -> f64 {
    0.2
}
fn default_ada_lr() -> f64 {
    1e-2
}
fn default_ada_batches() -> usize {
    1
}
