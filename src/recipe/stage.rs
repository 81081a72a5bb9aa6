//! `[stages.NAME]` tables: the stage kind, its references to other stages
//! and data sets, and the kind's own parameters (unknown keys rejected).

use serde::{Deserialize, Serialize};

use super::error::RecipeError;
use super::located::deserialize_at;
use super::quantize::QuantizeParams;
use super::source::RecipeSource;
use super::train::{DistillConfig, DistillParams, TrainParams};

/// The stage kinds of the recipe language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Fuse,
    Sparse,
    Decompose,
    Retrain,
    Quantize,
    Qat,
    Distill,
    Eval,
}

impl StageKind {
    pub const ALL: &'static [(&'static str, StageKind)] = &[
        ("fuse", StageKind::Fuse),
        ("sparse", StageKind::Sparse),
        ("decompose", StageKind::Decompose),
        ("retrain", StageKind::Retrain),
        ("quantize", StageKind::Quantize),
        ("qat", StageKind::Qat),
        ("distill", StageKind::Distill),
        ("eval", StageKind::Eval),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Reference keys this kind accepts besides `kind`.
    fn reference_keys(self) -> &'static [&'static str] {
        match self {
            StageKind::Fuse => &["input"],
            StageKind::Eval => &["input", "inputs", "reference", "data"],
            StageKind::Distill => &["input", "teacher", "data", "validation"],
            StageKind::Retrain | StageKind::Qat => &["input", "data", "validation"],
            _ => &["input", "data"],
        }
    }

    /// Whether this version of amct can run the kind.
    pub fn implemented(self) -> bool {
        matches!(
            self,
            StageKind::Fuse
                | StageKind::Eval
                | StageKind::Quantize
                | StageKind::Retrain
                | StageKind::Qat
                | StageKind::Distill
        )
    }
}

/// Parameters of a `fuse` stage.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FuseParams {
    #[serde(default = "yes")]
    pub fold_batch_norm: bool,
    #[serde(default = "yes")]
    pub fold_constants: bool,
    /// Node names never rewritten.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Parameters of an `eval` stage.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    /// Top-k accuracies reported when the data set has labels.
    #[serde(default = "default_top_k")]
    pub top_k: Vec<usize>,
    /// Measure latency at batch 1 and at `latency_batch`.
    #[serde(default = "yes")]
    pub latency: bool,
    #[serde(default = "default_latency_batch")]
    pub latency_batch: usize,
    #[serde(default = "default_latency_iters")]
    pub latency_iters: usize,
    /// Also time the model in onnxruntime when it is installed.
    #[serde(default)]
    pub onnxruntime: bool,
}

fn yes() -> bool {
    true
}
fn default_top_k() -> Vec<usize> {
    vec![1, 5]
}
fn default_latency_batch() -> usize {
    8
}
fn default_latency_iters() -> usize {
    10
}

/// A stage kind's parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StageParams {
    Fuse(FuseParams),
    Quantize(Box<QuantizeParams>),
    Train(Box<TrainParams>),
    Distill(Box<DistillParams>),
    Eval(EvalParams),
}

/// One stage of the recipe, references unresolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpec {
    pub name: String,
    pub kind: StageKind,
    /// The stage (or "model") this stage transforms; `None` = previous stage.
    pub input: Option<String>,
    /// Stages evaluated by an eval stage.
    pub inputs: Vec<String>,
    pub teacher: Option<String>,
    pub reference: Option<String>,
    pub data: Option<String>,
    /// Held-out data set a training stage validates on after each epoch.
    pub validation: Option<String>,
    pub params: StageParams,
}

