//! CUDA against CPU, built only with `--features cuda` and run where a GPU is
//! present (`cargo test --release --features cuda --test cuda_parity`): the
//! executor's forward pass, single convolutions and poolings with their weight
//! gradients, and a recipe with every training stage (retrain, quantize, qat,
//! distill, eval) run once per device from the same seed, agree within float32
//! tolerances. The data is synthetic IDX written by the test,
//! so no data package is needed. Every figure is printed before any assertion,
//! so one run on a borrowed GPU reports them all.
#![cfg(feature = "cuda")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use amct::exec::{ExecOptions, Executor, Value as ExecValue};
use amct::graph::{DType, Model, Node};
use candle_core::{Device, Tensor};
use common::{random_init, single_op_model, Rng};
use serde_json::Value;

/// The binary under test: `AMCT_BIN` where the test binary was carried to
/// another machine, else the one cargo built with this test.
fn amct_bin() -> PathBuf {
    std::env::var_os("AMCT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_amct")))
}

/// The repository root: `AMCT_REPO` where carried, else the build's manifest dir.
fn repo() -> PathBuf {
    std::env::var_os("AMCT_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amct-cuda-parity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A small deterministic generator (the test must not depend on a crate's RNG).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

/// Writes `n` 28x28 images of 10 classes (a fixed random template per class
/// plus noise) and their labels as plain IDX files.
fn write_idx(dir: &Path, stem: &str, n: usize, seed: u64) -> (PathBuf, PathBuf) {
    let mut templates = Lcg(7);
    let templates: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..784).map(|_| templates.next()).collect())
        .collect();
    let mut rng = Lcg(seed);
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let class = (i * 7 + seed as usize) % 10;
        labels.push(class as u8);
        for p in &templates[class] {
            let v = 0.6 * p + 0.4 * rng.next();
            images.push((v * 255.0) as u8);
        }
    }
    let (x, y) = (
        dir.join(format!("{stem}-images.idx")),
        dir.join(format!("{stem}-labels.idx")),
    );
    std::fs::write(&x, images).unwrap();
    std::fs::write(&y, labels).unwrap();
    (x, y)
}

