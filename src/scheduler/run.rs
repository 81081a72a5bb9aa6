//! Runs a recipe: stages start as soon as the stages they read have
//! finished, on a tokio runtime (stage work on its blocking pool), at most
//! `[recipe] jobs` compute-heavy stages at once on the device while light
//! stages (`fuse`) start freely. Each stage is a cache hit or computed and
//! committed to the cache; a failing stage stops its dependents while
//! independent stages go on. SIGINT/SIGTERM stop the run without committing
//! anything more. Outputs, report (stages in dependency order, whatever the
//! completion order) and lockfile are written last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

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
    /// SIGINT or SIGTERM arrived; `running` were the stages in progress.
    #[error("interrupted by {signal}")]
    Interrupted {
        signal: &'static str,
        running: Vec<String>,
    },
    #[error("{0}")]
    Other(String),
}

impl RunError {
    /// The exit code of a process stopped by this error: 128 + the signal
    /// number for an interruption (130 for SIGINT, 143 for SIGTERM), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Interrupted { signal, .. } if *signal == "SIGTERM" => 143,
            RunError::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

/// Settings of one `amct run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    pub cache_root: PathBuf,
    /// Compute every stage, ignoring cache entries (the results are still
    /// committed: the outputs link to them).
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

/// A computed or cached model of a stage. Cloned into the tasks that read
/// it; the model itself is loaded once, by the first task that needs it.
#[derive(Clone)]
struct Produced {
    key: String,
    /// The cache entry holding the stage's outputs.
    dir: Option<PathBuf>,
    /// The model file, for models not loaded yet.
    file: Option<PathBuf>,
    model: Arc<Mutex<Option<Arc<Model>>>>,
}

impl Produced {
    fn new(key: String, dir: Option<PathBuf>, file: Option<PathBuf>, model: Option<Model>) -> Self {
        Produced {
            key,
            dir,
            file,
            model: Arc::new(Mutex::new(model.map(Arc::new))),
        }
    }
}

/// Whether a stage kind computes enough to count against `[recipe] jobs`:
/// everything but the graph rewrites of `fuse`.
pub fn compute_heavy(kind: StageKind) -> bool {
    kind != StageKind::Fuse
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
    // The source model is read only if a stage has to be computed.
    let source = Produced::new(
        model_key.clone(),
        None,
        Some(recipe.model_path.clone()),
        None,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Other(format!("starting the scheduler: {e}")))?;
    let shared = Shared {
        recipe: Arc::new(recipe.clone()),
        opts: Arc::new(opts.clone()),
        cache: cache.clone(),
        device,
        started,
    };
    let outcome = runtime.block_on(schedule(shared, source));
    let (records, produced) = match outcome {
        Ok(done) => done,
        Err(e) => {
            // Stage threads may still be computing: do not wait for them.
            runtime.shutdown_background();
            return Err(e);
        }
    };
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

/// What every stage task reads.
#[derive(Clone)]
struct Shared {
    recipe: Arc<Recipe>,
    opts: Arc<RunOptions>,
    cache: Cache,
    device: candle_core::Device,
    started: Instant,
}

/// A finished stage task: its record and, when it succeeded, its output.
struct Finished {
    record: StageRecord,
    produced: Option<Produced>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Waiting,
    Running,
    Ok,
    Broken,
}

/// The stages that may start now, in `order`: waiting, every dependency
/// finished, and (for compute-heavy stages) a free slot of the `jobs`
/// budget, counting the heavy stages already running.
fn startable(kinds: &[(StageKind, Vec<usize>)], state: &[State], jobs: usize) -> Vec<usize> {
    let mut heavy = kinds
        .iter()
        .zip(state)
        .filter(|((k, _), s)| **s == State::Running && compute_heavy(*k))
        .count();
    let mut out = Vec::new();
    for (i, (kind, deps)) in kinds.iter().enumerate() {
        if state[i] != State::Waiting || !deps.iter().all(|&d| state[d] == State::Ok) {
            continue;
        }
        if compute_heavy(*kind) {
            if heavy >= jobs {
                continue;
            }
            heavy += 1;
        }
        out.push(i);
    }
    out
}

/// Runs every stage; returns the records in dependency order and every
/// stage's output.
async fn schedule(
    shared: Shared,
    source: Produced,
) -> Result<(Vec<StageRecord>, BTreeMap<String, Produced>), RunError> {
    let specs: Vec<StageSpec> = order(&shared.recipe.stages).into_iter().cloned().collect();
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let graph: Vec<(StageKind, Vec<usize>)> = specs
        .iter()
        .map(|s| {
            let deps = dependencies(s)
                .into_iter()
                .filter_map(|d| index.get(d).copied());
            (s.kind, deps.collect())
        })
        .collect();
    let jobs = shared.recipe.meta.jobs.max(1);
    let mut state = vec![State::Waiting; specs.len()];
    let mut records: Vec<Option<StageRecord>> = vec![None; specs.len()];
    let mut produced: BTreeMap<String, Produced> = BTreeMap::new();
    produced.insert(MODEL.into(), source);
    let signal_err =
        |e: std::io::Error| RunError::Other(format!("installing signal handlers: {e}"));
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut running: JoinSet<Finished> = JoinSet::new();
    let mut task_stage: HashMap<tokio::task::Id, usize> = HashMap::new();
    loop {
        // Stages after a broken one are skipped (dependents come later in `specs`).
        for i in 0..specs.len() {
            if state[i] != State::Waiting {
                continue;
            }
            if let Some(&bad) = graph[i].1.iter().find(|&&d| state[d] == State::Broken) {
                state[i] = State::Broken;
                let at = shared.started.elapsed().as_secs_f64();
                let why = format!("skipped: `{}` did not finish", specs[bad].name);
                records[i] = Some(skipped(&specs[i], why, at));
            }
        }
        for i in startable(&graph, &state, jobs) {
            state[i] = State::Running;
            let spec = specs[i].clone();
            let inputs: BTreeMap<String, Produced> = produced
                .iter()
                .filter(|(name, _)| references(&spec).contains(&name.as_str()))
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect();
            let task = shared.clone();
            let handle = running.spawn_blocking(move || execute(&task, &spec, &inputs));
            task_stage.insert(handle.id(), i);
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = running.join_next_with_id() => joined,
            _ = sigint.recv() => return Err(interrupted(&shared, "SIGINT", &specs, &state)),
            _ = sigterm.recv() => return Err(interrupted(&shared, "SIGTERM", &specs, &state)),
        };
        let Some(joined) = joined else { break };
        let (i, finished) = match joined {
            Ok((id, finished)) => (task_stage[&id], finished),
            Err(e) => {
                // A panic in a stage fails that stage, not the run.
                let i = task_stage[&e.id()];
                let at = shared.started.elapsed().as_secs_f64();
                let mut record = skipped(&specs[i], format!("stage panicked: {e}"), at);
                record.status = StageStatus::Failed;
                (
                    i,
                    Finished {
                        record,
                        produced: None,
                    },
                )
            }
        };
        state[i] = match finished.record.status {
            StageStatus::Ok => State::Ok,
            _ => State::Broken,
        };
        if let Some(p) = finished.produced {
            produced.insert(specs[i].name.clone(), p);
        }
        records[i] = Some(finished.record);
    }
    let records = records
        .into_iter()
        .zip(&specs)
        .map(|(r, spec)| r.unwrap_or_else(|| skipped(spec, "not run".into(), 0.0)))
        .collect();
    produced.remove(MODEL);
    Ok((records, produced))
}

/// Closes the cache (no commit after this; our staging folders removed) and
/// names the stages that were running.
fn interrupted(
    shared: &Shared,
    signal: &'static str,
    specs: &[StageSpec],
    state: &[State],
) -> RunError {
    shared.cache.close();
    tracing::info!(signal, "interrupted");
    RunError::Interrupted {
        signal,
        running: specs
            .iter()
            .zip(state)
            .filter(|(_, s)| **s == State::Running)
            .map(|(spec, _)| spec.name.clone())
            .collect(),
    }
}

/// Names a stage reads a model from ("model" included).
fn references(spec: &StageSpec) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    names.extend(spec.input.as_deref());
    names.extend(spec.inputs.iter().map(String::as_str));
    names.extend(spec.teacher.as_deref());
    names.extend(spec.reference.as_deref());
    names
}

/// One stage on a blocking thread: cache hit or computed, timed.
fn execute(shared: &Shared, spec: &StageSpec, inputs: &BTreeMap<String, Produced>) -> Finished {
    // One instant for both, so started_at + seconds is exactly the end.
    let t0 = Instant::now();
    let started_at = t0.duration_since(shared.started).as_secs_f64();
    tracing::info!(stage = %spec.name, kind = spec.kind.name(), "stage starts");
    let outcome = run_one(shared, spec, inputs);
    let seconds = t0.elapsed().as_secs_f64();
    match outcome {
        Ok((ok, produced)) => {
            let (record_model, metrics, hit, key) = ok;
            tracing::info!(stage = %spec.name, cache_hit = hit, key = %key, seconds, "stage done");
            Finished {
                record: StageRecord {
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
                },
                produced: Some(produced),
            }
        }
        Err(e) => {
            tracing::warn!(stage = %spec.name, error = %e, "stage failed");
            let mut record = skipped(spec, e, started_at);
            record.status = StageStatus::Failed;
            record.seconds = seconds;
            Finished {
                record,
                produced: None,
            }
        }
    }
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

/// Computes (or reads from the cache) one stage; `inputs` holds the outputs
/// of the stages it references. Returns the record's parts and the stage's
/// own output for the stages that read it.
fn run_one(
    shared: &Shared,
    spec: &StageSpec,
    inputs: &BTreeMap<String, Produced>,
) -> Result<(StageOk, Produced), String> {
    let (recipe, opts, cache) = (&*shared.recipe, &*shared.opts, &shared.cache);
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
        let p = inputs
            .get(*name)
            .ok_or_else(|| format!("`{name}` produced no model"))?;
        input_keys.insert(role.clone(), p.key.clone());
    }
    let data = spec.data.as_ref().and_then(|d| recipe.data.get(d));
    let validation = spec.validation.as_ref().and_then(|d| recipe.data.get(d));
    let mut data_hashes = Vec::new();
    for cfg in [data, validation].into_iter().flatten() {
        data_hashes.push(crate::data::content_hash(cfg).map_err(|e| e.to_string())?);
    }
    let data_hash = (!data_hashes.is_empty()).then(|| data_hashes.join("+"));
    // Evaluation (latency) and training (arithmetic order) depend on the device.
    let device_dependent = matches!(
        spec.kind,
        StageKind::Eval | StageKind::Retrain | StageKind::Qat | StageKind::Distill
    );
    let device_part = device_dependent.then_some(opts.device.as_str());
    let key = stage_key(spec, &input_keys, data_hash.as_deref(), device_part);
    let forced = opts.no_cache || opts.force.contains(&spec.name);
    let _lock = cache.lock(&key).map_err(|e| e.to_string())?;
    let (dir, hit, computed) = match cache.get(&key).filter(|_| !forced) {
        Some(dir) => (dir, true, None),
        None => {
            let spinner = crate::progress::spinner(format!("{} ({})", spec.name, spec.kind.name()));
            let mut models = BTreeMap::new();
            for (_, name) in &roles {
                let p = inputs
                    .get(*name)
                    .ok_or_else(|| format!("`{name}` produced no model"))?;
                models.insert(name.to_string(), load_produced(p, name, recipe)?);
            }
            let checkpoint_dir = cache.checkpoint_dir(&key);
            if forced {
                // A forced stage recomputes from scratch.
                let _ = std::fs::remove_dir_all(&checkpoint_dir);
            }
            let ctx = StageContext {
                spec,
                models: &models,
                data,
                validation,
                checkpoint_dir: Some(checkpoint_dir.clone()),
                seed: recipe.meta.seed,
                device: &shared.device,
            };
            let out = run_stage(&ctx).map_err(|e| e.to_string());
            spinner.finish_and_clear();
            let out = out?;
            let staging = cache.staging_dir(&key).map_err(|e| e.to_string())?;
            let dir = match write_entry(cache, &key, &staging, &out, forced) {
                Ok(dir) => dir,
                Err(e) => {
                    cache.discard(&staging);
                    return Err(e);
                }
            };
            // The entry is complete: its checkpoints are no longer needed.
            let _ = std::fs::remove_dir_all(&checkpoint_dir);
            (dir, false, out.model)
        }
    };
    let result: serde_json::Value = std::fs::read_to_string(dir.join("result.json"))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))?;
    let produced = if spec.kind == StageKind::Eval {
        Produced::new(key.clone(), Some(dir), None, None)
    } else {
        let file = dir.join("model.onnx");
        Produced::new(key.clone(), Some(dir), Some(file), computed)
    };
    let model = result.get("model").cloned().filter(|m| !m.is_null());
    Ok((
        (
            model,
            result.get("metrics").cloned().unwrap_or_default(),
            hit,
            key,
        ),
        produced,
    ))
}

