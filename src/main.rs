//! The `amct` command line: run, cache, inspect, infer, convert, bench-forward.
//!
//! Library code returns typed errors; this binary turns them into one
//! `error: ...` message and a non-zero exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use amct::bench::Timing;
use amct::exec::{self, ExecOptions, Executor, Value};
use amct::graph::{Dim, Model};
use amct::onnx::{self as onnx_io, ExportOptions};
use amct::scheduler::{Cache, RunError, RunOptions, StageStatus};

#[derive(Parser)]
#[command(
    name = "amct",
    version,
    about = "Model compression toolkit for ONNX models"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a recipe: stages in dependency order, cached by content.
    Run {
        recipe: PathBuf,
        /// Output directory (default runs/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a recipe key, e.g. --set stages.eval.latency=false (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// cpu, cuda or cuda:N (default: the recipe's [recipe] device).
        #[arg(long)]
        device: Option<String>,
        /// Cache directory (default $AMCT_CACHE or ~/.cache/amct).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Recompute every stage and ignore cached results.
        #[arg(long)]
        no_cache: bool,
        /// Recompute this stage even if cached (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
    },
    /// Manage the cache: ls, du, gc.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, global = true)]
        cache: Option<PathBuf>,
    },
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
        /// Apply the exact `fuse` rewrites (BatchNormalization folding, constant
        /// folding, identity and dead-node removal) between load and save.
        #[arg(long)]
        fuse: bool,
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
        /// Time the model as given: skip the exact rewrites (BatchNorm folding, constant
        /// folding) that run first by default, as onnxruntime's default graph optimizations do.
        #[arg(long)]
        no_fuse: bool,
        /// Also time every node and print, on stderr, a table of the time per op type and
        /// the slowest nodes.
        #[arg(long)]
        profile: bool,
    },
    /// Measure training steps (forward with batch statistics, cross-entropy on random
    /// labels, backward, SGD with momentum) in images/s on random inputs; prints JSON.
    BenchTrain {
        model: PathBuf,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 0.01)]
        lr: f64,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// List entries: key, size, age.
    Ls,
    /// Total size of the cache.
    Du,
    /// Remove entries older than --older-than days, then the oldest until under --max-gb.
    Gc {
        #[arg(long)]
        older_than: Option<f64>,
        #[arg(long)]
        max_gb: Option<f64>,
    },
}

/// mimalloc keeps freed buffers for reuse; glibc returns whole heaps of a thread's arena
/// to the kernel, and every training step then page-faults its activations in afresh.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    amct::process_tuning::tune_process();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs go to stderr through tracing: warnings by default, `-v` info,
/// `-vv` debug; `RUST_LOG` (e.g. `amct=debug`) takes precedence.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("amct={level}")));
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(|| LogWriter)
        .try_init();
}

/// Writes each log line to stderr with the progress bars cleared first, so
/// bars and logs never overwrite each other.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        amct::progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            recipe,
            out,
            set,
            device,
            cache,
            no_cache,
            force,
        } => run_recipe(&recipe, out, &set, device, cache, no_cache, force),
        Command::Cache { action, cache } => cache_cmd(action, cache),
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
            fuse,
        } => convert(&input, &output, external_data, fuse),
        Command::BenchForward {
            model,
            batch,
            iters,
            warmup,
            device,
            no_fuse,
            profile,
        } => bench_forward(
            &model,
            Timing {
                batch,
                iters,
                warmup,
            },
            &device,
            !no_fuse,
            profile,
        ),
        Command::BenchTrain {
            model,
            batch,
            iters,
            warmup,
            device,
            lr,
        } => bench_train(
            &model,
            Timing {
                batch,
                iters,
                warmup,
            },
            &device,
            lr,
        ),
    }
}