fn write_recipe(dir: &Path) -> PathBuf {
    let (tx, ty) = write_idx(dir, "train", 512, 1);
    let (vx, vy) = write_idx(dir, "test", 256, 2);
    let data = |name: &str, x: &Path, y: &Path, extra: &str| {
        format!(
            "[data.{name}]\nformat = \"idx\"\npath = \"{}\"\nlabels = \"{}\"\n\
             preprocess = {{ mean = [0.5], std = [0.25] }}\n{extra}\n",
            x.display(),
            y.display()
        )
    };
    let text = format!(
        "[recipe]\nname = \"cuda-parity\"\nseed = 5\n\n[model]\npath = \"{model}\"\n\n{train}{test}\
         [stages.train]\nkind = \"retrain\"\ndata = \"train\"\nvalidation = \"test\"\nkeep_best = false\n\
         max_steps = 16\noptimizer = {{ kind = \"sgd\", lr = 0.02, momentum = 0.9 }}\n\n\
         [stages.fuse]\nkind = \"fuse\"\ninput = \"train\"\n\n\
         [stages.quantize]\nkind = \"quantize\"\ninput = \"fuse\"\ndata = \"train\"\nbatches = 2\n\n\
         [stages.qat]\nkind = \"qat\"\ninput = \"quantize\"\ndata = \"train\"\nvalidation = \"test\"\n\
         keep_best = false\nmax_steps = 8\noptimizer = {{ kind = \"sgd\", lr = 0.001, momentum = 0.9 }}\n\n\
         [stages.distill]\nkind = \"distill\"\ninput = \"quantize\"\nteacher = \"fuse\"\ndata = \"train\"\n\
         validation = \"test\"\nkeep_best = false\nmax_steps = 8\n\
         optimizer = {{ kind = \"sgd\", lr = 0.001, momentum = 0.9 }}\ndistill = {{ block_size = 2, kl_weight = 1.0 }}\n\n\
         [stages.eval]\nkind = \"eval\"\ninputs = [\"train\", \"quantize\", \"qat\", \"distill\"]\n\
         reference = \"fuse\"\ndata = \"test\"\nlatency = false\n",
        model = repo().join("models/fashion_cnn.onnx").display(),
        train = data("train", &tx, &ty, "batch_size = 32\nshuffle = true"),
        test = data("test", &vx, &vy, "batch_size = 128"),
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the recipe on `device`; returns its report.
fn run_on(recipe: &Path, dir: &Path, device: &str) -> Value {
    let t = std::time::Instant::now();
    let o = Command::new(amct_bin())
        .arg("run")
        .arg(recipe)
        .arg("--device")
        .arg(device)
        .arg("--out")
        .arg(dir.join(device))
        .arg("--cache")
        .arg(dir.join(format!("cache-{device}")))
        .output()
        .expect("amct runs");
    eprintln!(
        "{device}: amct run took {:.1} s\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "amct run --device {device} failed");
    let text = std::fs::read_to_string(dir.join(device).join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn stage<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in report"))
}

fn load(path: &Path) -> Model {
    amct::onnx::load_model(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// ‖a − b‖ / ‖a‖ over all elements.
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += f64::from(x - y).powi(2);
        n += f64::from(*x).powi(2);
    }
    (d / n.max(1e-30)).sqrt()
}

/// Runs `model` on `x` with amct's executor on `device`; returns the first output.
fn forward(model: &Model, x: &Tensor, device: &Device) -> Vec<f32> {
    let exec = Executor::new(model, ExecOptions::inference(device)).unwrap();
    let feeds = HashMap::from([(
        model.graph.inputs[0].name.clone(),
        ExecValue::new(x.to_device(device).unwrap(), DType::F32),
    )]);
    exec.run(&feeds).unwrap()[0]
        .tensor
        .flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn argmaxes(logits: &[f32]) -> Vec<usize> {
    logits
        .chunks(10)
        .map(|c| (0..c.len()).max_by(|&i, &j| c[i].total_cmp(&c[j])).unwrap())
        .collect()
}

/// Collects named figures and their limits; asserts all at the end.
#[derive(Default)]
struct Checks(Vec<(String, f64, f64, bool)>);
impl Checks {
    fn at_most(&mut self, what: &str, value: f64, limit: f64) {
        self.0.push((
            what.into(),
            value,
            limit,
            value.is_finite() && value <= limit,
        ));
    }
    fn at_least(&mut self, what: &str, value: f64, limit: f64) {
        self.0.push((what.into(), value, limit, value >= limit));
    }
    fn assert_all(self) {
        for (what, value, limit, ok) in &self.0 {
            eprintln!(
                "{} {what}: {value:.3e} (limit {limit:.1e})",
                if *ok { "ok  " } else { "FAIL" }
            );
        }
        let failed: Vec<_> = self.0.iter().filter(|c| !c.3).map(|c| &c.0).collect();
        assert!(failed.is_empty(), "CUDA/CPU parity failed: {failed:?}");
    }
}

#[test]
fn training_stages_on_cuda_match_cpu() {
    let cuda = Device::new_cuda(0).expect("a CUDA device (this test needs a GPU)");
    let dir = scratch();
    let recipe = write_recipe(&dir);
    let mut checks = Checks::default();

    // Forward pass of the untrained model, batch 16.
    let model = load(&repo().join("models/fashion_cnn.onnx"));
    let x = Tensor::randn(0f32, 1f32, (16, 1, 28, 28), &Device::Cpu).unwrap();
    let (yc, yg) = (
        forward(&model, &x, &Device::Cpu),
        forward(&model, &x, &cuda),
    );
    checks.at_most("forward logits, relative L2", relative_l2(&yc, &yg), 1e-5);

    let cpu = run_on(&recipe, &dir, "cpu");
    let gpu = run_on(&recipe, &dir, "cuda");
    for name in ["train", "fuse", "quantize", "qat", "distill", "eval"] {
        assert_eq!(stage(&gpu, name)["status"], "ok", "cuda {name}");
        assert_eq!(stage(&cpu, name)["status"], "ok", "cpu {name}");
    }

    // retrain: the loss of every step, and the final weights.
    let curve = |r: &Value| -> Vec<f32> {
        stage(r, "train")["metrics"]["loss_curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap() as f32)
            .collect()
    };
    let (lc, lg) = (curve(&cpu), curve(&gpu));
    checks.at_most(
        "retrain first-step loss, relative",
        relative_l2(&lc[..1], &lg[..1]),
        1e-5,
    );
    checks.at_most(
        "retrain loss curve, relative L2",
        relative_l2(&lc, &lg),
        1e-3,
    );
    let (mc, mg) = (
        load(&dir.join("cpu/train/model.onnx")),
        load(&dir.join("cuda/train/model.onnx")),
    );
    let mut worst = 0f64;
    for (name, t) in &mc.graph.initializers {
        if t.dtype != DType::F32 {
            continue;
        }
        let a = t.to_f32_vec().unwrap();
        let b = mg.graph.initializers[name].to_f32_vec().unwrap();
        worst = worst.max(relative_l2(&a, &b));
    }
    checks.at_most("retrain weights, worst tensor relative L2", worst, 1e-3);

    // The test images through each device's stage outputs, both on CPU.
    let (vx, _) = write_idx(&dir, "probe", 256, 2);
    let pixels = std::fs::read(vx).unwrap()[16..]
        .iter()
        .map(|&p| (f32::from(p) / 255.0 - 0.5) / 0.25)
        .collect::<Vec<_>>();
    let probe = Tensor::from_vec(pixels, (256, 1, 28, 28), &Device::Cpu).unwrap();
    for (stage_name, file) in [
        ("train", "model.onnx"),
        ("quantize", "fake_quant.onnx"),
        ("qat", "fake_quant.onnx"),
        ("distill", "fake_quant.onnx"),
    ] {
        let path = |d: &str| dir.join(d).join(stage_name).join(file);
        let (oc, og) = (
            forward(&load(&path("cpu")), &probe, &Device::Cpu),
            forward(&load(&path("cuda")), &probe, &Device::Cpu),
        );
        let agree = argmaxes(&oc)
            .iter()
            .zip(argmaxes(&og))
            .filter(|(a, b)| **a == *b)
            .count() as f64
            / 256.0;
        checks.at_least(&format!("{stage_name} top-1 agreement"), agree, 0.99);
        checks.at_most(
            &format!("{stage_name} outputs, relative L2"),
            relative_l2(&oc, &og),
            if stage_name == "train" { 1e-3 } else { 2e-2 },
        );
    }

    // The CUDA executor on the quantized model agrees with the CPU one.
    let fq = load(&dir.join("cpu/quantize/fake_quant.onnx"));
    let (qc, qg) = (
        forward(&fq, &probe, &Device::Cpu),
        forward(&fq, &probe, &cuda),
    );
    checks.at_most(
        "fake-quant forward on cuda, relative L2",
        relative_l2(&qc, &qg),
        1e-3,
    );

    // Calibrated scales.
    let scales = |d: &str| -> Vec<f32> {
        let text = std::fs::read_to_string(dir.join(d).join("quantize/quant_record.json")).unwrap();
        let r: Value = serde_json::from_str(&text).unwrap();
        let mut names: Vec<_> = r["tensors"].as_object().unwrap().iter().collect();
        names.sort_by_key(|(n, _)| n.to_string());
        names
            .iter()
            .flat_map(|(_, t)| match &t["scale"] {
                Value::Array(v) => v.iter().map(|s| s.as_f64().unwrap() as f32).collect(),
                s => vec![s.as_f64().unwrap() as f32],
            })
            .collect()
    };
    checks.at_most(
        "quantize scales, relative L2",
        relative_l2(&scales("cpu"), &scales("cuda")),
        1e-3,
    );

    // Samples/s of each training stage on both devices (reported, not asserted).
    for name in ["train", "qat", "distill"] {
        let rate = |r: &Value| stage(r, name)["metrics"]["samples_per_s"].as_f64();
        eprintln!(
            "{name}: samples/s cpu {:?}, cuda {:?}",
            rate(&cpu),
            rate(&gpu)
        );
    }
    checks.assert_all();
}

/// Output of a one-node model on `device` and the gradients of `sum(y * r)` with respect
/// to its initializers (sorted by name), all copied to the CPU.
fn forward_and_grads(model: &Model, x: &Tensor, device: &Device) -> (Vec<f32>, Vec<Vec<f32>>) {
    let options = ExecOptions {
        device: device.clone(),
        ..ExecOptions::default()
    };
    let exec = Executor::new(model, options).unwrap();
    let feeds = HashMap::from([(
        "x".to_string(),
        ExecValue::new(x.to_device(device).unwrap(), DType::F32),
    )]);
    let y = exec.run(&feeds).unwrap().remove(0).tensor;
    let cpu = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    // The same fixed weighting of the outputs on both devices.
    let weights: Vec<f32> = (0..y.elem_count())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let r = Tensor::from_vec(weights, y.shape(), device).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut params: Vec<_> = exec.params().collect();
    params.sort_by_key(|(n, _)| n.to_string());
    let g = params
        .iter()
        .map(|(_, v)| cpu(grads.get(v).expect("a gradient for every initializer")))
        .collect();
    (cpu(&y), g)
}

#[test]
fn convolutions_and_pooling_on_cuda_match_cpu() {
    let cuda = Device::new_cuda(0).expect("a CUDA device (this test needs a GPU)");
    let mut checks = Checks::default();
    let mut rng = Rng::new(11);
    let ints = |n: &mut Node, k: &str, v: &[i64]| n.set_ints(k, v);
    /// Label, op, input shape, weight shape, attributes.
    type Case = (
        &'static str,
        &'static str,
        [i64; 4],
        Vec<i64>,
        Box<dyn Fn(&mut Node)>,
    );
    let cases: Vec<Case> = vec![
        (
            "depthwise 3x3",
            "Conv",
            [2, 16, 15, 14],
            vec![16, 1, 3, 3],
            Box::new(move |n| {
                n.set_int("group", 16);
                ints(n, "pads", &[1, 1, 1, 1]);
            }),
        ),
        (
            "depthwise 3x3 stride 2, asymmetric pads",
            "Conv",
            [2, 16, 15, 14],
            vec![16, 1, 3, 3],
            Box::new(move |n| {
                n.set_int("group", 16);
                ints(n, "strides", &[2, 2]);
                ints(n, "pads", &[0, 0, 1, 1]);
            }),
        ),
        (
            "depthwise 5x5 dilation 2",
            "Conv",
            [2, 8, 15, 14],
            vec![8, 1, 5, 5],
            Box::new(move |n| {
                n.set_int("group", 8);
                ints(n, "dilations", &[2, 2]);
                ints(n, "pads", &[4, 4, 4, 4]);
            }),
        ),
        (
            "conv 3x3 stride 2",
            "Conv",
            [2, 8, 15, 14],
            vec![12, 8, 3, 3],
            Box::new(move |n| {
                ints(n, "strides", &[2, 2]);
                ints(n, "pads", &[1, 1, 1, 1]);
            }),
        ),
        (
            "conv 3x3 dilation 2",
            "Conv",
            [2, 8, 15, 14],
            vec![12, 8, 3, 3],
            Box::new(move |n| {
                ints(n, "dilations", &[2, 2]);
                ints(n, "pads", &[2, 2, 2, 2]);
            }),
        ),
        (
            "grouped conv, 4 groups",
            "Conv",
            [2, 8, 15, 14],
            vec![12, 2, 3, 3],
            Box::new(move |n| {
                n.set_int("group", 4);
            }),
        ),
    ];
    for (label, op, xs, ws, configure) in cases {
        let w = random_init(&mut rng, "w", &ws, 0.0);
        let model = single_op_model(op, &[("x", &xs)], vec![w], &["x", "w"], 1, 13, configure);
        let dims: Vec<usize> = xs.iter().map(|&d| d as usize).collect();
        let x = Tensor::randn(0f32, 1f32, dims, &Device::Cpu).unwrap();
        let (yc, gc) = forward_and_grads(&model, &x, &Device::Cpu);
        let (yg, gg) = forward_and_grads(&model, &x, &cuda);
        checks.at_most(
            &format!("{label}: output, relative L2"),
            relative_l2(&yc, &yg),
            1e-5,
        );
        checks.at_most(
            &format!("{label}: weight gradient, relative L2"),
            relative_l2(&gc[0], &gg[0]),
            1e-4,
        );
    }
    for (label, op) in [
        ("max pool 3x3 stride 2", "MaxPool"),
        ("average pool 3x3 stride 2", "AveragePool"),
    ] {
        let model = single_op_model(op, &[("x", &[2, 8, 15, 14])], vec![], &["x"], 1, 13, |n| {
            n.set_ints("kernel_shape", &[3, 3]);
            n.set_ints("strides", &[2, 2]);
            n.set_ints("pads", &[1, 1, 1, 1]);
        });
        let x = Tensor::randn(0f32, 1f32, (2, 8, 15, 14), &Device::Cpu).unwrap();
        let (yc, _) = forward_and_grads(&model, &x, &Device::Cpu);
        let (yg, _) = forward_and_grads(&model, &x, &cuda);
        checks.at_most(
            &format!("{label}: output, relative L2"),
            relative_l2(&yc, &yg),
            1e-6,
        );
    }
    checks.assert_all();
}
