//! `eval`: accuracy (top-k with labels), agreement with a reference model
//! (top-1 agreement, mean cosine similarity, SQNR), size, parameters, MACs
//! and latency at batch 1 and batch N, for each evaluated model: with
//! amct's executor (`latency`) and, when the recipe asks (`onnxruntime`), in
//! onnxruntime through a Python subprocess (`AMCT_PYTHON`, else `python3`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType as CDType, Tensor};
use prost::Message;
use serde_json::{json, Map, Value as Json};

use super::compare::{argmax, cosine_similarity};
use super::feed::first_output;
use super::{StageContext, StageError, StageOutput};
use crate::data::{open_dataset, BatchOptions, Batches};
use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::{DType, Dim, Model};
use crate::recipe::{EvalParams, MODEL};

pub fn run(ctx: &StageContext, params: &EvalParams) -> Result<StageOutput, StageError> {
    let targets: Vec<String> = if ctx.spec.inputs.is_empty() {
        vec![ctx.spec.input.clone().unwrap_or_else(|| MODEL.to_string())]
    } else {
        ctx.spec.inputs.clone()
    };
    let reference = match &ctx.spec.reference {
        Some(name) => Some(executor(ctx, ctx.model(name)?)?),
        None => None,
    };
    let mut results = Map::new();
    for name in &targets {
        let model = ctx.model(name)?;
        let exec = executor(ctx, model)?;
        let mut m = static_metrics(model);
        let batches: Vec<usize> = if params.latency_batch == 1 {
            vec![1]
        } else {
            vec![1, params.latency_batch]
        };
        // First: a missing Python or onnxruntime fails the stage before the long work.
        if params.onnxruntime {
            let times = ort_latency_ms(model, name, &batches, params.latency_iters)?;
            for (batch, ms) in batches.iter().zip(times) {
                m.insert(format!("ort_latency_ms_batch{batch}"), json!(ms));
            }
        }
        if let Some(cfg) = ctx.data {
            let data_metrics = over_data(ctx, cfg, &exec, reference.as_ref(), params, name)?;
            m.extend(data_metrics);
        }
        if params.latency {
            for &batch in &batches {
                let ms = latency_ms(model, &exec, batch, params.latency_iters, name)?;
                m.insert(format!("latency_ms_batch{batch}"), json!(ms));
            }
        }
        results.insert(name.clone(), Json::Object(m));
    }
    Ok(StageOutput::new(None, Json::Object(results)))
}

fn executor(ctx: &StageContext, model: &Model) -> Result<Executor, StageError> {
    Ok(Executor::new(model, ExecOptions::inference(ctx.device))?)
}

fn static_metrics(model: &Model) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert(
        "size_bytes".into(),
        json!(crate::onnx::model_to_proto(model).encoded_len()),
    );
    m.insert("parameters".into(), json!(model.graph.parameter_count()));
    if let Ok(report) = crate::inspect::inspect_model(model, 1) {
        m.insert("macs".into(), json!(report.macs));
    }
    m
}

