//! Runs a recipe: stages in dependency order, each a cache hit or computed
//! and committed to the cache; a failing stage stops its dependents while
//! independent stages go on. Outputs, report and lockfile are written last.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use super::cache::{Cache, CacheError};
use super::keys::{file_hash, stage_key};
use super::{lockfile, outputs};
use crate::graph::Model;
use crate::onnx::{load_model, save_model, ExportOptions};
use crate::recipe::{dependencies, Recipe, StageKind, StageSpec, MODEL};
use crate::stages::{run_stage, StageContext};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error("{0}")]
    Other(String),
}

/// Settings of one `amct run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub cache_root: PathBuf,
    /// Compute every stage, ignoring (and not writing) cache entries.
    pub no_cache: bool,
    /// Stages recomputed even when cached.
    pub force: Vec<String>,
    pub device: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Ok,
    Failed,
    Skipped,
}

/// What happened to one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: StageKind,
    pub status: StageStatus,
    pub cache_hit: bool,
    pub seconds: f64,
    pub key: Option<String>,
    pub error: Option<String>,
    /// Size, parameters and MACs of the stage's output model.
    pub model: Option<serde_json::Value>,
    pub metrics: serde_json::Value,
    /// Start offset from the beginning of the run, for the timeline.
    pub started_at: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub recipe: String,
    pub tool_version: String,
    pub device: String,
    pub model_key: String,
    pub stages: Vec<StageRecord>,
    pub seconds: f64,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        self.stages.iter().any(|s| s.status != StageStatus::Ok)
    }
}

/// A computed or cached model of a stage.
struct Produced {
    key: String,
    /// The cache entry holding the stage's outputs.
    dir: Option<PathBuf>,
    /// The model file, for models not loaded yet.
    file: Option<PathBuf>,
    model: Option<Arc<Model>>,
}

pub fn run_recipe(recipe: &Recipe, opts: &RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let cache = Cache::open(&opts.cache_root)?;
    let device =
        crate::exec::parse_device(&opts.device).map_err(|e| RunError::Other(e.to_string()))?;
    let mut model_key = source_key(&recipe.model_path)?;
    if !recipe.model.inputs.is_empty() {
        model_key.push_str(&format!("+pinned{:?}", recipe.model.inputs));
    }
    let mut produced: BTreeMap<String, Produced> = BTreeMap::new();
    produced.insert(
        MODEL.into(),
        // The source model is read only if a stage has to be computed.
        Produced {
            key: model_key.clone(),
            dir: None,
            file: Some(recipe.model_path.clone()),
            model: None,
        },
    );
    let mut records: Vec<StageRecord> = Vec::new();
    let mut broken: HashSet<String> = HashSet::new();
    for spec in order(&recipe.stages) {
        let t0 = Instant::now();
        let started_at = started.elapsed().as_secs_f64();
        let deps = dependencies(spec);
        if let Some(bad) = deps.iter().find(|d| broken.contains(**d)) {
            broken.insert(spec.name.clone());
            records.push(skipped(
                spec,
                format!("skipped: `{bad}` did not finish"),
                started_at,
            ));
            continue;
        }
        tracing::info!(stage = %spec.name, kind = spec.kind.name(), "stage starts");
        let outcome = run_one(recipe, spec, opts, &cache, &device, &mut produced);
        let seconds = t0.elapsed().as_secs_f64();
        match &outcome {
            Ok((_, _, hit, key)) => {
                tracing::info!(stage = %spec.name, cache_hit = hit, key = %key, seconds, "stage done")
            }
            Err(e) => tracing::warn!(stage = %spec.name, error = %e, "stage failed"),
        }
        match outcome {
            Ok((record_model, metrics, hit, key)) => records.push(StageRecord {
                name: spec.name.clone(),
                kind: spec.kind,
                status: StageStatus::Ok,
                cache_hit: hit,
                seconds,
                key: Some(key),
                error: None,
                model: record_model,
                metrics,
                started_at,
            }),
            Err(e) => {
                broken.insert(spec.name.clone());
                let mut r = skipped(spec, e, started_at);
                r.status = StageStatus::Failed;
                r.seconds = seconds;
                records.push(r);
            }
        }
    }
    let report = RunReport {
        recipe: recipe.meta.name.clone(),
        tool_version: super::TOOL_VERSION.into(),
        device: opts.device.clone(),
        model_key,
        stages: records,
        seconds: started.elapsed().as_secs_f64(),
    };
    let dirs: BTreeMap<String, PathBuf> = produced
        .iter()
        .filter_map(|(n, p)| p.dir.clone().map(|d| (n.clone(), d)))
        .collect();
    outputs::write_outputs(&opts.out_dir, &report, &dirs).map_err(RunError::Other)?;
    lockfile::write_lockfile(&opts.out_dir, recipe, &report).map_err(RunError::Other)?;
    Ok(report)
}