/// Writes a computed stage's files into `staging` and commits it as entry
/// `key` (replacing a complete entry when the stage was forced).
fn write_entry(
    cache: &Cache,
    key: &str,
    staging: &Path,
    out: &crate::stages::StageOutput,
    replace: bool,
) -> Result<PathBuf, String> {
    if let Some(model) = &out.model {
        save_model(
            model,
            &staging.join("model.onnx"),
            &ExportOptions::default(),
        )
        .map_err(|e| e.to_string())?;
    }
    for alias in &out.aliases {
        let (from, to) = (staging.join("model.onnx"), staging.join(alias));
        std::fs::hard_link(&from, &to)
            .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
            .map_err(|e| format!("writing '{}': {e}", to.display()))?;
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
    cache
        .commit(key, staging, replace)
        .map_err(|e| e.to_string())
}

/// A referenced model, read from its file on first use (the source model
/// gets the recipe's pinned input shapes); tasks reading the same model
/// wait for one load.
fn load_produced(p: &Produced, name: &str, recipe: &Recipe) -> Result<Arc<Model>, String> {
    let mut slot = p.model.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = slot.as_ref() {
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
    *slot = Some(model.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// eval0 <- fuse0; eval1 and fuse1 independent; eval2 <- fuse1.
    fn graph() -> Vec<(StageKind, Vec<usize>)> {
        vec![
            (StageKind::Fuse, vec![]),
            (StageKind::Eval, vec![0]),
            (StageKind::Eval, vec![]),
            (StageKind::Fuse, vec![]),
            (StageKind::Eval, vec![3]),
        ]
    }

    #[test]
    fn heavy_stages_wait_for_a_slot_and_light_ones_do_not() {
        use State::*;
        let g = graph();
        let fresh = [Waiting; 5];
        assert_eq!(
            startable(&g, &fresh, 1),
            [0, 2, 3],
            "one heavy stage, light ones free"
        );
        assert_eq!(startable(&g, &fresh, 2), [0, 2, 3]);
        let busy = [Ok, Waiting, Running, Ok, Waiting];
        assert!(
            startable(&g, &busy, 1).is_empty(),
            "the heavy slot is taken"
        );
        assert_eq!(startable(&g, &busy, 2), [1]);
        assert_eq!(startable(&g, &busy, 3), [1, 4]);
        let broken = [Broken, Waiting, Ok, Waiting, Waiting];
        assert_eq!(
            startable(&g, &broken, 4),
            [3],
            "a broken input never starts"
        );
    }

    #[test]
    fn only_fuse_is_light() {
        for (_, kind) in StageKind::ALL {
            assert_eq!(compute_heavy(*kind), *kind != StageKind::Fuse, "{kind:?}");
        }
    }
}