fn over_data(
    ctx: &StageContext,
    cfg: &crate::data::DataConfig,
    exec: &Executor,
    reference: Option<&Executor>,
    params: &EvalParams,
    name: &str,
) -> Result<Map<String, Json>, StageError> {
    let model = ctx.model(name)?;
    let reference_model = match &ctx.spec.reference {
        Some(r) => Some(ctx.model(r)?),
        None => None,
    };
    let ds = open_dataset(cfg)?;
    let batches = Batches::new(
        ds.as_ref(),
        BatchOptions::from_config(cfg, ctx.seed, 0),
        ctx.device,
    );
    let bar = crate::progress::bar(
        batches.num_batches() as u64,
        "batches",
        format!("eval {name}"),
    );
    let mut totals = Totals::new(&params.top_k);
    for batch in batches {
        let batch = batch?;
        let y = first_output(exec, model, &batch.x)?;
        if let Some(labels) = &batch.y {
            totals.add_labels(&y, labels)?;
        }
        if let (Some(r), Some(rm)) = (reference, reference_model) {
            totals.add_reference(&y, &first_output(r, rm, &batch.x)?)?;
        }
        totals.samples += batch.indices.len();
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(totals.into_json())
}

struct Totals {
    top_k: Vec<usize>,
    samples: usize,
    labelled: usize,
    correct: Vec<usize>,
    compared: usize,
    agree: usize,
    cosine_sum: f64,
    signal: f64,
    noise: f64,
}

impl Totals {
    fn new(top_k: &[usize]) -> Self {
        Totals {
            top_k: top_k.to_vec(),
            samples: 0,
            labelled: 0,
            correct: vec![0; top_k.len()],
            compared: 0,
            agree: 0,
            cosine_sum: 0.0,
            signal: 0.0,
            noise: 0.0,
        }
    }

    fn add_labels(&mut self, logits: &Tensor, labels: &Tensor) -> Result<(), StageError> {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let labels: Vec<i64> = labels.to_vec1()?;
        for (row, &label) in rows.iter().zip(&labels) {
            let Some(&target) = row.get(label as usize) else {
                return Err(StageError::Invalid(format!(
                    "label {label} is out of range for {} outputs",
                    row.len()
                )));
            };
            // Rank = number of classes scoring strictly higher than the label.
            let rank = row.iter().filter(|&&v| v > target).count();
            for (k, hits) in self.top_k.iter().zip(self.correct.iter_mut()) {
                if rank < *k {
                    *hits += 1;
                }
            }
            self.labelled += 1;
        }
        Ok(())
    }

    fn add_reference(&mut self, y: &Tensor, r: &Tensor) -> Result<(), StageError> {
        if y.dims() != r.dims() {
            return Err(StageError::Invalid(format!(
                "output shape {:?} differs from the reference's {:?}",
                y.dims(),
                r.dims()
            )));
        }
        let ys: Vec<Vec<f32>> = y.to_vec2()?;
        let rs: Vec<Vec<f32>> = r.to_vec2()?;
        for (a, b) in ys.iter().zip(&rs) {
            for (&x, &z) in a.iter().zip(b) {
                let (x, z) = (x as f64, z as f64);
                self.signal += z * z;
                self.noise += (x - z) * (x - z);
            }
            self.cosine_sum += cosine_similarity(a, b);
            self.agree += usize::from(argmax(a) == argmax(b));
            self.compared += 1;
        }
        Ok(())
    }

    fn into_json(self) -> Map<String, Json> {
        let mut m = Map::new();
        m.insert("samples".into(), json!(self.samples));
        if self.labelled > 0 {
            for (k, hits) in self.top_k.iter().zip(&self.correct) {
                m.insert(
                    format!("top{k}"),
                    json!(*hits as f64 / self.labelled as f64),
                );
            }
        }
        if self.compared > 0 {
            m.insert(
                "top1_agreement".into(),
                json!(self.agree as f64 / self.compared as f64),
            );
            m.insert(
                "cosine".into(),
                json!(self.cosine_sum / self.compared as f64),
            );
            let sqnr = if self.noise == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (self.signal / self.noise).log10()
            };
            // JSON has no infinity: an exact match reports null with `identical`.
            m.insert(
                "sqnr_db".into(),
                if sqnr.is_finite() {
                    json!(sqnr)
                } else {
                    Json::Null
                },
            );
            m.insert("identical".into(), json!(self.noise == 0.0));
        }
        m
    }
}