fn skipped(spec: &StageSpec, error: String, started_at: f64) -> StageRecord {
    StageRecord {
        name: spec.name.clone(),
        kind: spec.kind,
        status: StageStatus::Skipped,
        cache_hit: false,
        seconds: 0.0,
        key: None,
        error: Some(error),
        model: None,
        metrics: serde_json::Value::Null,
        started_at,
    }
}

/// Stages in dependency order, ties in file order.
fn order(stages: &[StageSpec]) -> Vec<&StageSpec> {
    let mut done: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    while out.len() < stages.len() {
        let before = out.len();
        for s in stages {
            if !done.contains(s.name.as_str()) && dependencies(s).iter().all(|d| done.contains(d)) {
                done.insert(&s.name);
                out.push(s);
            }
        }
        if out.len() == before {
            break; // a cycle; validation rejects these before we get here
        }
    }
    out
}

/// Applies `[model] inputs = { name = [dims] }`: fixes dynamic dimensions
/// of graph inputs; known dimensions must agree.
fn pin_inputs(model: &mut Model, pins: &BTreeMap<String, Vec<i64>>) -> Result<(), RunError> {
    for (name, dims) in pins {
        let input = model
            .graph
            .inputs
            .iter_mut()
            .find(|i| &i.name == name)
            .ok_or_else(|| {
                RunError::Other(format!(
                    "[model] inputs: the model has no input named '{name}'"
                ))
            })?;
        if let Some(shape) = &input.shape {
            let agrees = shape.len() == dims.len()
                && shape
                    .iter()
                    .zip(dims)
                    .all(|(d, &v)| d.known().is_none_or(|k| k == v));
            if !agrees {
                return Err(RunError::Other(format!(
                    "[model] inputs: '{name}' is {} in the model, cannot pin it to {dims:?}",
                    crate::graph::shape_string(shape)
                )));
            }
        }
        input.shape = Some(dims.iter().map(|&d| crate::graph::Dim::Known(d)).collect());
    }
    Ok(())
}

/// The source model's key: its file and external data files.
fn source_key(path: &Path) -> Result<String, RunError> {
    let io = |e: std::io::Error| RunError::Other(format!("hashing '{}': {e}", path.display()));
    let mut parts = vec![file_hash(path).map_err(io)?];
    for f in
        crate::inspect::external_data_files(path).map_err(|e| RunError::Other(e.to_string()))?
    {
        parts.push(file_hash(&f).map_err(io)?);
    }
    Ok(parts.join("+"))
}

type StageOk = (Option<serde_json::Value>, serde_json::Value, bool, String);