/// Parses `[stages.NAME]`.
pub fn parse_stage(
    source: &RecipeSource,
    name: &str,
    table: &toml::Table,
) -> Result<StageSpec, RecipeError> {
    let at = |key: &'static str| ["stages", name, key];
    let kind_name = match table.get("kind") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => return Err(source.error(&at("kind"), "`kind` must be a string")),
        None => {
            return Err(source.error(&["stages", name], format!("stage `{name}` has no `kind`")))
        }
    };
    let kind = StageKind::ALL
        .iter()
        .find(|(n, _)| *n == kind_name)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let known: Vec<&str> = StageKind::ALL.iter().map(|(n, _)| *n).collect();
            source.error(
                &at("kind"),
                format!(
                    "unknown stage kind `{kind_name}` (expected one of {})",
                    known.join(", ")
                ),
            )
        })?;
    if !kind.implemented() {
        return Err(source.error(
            &at("kind"),
            format!("stage kind `{kind_name}` is not available in this version of amct yet (available: fuse, retrain, quantize, qat, distill, eval)"),
        ));
    }
    let string = |key: &'static str| -> Result<Option<String>, RecipeError> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => {
                Err(source.error(&at(key), format!("`{key}` must be a stage name (a string)")))
            }
        }
    };
    if kind == StageKind::Quantize && !table.contains_key("data") {
        return Err(source.error(
            &["stages", name],
            format!("quantize stage `{name}` needs `data = \"NAME\"` (its calibration set)"),
        ));
    }
    if kind == StageKind::Distill && !table.contains_key("teacher") {
        return Err(source.error(
            &["stages", name],
            format!("distill stage `{name}` needs `teacher = \"STAGE\"` (the float model)"),
        ));
    }
    if matches!(
        kind,
        StageKind::Retrain | StageKind::Qat | StageKind::Distill
    ) && !table.contains_key("data")
    {
        return Err(source.error(
            &["stages", name],
            format!(
                "{kind_name} stage `{name}` needs `data = \"NAME\"` (its labelled training set)"
            ),
        ));
    }
    let mut params = table.clone();
    params.remove("kind");
    for key in [
        "input",
        "inputs",
        "teacher",
        "reference",
        "data",
        "validation",
    ] {
        if params.remove(key).is_some() && !kind.reference_keys().contains(&key) {
            return Err(source.key_error(
                &at(key),
                format!("a `{kind_name}` stage has no `{key}` key"),
            ));
        }
    }
    let inputs = match table.get("inputs") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| source.error(&at("inputs"), "`inputs` must be a list of stage names"))?,
        Some(_) => {
            return Err(source.error(&at("inputs"), "`inputs` must be a list of stage names"))
        }
    };
    let path = ["stages", name];
    let value = toml::Value::Table(params.clone());
    let params = match kind {
        StageKind::Fuse => StageParams::Fuse(deserialize_at(source, &path, value)?),
        StageKind::Quantize => StageParams::Quantize(Box::new(super::quantize::parse_quantize(
            source, name, params,
        )?)),
        StageKind::Distill => {
            let mut rest = params.clone();
            let distill = match rest.remove("distill") {
                Some(v) => deserialize_at(source, &at("distill"), v)?,
                None => DistillConfig::default(),
            };
            let train: TrainParams = deserialize_at(source, &path, toml::Value::Table(rest))?;
            let problems = train.problems().into_iter().chain(distill.problems());
            if let Some((key, message)) = problems.into_iter().next() {
                return Err(source.error(&at(key), message));
            }
            StageParams::Distill(Box::new(DistillParams { train, distill }))
        }
        StageKind::Retrain | StageKind::Qat => {
            let p: TrainParams = deserialize_at(source, &path, value)?;
            if let Some((key, message)) = p.problems().into_iter().next() {
                return Err(source.error(&at(key), message));
            }
            StageParams::Train(Box::new(p))
        }
        _ => StageParams::Eval(deserialize_at(source, &path, value)?),
    };
    if let StageParams::Eval(e) = &params {
        if e.latency_batch == 0 || e.latency_iters == 0 {
            let key = if e.latency_batch == 0 {
                "latency_batch"
            } else {
                "latency_iters"
            };
            return Err(source.error(&at(key), format!("`{key}` must be at least 1")));
        }
        if let Some(k) = e.top_k.iter().find(|&&k| k == 0) {
            return Err(source.error(
                &at("top_k"),
                format!("top_k entries must be at least 1, got {k}"),
            ));
        }
    }
    Ok(StageSpec {
        name: name.to_string(),
        kind,
        input: string("input")?,
        inputs,
        teacher: string("teacher")?,
        reference: string("reference")?,
        data: string("data")?,
        validation: string("validation")?,
        params,
    })
}