/// Median wall time of one forward pass at `batch`, in milliseconds; `None`
/// when the model's batch dimension is fixed to another size.
fn latency_ms(
    model: &Model,
    exec: &Executor,
    batch: usize,
    iters: usize,
    name: &str,
) -> Result<Option<f64>, StageError> {
    let mut feeds = HashMap::new();
    for input in &model.graph.inputs {
        if let Some(Some(Dim::Known(v))) = input.shape.as_ref().map(|s| s.first()) {
            if *v as usize != batch {
                return Ok(None);
            }
        }
        let shape: Vec<usize> = input
            .shape
            .as_ref()
            .ok_or_else(|| {
                StageError::Invalid(format!("input '{}' has no shape for latency", input.name))
            })?
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(v) => *v as usize,
                _ if i == 0 => batch,
                _ => 1,
            })
            .collect();
        let t = Tensor::zeros(shape, CDType::F32, exec.device())?;
        feeds.insert(
            input.name.clone(),
            Value::new(t, input.dtype.unwrap_or(DType::F32)),
        );
    }
    exec.run(&feeds)?;
    let bar = crate::progress::bar(iters as u64, "runs", format!("latency {name} b{batch}"));
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        for out in exec.run(&feeds)? {
            out.tensor.to_device(&candle_core::Device::Cpu)?;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
        bar.inc(1);
    }
    bar.finish_and_clear();
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied())
}

/// The script run by [`ort_latency_ms`]; see its docstring.
const ORT_SCRIPT: &str = include_str!("eval_ort_latency.py");

/// Median onnxruntime latency of `model` at each of `batches` in
/// milliseconds (`None` where the batch dimension is fixed to another size),
/// measured by a Python subprocess with intra-op threads = CPU cores.
/// Python or onnxruntime missing is an error that says how to fix it.
fn ort_latency_ms(
    model: &Model,
    name: &str,
    batches: &[usize],
    iters: usize,
) -> Result<Vec<Option<f64>>, StageError> {
    let python = std::env::var_os("AMCT_PYTHON").unwrap_or_else(|| "python3".into());
    let shown = Path::new(&python).display().to_string();
    let fix = "set AMCT_PYTHON to a Python that has onnxruntime and numpy (for example \
               .venv/bin/python, made by scripts/setup_venv.sh), or `pip install onnxruntime numpy`, \
               or set `onnxruntime = false`";
    let tmp = TempDir::new(name)?;
    let file = tmp.0.join("model.onnx");
    crate::onnx::save_model(model, &file, &crate::onnx::ExportOptions::default())
        .map_err(|e| StageError::Internal(format!("writing '{name}' for onnxruntime: {e}")))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let list: Vec<String> = batches.iter().map(usize::to_string).collect();
    let spinner = crate::progress::spinner(format!("onnxruntime latency {name}"));
    let output = Command::new(&python)
        .arg("-c")
        .arg(ORT_SCRIPT)
        .arg(&file)
        .arg(list.join(","))
        .arg(iters.to_string())
        .arg(threads.to_string())
        .output();
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        StageError::Invalid(format!(
            "`onnxruntime = true` needs Python with onnxruntime, but `{shown}` could not be run ({e}); {fix}"
        ))
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed: Option<Json> = serde_json::from_str(stdout.trim()).ok();
    if output.status.code() == Some(3) {
        if let Some(missing) = parsed.as_ref().and_then(|j| j.get("missing")) {
            return Err(StageError::Invalid(format!(
                "`onnxruntime = true` needs onnxruntime, but `{shown}` cannot import it ({}); {fix}",
                missing.as_str().unwrap_or_default()
            )));
        }
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let times = match parsed {
        Some(Json::Object(map)) if output.status.success() => map,
        _ => {
            return Err(StageError::Invalid(format!(
                "onnxruntime could not time '{name}' (`{shown}` exited with {}): {}",
                output.status,
                if tail.is_empty() {
                    stdout.trim()
                } else {
                    tail.as_str()
                }
            )))
        }
    };
    Ok(batches
        .iter()
        .map(|b| times.get(&b.to_string()).and_then(Json::as_f64))
        .collect())
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self, StageError> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let safe: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "amct-ort-{}-{}-{safe}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageError::Internal(format!("creating '{}': {e}", dir.display())))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
