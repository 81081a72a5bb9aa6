//! The `amct` command line: inspect, infer, convert and bench-forward.
//!
//! Library code returns typed errors; this binary turns them into one
//! `error: ...` message and a non-zero exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use amct::exec::{self, ExecOptions, Executor, Value};
use amct::graph::{Dim, Model};
use amct::onnx::{self as onnx_io, ExportOptions};

#[derive(Parser)]
#[command(
    name = "amct",
    version,
    about = "Model compression toolkit for ONNX models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show inputs, outputs, ops, parameters, MACs per layer and unsupported ops.
    Inspect {
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Batch size used for MAC counts (symbolic batch dims).
        #[arg(long, default_value_t = 1)]
        batch: i64,
    },
    /// Run a model on inputs from an .npz file and write its outputs to an .npz file.
    Infer {
        model: PathBuf,
        /// Inputs keyed by graph input name.
        #[arg(long)]
        input: PathBuf,
        /// Where to write outputs keyed by graph output name.
        #[arg(long)]
        output: PathBuf,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Import, verify and re-export a model with amct's own writer.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Store weights in OUTPUT.data next to the model.
        #[arg(long)]
        external_data: bool,
    },
    /// Measure forward throughput (images/s) on random inputs; prints JSON.
    BenchForward {
        model: PathBuf,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json, batch } => inspect(&model, json, batch),
        Command::Infer {
            model,
            input,
            output,
            device,
        } => infer(&model, &input, &output, &device),
        Command::Convert {
            input,
            output,
            external_data,
        } => convert(&input, &output, external_data),
        Command::BenchForward {
            model,
            batch,
            iters,
            warmup,
            device,
        } => bench_forward(&model, batch, iters, warmup, &device),
    }
}

fn load(path: &Path) -> Result<Model> {
    Ok(onnx_io::load_model(path)?)
}

fn inspect(path: &Path, json: bool, batch: i64) -> Result<()> {
    let model = load(path)?;
    let report = amct::inspect::inspect(path, &model, batch)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn infer(model_path: &Path, input: &Path, output: &Path, device: &str) -> Result<()> {
    let model = load(model_path)?;
    let device = exec::parse_device(device)?;
    let options = ExecOptions {
        device: device.clone(),
        ..Default::default()
    };
    let feeds = exec::npz::read_npz(input, &device, options.float)?;
    check_feeds(&model, &feeds, input)?;
    let executor = Executor::new(&model, options)?;
    let outputs = executor
        .run(&feeds)
        .with_context(|| format!("running '{}'", model_path.display()))?;
    let named: Vec<(String, Value)> = executor
        .output_names()
        .iter()
        .cloned()
        .zip(outputs)
        .collect();
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating '{}'", dir.display()))?;
    }
    exec::npz::write_npz(output, &named)?;
    for (name, value) in &named {
        println!("{}", summarize(name, value)?);
    }
    println!("wrote {}", output.display());
    Ok(())
}

/// One line per output: shape, and the arg-max per row for 2-D float outputs.
fn summarize(name: &str, value: &Value) -> Result<String> {
    let dims = value.dims().to_vec();
    let mut line = format!("output '{name}' {} {dims:?}", value.dtype);
    if dims.len() == 2 && value.is_float() && dims[0] <= 32 && dims[1] > 0 {
        let argmax: Vec<u32> = value.tensor.argmax(1)?.to_vec1()?;
        line.push_str(&format!(" argmax per row {argmax:?}"));
    }
    Ok(line)
}

/// Every graph input must be present with a compatible shape.
fn check_feeds(model: &Model, feeds: &HashMap<String, Value>, path: &Path) -> Result<()> {
    for input in &model.graph.inputs {
        let Some(v) = feeds.get(&input.name) else {
            let have: Vec<&String> = feeds.keys().collect();
            bail!(
                "'{}' has no array for graph input '{}' (it has {have:?})",
                path.display(),
                input.name
            );
        };
        let Some(shape) = &input.shape else { continue };
        let dims = v.dims();
        let fits = dims.len() == shape.len()
            && shape
                .iter()
                .zip(dims)
                .all(|(d, &n)| !matches!(d, Dim::Known(k) if *k != n as i64));
        if !fits {
            bail!(
                "'{}': array '{}' has shape {dims:?} but the model expects {}",
                path.display(),
                input.name,
                amct::graph::shape_string(shape)
            );
        }
    }
    Ok(())
}

fn convert(input: &Path, output: &Path, external_data: bool) -> Result<()> {
    let model = load(input)?;
    let options = ExportOptions {
        external_data,
        external_threshold: 1024,
    };
    onnx_io::save_model(&model, output, &options)?;
    Ok(())
}

fn bench_forward(
    path: &Path,
    batch: usize,
    iters: usize,
    warmup: usize,
    device: &str,
) -> Result<()> {
    let model = load(path)?;
    let device = exec::parse_device(device)?;
    let options = ExecOptions {
        device: device.clone(),
        ..Default::default()
    };
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
        let t = candle_core::Tensor::randn(0f32, 1f32, shape, &device)?;
        feeds.insert(
            input.name.clone(),
            Value::new(t, input.dtype.unwrap_or(amct::graph::DType::F32)),
        );
    }
    let executor = Executor::new(&model, options)?;
    for _ in 0..warmup {
        executor.run(&feeds)?;
    }
    let start = Instant::now();
    for _ in 0..iters {
        let outs = executor.run(&feeds)?;
        // Force completion on asynchronous devices.
        for o in outs {
            o.tensor.to_device(&candle_core::Device::Cpu)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let images = (iters * batch) as f64;
    println!(
        "{}",
        serde_json::json!({ "images_per_s": images / secs, "seconds": secs, "iters": iters, "batch": batch })
    );
    Ok(())
}