fn run_one(
    recipe: &Recipe,
    spec: &StageSpec,
    opts: &RunOptions,
    cache: &Cache,
    device: &candle_core::Device,
    produced: &mut BTreeMap<String, Produced>,
) -> Result<StageOk, String> {
    let mut input_keys = BTreeMap::new();
    let mut roles: Vec<(String, &str)> = Vec::new();
    roles.extend(spec.input.as_deref().map(|n| ("input".to_string(), n)));
    roles.extend(
        spec.inputs
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("inputs.{i}"), n.as_str())),
    );
    roles.extend(spec.teacher.as_deref().map(|n| ("teacher".to_string(), n)));
    roles.extend(
        spec.reference
            .as_deref()
            .map(|n| ("reference".to_string(), n)),
    );
    for (role, name) in &roles {
        let p = produced
            .get(*name)
            .ok_or_else(|| format!("`{name}` produced no model"))?;
        input_keys.insert(role.clone(), p.key.clone());
    }
    let data = spec.data.as_ref().and_then(|d| recipe.data.get(d));
    let data_hash = match data {
        Some(cfg) => Some(crate::data::content_hash(cfg).map_err(|e| e.to_string())?),
        None => None,
    };
    let device_part = (spec.kind == StageKind::Eval).then_some(opts.device.as_str());
    let key = stage_key(spec, &input_keys, data_hash.as_deref(), device_part);
    let forced = opts.no_cache || opts.force.contains(&spec.name);
    let _lock = cache.lock(&key).map_err(|e| e.to_string())?;
    let (dir, hit) = match cache.get(&key).filter(|_| !forced) {
        Some(dir) => (dir, true),
        None => {
            let mut models = BTreeMap::new();
            for (_, name) in &roles {
                models.insert(name.to_string(), load_produced(produced, name, recipe)?);
            }
            let ctx = StageContext {
                spec,
                models: &models,
                data,
                seed: recipe.meta.seed,
                device,
            };
            let out = run_stage(&ctx).map_err(|e| e.to_string())?;
            let staging = cache.staging_dir(&key).map_err(|e| e.to_string())?;
            if let Some(model) = &out.model {
                save_model(
                    model,
                    &staging.join("model.onnx"),
                    &ExportOptions::default(),
                )
                .map_err(|e| e.to_string())?;
            }
            for (name, model) in &out.extra_models {
                save_model(model, &staging.join(name), &ExportOptions::default())
                    .map_err(|e| e.to_string())?;
            }
            for (name, bytes) in &out.files {
                std::fs::write(staging.join(name), bytes).map_err(|e| e.to_string())?;
            }
            let summary = serde_json::json!({ "metrics": out.metrics, "model": out.model.as_ref().map(model_summary) });
            let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
            std::fs::write(staging.join("result.json"), text).map_err(|e| e.to_string())?;
            let dir = cache.commit(&key, &staging).map_err(|e| e.to_string())?;
            if let Some(model) = out.model {
                produced.insert(
                    spec.name.clone(),
                    Produced {
                        key: key.clone(),
                        dir: Some(dir.clone()),
                        file: Some(dir.join("model.onnx")),
                        model: Some(Arc::new(model)),
                    },
                );
            }
            (dir, false)
        }
    };
    let result: serde_json::Value = std::fs::read_to_string(dir.join("result.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))?;
    if spec.kind != StageKind::Eval {
        let entry = produced.entry(spec.name.clone()).or_insert(Produced {
            key: key.clone(),
            dir: None,
            file: None,
            model: None,
        });
        entry.file = Some(dir.join("model.onnx"));
        entry.dir = Some(dir.clone());
    } else {
        produced.insert(
            spec.name.clone(),
            Produced {
                key: key.clone(),
                dir: Some(dir),
                file: None,
                model: None,
            },
        );
    }
    let model = result.get("model").cloned().filter(|m| !m.is_null());
    Ok((
        model,
        result.get("metrics").cloned().unwrap_or_default(),
        hit,
        key,
    ))
}

/// A referenced model, read from its file on first use (the source model
/// gets the recipe's pinned input shapes).
fn load_produced(
    produced: &mut BTreeMap<String, Produced>,
    name: &str,
    recipe: &Recipe,
) -> Result<Arc<Model>, String> {
    let p = produced
        .get_mut(name)
        .ok_or_else(|| format!("`{name}` produced no model"))?;
    if let Some(m) = &p.model {
        return Ok(m.clone());
    }
    let file = p
        .file
        .as_ref()
        .ok_or_else(|| format!("`{name}` has no model output"))?;
    let mut model = load_model(file).map_err(|e| e.to_string())?;
    if name == MODEL {
        pin_inputs(&mut model, &recipe.model.inputs).map_err(|e| e.to_string())?;
    }
    let model = Arc::new(model);
    p.model = Some(model.clone());
    Ok(model)
}

fn model_summary(model: &Model) -> serde_json::Value {
    use prost::Message;
    let macs = crate::inspect::inspect_model(model, 1).map(|r| r.macs).ok();
    serde_json::json!({
        "size_bytes": crate::onnx::model_to_proto(model).encoded_len(),
        "parameters": model.graph.parameter_count(),
        "macs": macs,
    })
}
