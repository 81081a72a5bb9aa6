//! The `bench-forward` and `bench-train` subcommands: time the executor on random inputs
//! for the benchmark scripts in `benches/`, which compare the figures with onnxruntime and
//! PyTorch run on the same model in the same script.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType as CDType, Device, Tensor};

use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::{DType, Dim, Model};

/// Iteration counts of a timing loop.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub batch: usize,
    pub iters: usize,
    pub warmup: usize,
}

/// Random normal feeds for every graph input, with `batch` for the first unknown axis.
fn random_feeds(model: &Model, batch: usize, device: &Device) -> Result<HashMap<String, Value>> {
    let mut feeds = HashMap::new();
    for input in &model.graph.inputs {
        let shape: Vec<usize> = input
            .shape
            .as_ref()
            .with_context(|| format!("input '{}' has no shape", input.name))?
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(v) => *v as usize,
                _ if i == 0 => batch,
                _ => 1,
            })
            .collect();
        let t = Tensor::randn(0f32, 1f32, shape, device)?;
        let dtype = input.dtype.unwrap_or(DType::F32);
        feeds.insert(input.name.clone(), Value::new(t, dtype));
    }
    Ok(feeds)
}

/// Forward passes per second, as JSON `{"images_per_s": ..}`. With `fuse`, the exact rewrites
/// (BatchNorm folding, constant folding) run first, as onnxruntime's default optimizations do.
/// With `profile`, each node's time is recorded too and the second string is the
/// `op_profile::report` of the timed runs.
pub fn bench_forward(
    model: &Model,
    t: Timing,
    device: &Device,
    fuse: bool,
    profile: bool,
) -> Result<(String, Option<String>)> {
    let fused;
    let model = if fuse {
        fused = crate::passes::fuse_pipeline(model, &crate::passes::FuseOptions::default())?.0;
        &fused
    } else {
        model
    };
    let feeds = random_feeds(model, t.batch, device)?;
    let executor = Executor::new(model, ExecOptions::inference(device))?;
    for _ in 0..t.warmup {
        executor.run(&feeds)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    for _ in 0..t.iters {
        let outputs = match profile {
            true => executor.run_timed(&feeds, &mut times)?,
            false => executor.run(&feeds)?,
        };
        for o in outputs {
            // Forces completion on asynchronous devices.
            o.tensor.to_device(&Device::Cpu)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let images = (t.iters * t.batch) as f64;
    let json = serde_json::json!({
        "images_per_s": images / secs, "seconds": secs, "iters": t.iters, "batch": t.batch
    });
    let table = profile.then(|| crate::op_profile::report(&times, t.iters, 0.002));
    Ok((json.to_string(), table))
}

/// Training steps per second (forward in training mode, softmax cross-entropy on random
/// labels, backward, SGD with momentum 0.9) on the model's first output `[N, classes]`;
/// prints JSON `{"images_per_s": .., "loss_first": .., "loss_last": ..}`.
pub fn bench_train(model: &Model, t: Timing, device: &Device, lr: f64) -> Result<String> {
    let options = ExecOptions {
        device: device.clone(),
        float: CDType::F32,
        track_params: true,
        train: true,
        qat: false,
    };
    let executor = Executor::new(model, options)?;
    let feeds = random_feeds(model, t.batch, device)?;
    let classes = match model.graph.outputs.first().and_then(|o| o.shape.as_deref()) {
        Some([_, Dim::Known(c)]) => *c as usize,
        _ => bail!("the first graph output must have shape [N, classes] with known classes"),
    };
    let labels: Vec<u32> = (0..t.batch).map(|i| (i * 7919 % classes) as u32).collect();
    let labels = Tensor::new(labels.as_slice(), device)?;
    let params = crate::train::graph::select_params(executor.params(), &[], &[], false)?;
    let mut sgd = crate::train::optim::Optimizer::new(&crate::recipe::OptimizerConfig {
        lr,
        momentum: 0.9,
        ..Default::default()
    });
    let mut step = || -> Result<f32> {
        let logits = executor.run(&feeds)?.remove(0).tensor;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        let grads = loss.backward()?;
        sgd.step(&params, &grads, lr, 1.0)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    let mut first = None;
    for _ in 0..t.warmup {
        first.get_or_insert(step()?);
    }
    let start = Instant::now();
    let mut last = 0.0;
    let mut step_seconds = Vec::with_capacity(t.iters);
    for _ in 0..t.iters {
        let step_start = Instant::now();
        last = step()?;
        step_seconds.push(step_start.elapsed().as_secs_f64());
        first.get_or_insert(last);
    }
    let secs = start.elapsed().as_secs_f64();
    let images = (t.iters * t.batch) as f64;
    Ok(serde_json::json!({
        "images_per_s": images / secs, "seconds": secs, "iters": t.iters, "batch": t.batch,
        "params": params.len(), "loss_first": first, "loss_last": last,
        "step_seconds": step_seconds
    })
    .to_string())
}