fn run_recipe(
    path: &Path,
    out: Option<PathBuf>,
    set: &[String],
    device: Option<String>,
    cache: Option<PathBuf>,
    no_cache: bool,
    force: Vec<String>,
) -> Result<()> {
    let recipe = amct::recipe::load_recipe(path, set)?;
    for name in &force {
        if !recipe.stages.iter().any(|s| &s.name == name) {
            bail!("--force {name}: the recipe has no stage named `{name}`");
        }
    }
    let options = RunOptions {
        out_dir: out.unwrap_or_else(|| PathBuf::from("runs").join(&recipe.meta.name)),
        cache_root: cache.unwrap_or_else(Cache::default_root),
        no_cache,
        force,
        device: device.unwrap_or_else(|| recipe.meta.device.clone()),
    };
    let report = match amct::scheduler::run_recipe(&recipe, &options) {
        Ok(report) => report,
        Err(e @ RunError::Interrupted { .. }) => interrupted(&e),
        Err(e) => return Err(e.into()),
    };
    for st in &report.stages {
        let state = match st.status {
            StageStatus::Ok if st.cache_hit => "cached".to_string(),
            StageStatus::Ok => format!("done in {:.2} s", st.seconds),
            StageStatus::Failed => "FAILED".to_string(),
            StageStatus::Skipped => "skipped".to_string(),
        };
        println!("{:<16} {:<9} {state}", st.name, st.kind.name());
        if let Some(e) = &st.error {
            println!("    {e}");
        }
    }
    println!("wrote {}", options.out_dir.display());
    if report.failed() {
        bail!(
            "some stages did not finish; see {}",
            options.out_dir.join("report.md").display()
        );
    }
    Ok(())
}

/// Says what an interruption left behind and exits with 128 + the signal.
fn interrupted(e: &RunError) -> ! {
    let running = match e {
        RunError::Interrupted { running, .. } => running.as_slice(),
        _ => &[],
    };
    let quoted = running;
    let what = match quoted {
        [] => "no stage was running".to_string(),
        [one] => format!("stage {one} was running"),
        many => format!("stages {} were running", many.join(", ")),
    };
    eprintln!("interrupted: {what}; finished stages are cached, rerun to resume");
    std::process::exit(e.exit_code())
}

fn cache_cmd(action: CacheAction, root: Option<PathBuf>) -> Result<()> {
    let cache = Cache::open(&root.unwrap_or_else(Cache::default_root))?;
    let entries = cache.entries()?;
    match action {
        CacheAction::Ls => {
            for (key, size, age) in &entries {
                println!(
                    "{key}  {:>10.2} MB  {:>8.1} h",
                    *size as f64 / 1e6,
                    *age as f64 / 3600.0
                );
            }
        }
        CacheAction::Du => {
            let total: u64 = entries.iter().map(|e| e.1).sum();
            println!(
                "{} entries, {:.2} MB in {}",
                entries.len(),
                total as f64 / 1e6,
                cache.root().display()
            );
        }
        CacheAction::Gc { older_than, max_gb } => {
            let mut kept: Vec<&(String, u64, u64)> = Vec::new();
            let mut removed = 0;
            for e in &entries {
                if older_than.is_some_and(|days| e.2 as f64 > days * 86400.0) {
                    cache.remove(&e.0)?;
                    removed += 1;
                } else {
                    kept.push(e);
                }
            }
            if let Some(max) = max_gb {
                kept.sort_by_key(|e| std::cmp::Reverse(e.2));
                let mut total: u64 = kept.iter().map(|e| e.1).sum();
                while total as f64 > max * 1e9 {
                    let Some(oldest) = kept.pop() else { break };
                    cache.remove(&oldest.0)?;
                    total -= oldest.1;
                    removed += 1;
                }
            }
            println!("removed {removed} entries");
        }
    }
    Ok(())
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
    let options = ExecOptions::inference(&device);
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

fn convert(input: &Path, output: &Path, external_data: bool, fuse: bool) -> Result<()> {
    let mut model = load(input)?;
    if fuse {
        let (fused, report) =
            amct::passes::fuse_pipeline(&model, &amct::passes::FuseOptions::default())
                .with_context(|| format!("fusing '{}'", input.display()))?;
        let counts: Vec<String> = report
            .passes
            .iter()
            .map(|p| format!("{} {}", p.pass, p.rewrites))
            .collect();
        println!(
            "fuse: {} -> {} nodes ({})",
            report.nodes_before,
            report.nodes_after,
            counts.join(", ")
        );
        model = fused;
    }
    let options = ExportOptions {
        external_data,
        external_threshold: 1024,
    };
    onnx_io::save_model(&model, output, &options)?;
    Ok(())
}

fn bench_forward(path: &Path, t: Timing, device: &str, fuse: bool, profile: bool) -> Result<()> {
    let device = exec::parse_device(device)?;
    let (json, table) = amct::bench::bench_forward(&load(path)?, t, &device, fuse, profile)?;
    println!("{json}");
    if let Some(table) = table {
        eprintln!("{table}");
    }
    Ok(())
}

fn bench_train(path: &Path, t: Timing, device: &str, lr: f64) -> Result<()> {
    let device = exec::parse_device(device)?;
    println!(
        "{}",
        amct::bench::bench_train(&load(path)?, t, &device, lr)?
    );
    Ok(())
}
