//! Training stages end to end through the binary on Fashion-MNIST (Debian
//! package dataset-fashion-mnist, installed by scripts/setup_datasets.sh):
//! `retrain` learns, a run killed with SIGKILL mid-epoch resumes from its
//! checkpoint to bit-identical weights, pruned weights stay zero, and
//! BatchNormalization trains or stays frozen as the recipe says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use amct::graph::Model;
use serde_json::Value;

const AMCT: &str = env!("CARGO_BIN_EXE_amct");
const FASHION: &str = "/usr/share/datasets/fashion-mnist";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amct-train-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A recipe training `model` on the first `train` Fashion-MNIST images,
/// validating on the first 500 test images; `stage` adds keys to the stage.
fn recipe(dir: &Path, model: &Path, train: usize, stage: &str) -> PathBuf {
    assert!(
        Path::new(FASHION)
            .join("train-images-idx3-ubyte.gz")
            .is_file(),
        "Fashion-MNIST is missing: run scripts/setup_datasets.sh"
    );
    let data = |name: &str, split: &str, limit: usize, extra: &str| {
        format!(
            "[data.{name}]\nformat = \"idx\"\npath = \"{FASHION}/{split}-images-idx3-ubyte.gz\"\n\
             labels = \"{FASHION}/{split}-labels-idx1-ubyte.gz\"\n\
             preprocess = {{ mean = [0.2860], std = [0.3530] }}\nlimit = {limit}\n{extra}\n"
        )
    };
    let text = format!(
        "[recipe]\nname = \"t\"\nseed = 3\n\n[model]\npath = \"{}\"\n\n{}{}\
         [stages.train]\nkind = \"retrain\"\ndata = \"train\"\nvalidation = \"val\"\n{stage}\n",
        model.display(),
        data(
            "train",
            "train",
            train,
            "batch_size = 64\nshuffle = true\naugment = { horizontal_flip = true }"
        ),
        data("val", "t10k", 500, "batch_size = 250"),
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn command(recipe: &Path, dir: &Path, out: &str, cache: &str) -> Command {
    let mut cmd = Command::new(AMCT);
    cmd.arg("run")
        .arg(recipe)
        .arg("--out")
        .arg(dir.join(out))
        .arg("--cache")
        .arg(dir.join(cache));
    cmd
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "amct run failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn metrics(dir: &Path, out: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(out).join("report.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    r["stages"][0]["metrics"].clone()
}

fn load(path: &Path) -> Model {
    amct::onnx::load_model(path).expect("model loads")
}

fn floats(m: &Model, name: &str) -> Vec<f32> {
    m.graph.initializers[name].to_f32_vec().unwrap()
}

fn fashion_cnn() -> PathBuf {
    repo().join("models/fashion_cnn.onnx")
}

/// The newest checkpoint's training step, if one has been written.
fn checkpoint_written(cache: &Path) -> bool {
    let Ok(keys) = std::fs::read_dir(cache.join("checkpoints")) else {
        return false;
    };
    keys.flatten()
        .any(|k| k.path().join("checkpoint.safetensors").is_file())
}

#[test]
fn retrain_learns_and_a_killed_run_resumes_to_identical_weights() {
    let dir = scratch("resume");
    // 1024 images, batch 64: 16 steps an epoch, 2 epochs, a checkpoint every 5 steps.
    let stage = "epochs = 2\ncheckpoint_every = 5\n\
                 optimizer = { kind = \"sgd\", lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }\n\
                 schedule = { kind = \"cosine\", warmup_steps = 4 }\nclip_grad_norm = 5.0";
    let r = recipe(&dir, &fashion_cnn(), 1024, stage);

    let clean = ok(command(&r, &dir, "clean", "cache_clean").output().unwrap());
    drop(clean);
    let m = metrics(&dir, "clean");
    let epochs = m["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(m["steps"], 32);
    let (l1, l2) = (
        epochs[0]["train_loss"].as_f64().unwrap(),
        epochs[1]["train_loss"].as_f64().unwrap(),
    );
    assert!(l2 < l1, "training loss must fall: {l1} -> {l2}");
    let acc = m["val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "validation accuracy after 32 steps: {acc}");
    assert!(m["loss_curve"].as_array().unwrap().len() >= 2);
    assert!(m["resumed_at_step"].is_null());

    // Killed once the first checkpoint (step 5 of 16: mid-epoch) is on disk.
    let cache = dir.join("cache_killed");
    let mut child = command(&r, &dir, "killed", "cache_killed").spawn().unwrap();
    let start = Instant::now();
    while !checkpoint_written(&cache) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint written"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a checkpoint was seen");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    assert!(!child.wait().unwrap().success());
    ok(command(&r, &dir, "resumed", "cache_killed")
        .output()
        .unwrap());
    let resumed = metrics(&dir, "resumed");
    let at = resumed["resumed_at_step"]
        .as_u64()
        .expect("the rerun resumed");
    assert!(at > 0 && at < 32, "resumed at step {at}");
    let a = load(&dir.join("clean/train/model.onnx"));
    let b = load(&dir.join("resumed/train/model.onnx"));
    assert_eq!(
        a.graph.initializers, b.graph.initializers,
        "weights differ after resuming"
    );
    // The checkpoints go once the entry is committed.
    assert!(!checkpoint_written(&cache));
}

#[test]
fn pruned_weights_stay_zero_and_batch_norm_trains_or_stays_frozen() {
    let dir = scratch("sparse");
    // Prune every other output channel's weights of block2 and half of fc1.
    let mut model = load(&fashion_cnn());
    for name in ["block2.weight", "fc1.weight"] {
        let t = &model.graph.initializers[name];
        let mut v = t.to_f32_vec().unwrap();
        let row = v.len() / t.dims[0] as usize;
        for (i, x) in v.iter_mut().enumerate() {
            if (i / row).is_multiple_of(2) || i.is_multiple_of(2) {
                *x = 0.0;
            }
        }
        let replaced = amct::graph::Tensor::from_f32(name, t.dims.clone(), &v).unwrap();
        model.graph.initializers.insert(name.to_string(), replaced);
    }
    let pruned = dir.join("pruned.onnx");
    amct::onnx::save_model(&model, &pruned, &Default::default()).unwrap();
    let before = load(&pruned);

    for (mode, out) in [("train", "bn_train"), ("frozen", "bn_frozen")] {
        let stage = format!("max_steps = 6\nbatch_norm = \"{mode}\"\noptimizer = {{ kind = \"adamw\", lr = 0.003, weight_decay = 0.05 }}");
        let r = recipe(&dir, &pruned, 512, &stage);
        ok(command(&r, &dir, out, &format!("cache_{out}"))
            .output()
            .unwrap());
        let after = load(&dir.join(out).join("train/model.onnx"));
        for name in ["block2.weight", "fc1.weight"] {
            let (w0, w1) = (floats(&before, name), floats(&after, name));
            let mut changed = 0;
            for (x0, x1) in w0.iter().zip(&w1) {
                if *x0 == 0.0 {
                    assert_eq!(*x1, 0.0, "{name}: a pruned weight moved ({mode})");
                } else if x0 != x1 {
                    changed += 1;
                }
            }
            assert!(changed > 0, "{name}: no kept weight was trained ({mode})");
        }
        let same = |n: &str| floats(&before, n) == floats(&after, n);
        let bn = [
            "block1.bn.running_mean",
            "block1.bn.running_var",
            "block1.bn.weight",
            "block1.bn.bias",
        ];
        if mode == "train" {
            assert!(
                bn.iter().all(|n| !same(n)),
                "BatchNormalization did not train"
            );
        } else {
            assert!(
                bn.iter().all(|n| same(n)),
                "frozen BatchNormalization changed"
            );
            assert!(!same("block1.weight"));
        }
    }
}

#[test]
fn bad_training_settings_are_recipe_errors() {
    let dir = scratch("bad");
    for (stage, needle) in [
        (
            "optimizer = { kind = \"sgd\", lr = -1.0 }",
            "lr must be positive",
        ),
        (
            "optimizer = { kind = \"adamw\", nesterov = true }",
            "nesterov",
        ),
        ("epochs = 0", "epochs"),
        (
            "loss = { kind = \"mse\", label_smoothing = 0.1 }",
            "label_smoothing",
        ),
        ("optimiser = { lr = 0.1 }", "optimiser"),
    ] {
        let r = recipe(&dir, &fashion_cnn(), 64, stage);
        let o = command(&r, &dir, "out", "cache").output().unwrap();
        assert!(!o.status.success(), "{stage} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle) && err.contains("recipe.toml:"),
            "{stage}: {err}"
        );
    }
}

/// The source recipe text plus a fuse -> quantize -> qat chain on the trained model.
fn qat_recipe(dir: &Path, quantize: &str, qat: &str) -> PathBuf {
    let base = recipe(
        dir,
        &fashion_cnn(),
        2048,
        "epochs = 1\noptimizer = { kind = \"sgd\", lr = 0.02, momentum = 0.9, nesterov = true }",
    );
    let text = std::fs::read_to_string(&base).unwrap()
        + "\n[stages.fuse]\nkind = \"fuse\"\ninput = \"train\"\n\n\
           [stages.quantize]\nkind = \"quantize\"\ninput = \"fuse\"\ndata = \"train\"\nbatches = 4\n"
        + quantize
        + &format!("\n\n[stages.qat]\nkind = \"qat\"\ninput = \"quantize\"\ndata = \"train\"\nvalidation = \"val\"\n{qat}\n");
    std::fs::write(&base, text).unwrap();
    base
}

#[test]
fn qat_learns_scales_and_writes_consistent_fake_quant_and_deploy_models() {
    let dir = scratch("qat");
    let r = qat_recipe(
        &dir,
        "",
        "max_steps = 12\noptimizer = { kind = \"sgd\", lr = 0.002, momentum = 0.9 }\nkeep_best = false",
    );
    ok(command(&r, &dir, "out", "cache").output().unwrap());
    let out = dir.join("out");
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    let stage = |n: &str| {
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    let qat = stage("qat");
    assert_eq!(qat["status"], "ok", "{qat}");
    assert_eq!(qat["metrics"]["steps"], 12);
    let acc = qat["metrics"]["val_accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "QAT validation accuracy {acc}");
    for f in [
        "model.onnx",
        "fake_quant.onnx",
        "deploy.onnx",
        "quant_record.json",
        "loss_curve.svg",
    ] {
        assert!(out.join("qat").join(f).is_file(), "qat/{f} missing");
    }
    let ptq = load(&out.join("quantize/fake_quant.onnx"));
    let fake = load(&out.join("qat/fake_quant.onnx"));
    let deploy = load(&out.join("qat/deploy.onnx"));
    // Same graph structure as the quantize stage's output; activation scales learned.
    assert_eq!(
        ptq.graph
            .nodes
            .iter()
            .map(|n| &n.op_type)
            .collect::<Vec<_>>()
            .len(),
        fake.graph.nodes.len()
    );
    let scales = |m: &Model| -> Vec<(String, Vec<f32>)> {
        m.graph
            .initializers
            .iter()
            .filter(|(n, t)| n.ends_with("_scale") && t.dims.is_empty())
            .map(|(n, t)| (n.clone(), t.to_f32_vec().unwrap()))
            .collect()
    };
    let (before, after) = (scales(&ptq), scales(&fake));
    assert_eq!(before.len(), after.len());
    assert!(
        before.iter().zip(&after).any(|(a, b)| a.1 != b.1),
        "no activation scale moved"
    );
    // Deploy stores every weight as 8-bit integers and runs no QuantizeLinear on constants.
    let int8 = deploy
        .graph
        .initializers
        .values()
        .filter(|t| t.dtype == amct::graph::DType::I8)
        .count();
    assert!(int8 >= 5, "deploy has {int8} int8 initializers");
    assert!(deploy
        .graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .all(|n| !deploy.graph.initializers.contains_key(&n.inputs[0])));
    // Both forms compute the same outputs (amct's executor).
    let x =
        candle_core::Tensor::randn(0f32, 1f32, (4, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
    let run = |m: &Model| {
        let exec = amct::exec::Executor::new(
            m,
            amct::exec::ExecOptions::inference(&candle_core::Device::Cpu),
        )
        .unwrap();
        let feeds = std::collections::HashMap::from([(
            "input".to_string(),
            amct::exec::Value::new(x.clone(), amct::graph::DType::F32),
        )]);
        exec.run(&feeds)
            .unwrap()
            .remove(0)
            .tensor
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (yf, yd) = (run(&fake), run(&deploy));
    let worst = yf
        .iter()
        .zip(&yd)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "fake-quant and deploy differ by {worst}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("qat/quant_record.json")).unwrap())
            .unwrap();
    assert_eq!(record["source"], "qat");
    assert!(record["tensors"].as_object().unwrap().len() >= 10);
}

#[test]
fn qat_trains_per_tensor_weight_scales() {
    let dir = scratch("qat-per-tensor");
    let r = qat_recipe(
        &dir,
        "weight = { per_channel = false, bits = 4 }",
        "max_steps = 3\nkeep_best = false",
    );
    ok(command(&r, &dir, "out", "cache").output().unwrap());
    let ptq = load(&dir.join("out/quantize/fake_quant.onnx"));
    let fake = load(&dir.join("out/qat/fake_quant.onnx"));
    // Every weight scale is one number, and follows its (trained) weight.
    let weight_scales = |m: &Model| -> Vec<f32> {
        let mut v: Vec<(String, f32)> = m
            .graph
            .nodes
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .filter(|n| m.graph.initializers.contains_key(&n.inputs[0]))
            .map(|n| {
                let s = floats(m, &n.inputs[1]);
                assert_eq!(s.len(), 1, "{} is not per tensor", n.inputs[1]);
                (n.inputs[1].clone(), s[0])
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, s)| s).collect()
    };
    let (before, after) = (weight_scales(&ptq), weight_scales(&fake));
    assert!(before.len() >= 3, "{before:?}");
    assert_ne!(before, after, "weight scales did not follow the weights");
}

#[test]
fn qat_refuses_a_float_model() {
    let dir = scratch("qat-float");
    let r = recipe(&dir, &fashion_cnn(), 256, "max_steps = 1");
    let text = std::fs::read_to_string(&r)
        .unwrap()
        .replace("kind = \"retrain\"", "kind = \"qat\"");
    std::fs::write(&r, text).unwrap();
    let o = command(&r, &dir, "out", "cache").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("put a quantize stage before it"), "{err}");
}

#[test]
fn distill_trains_a_quantized_student_without_labels() {
    let dir = scratch("distill");
    // 4-bit weights: a student far enough from the teacher for the block losses to fall;
    // one fixed batch, so the losses of successive steps are comparable.
    let r = qat_recipe(&dir, "weight = { bits = 4 }", "max_steps = 1");
    let unlabelled = format!(
        "\n[data.unlabelled]\nformat = \"idx\"\npath = \"{FASHION}/train-images-idx3-ubyte.gz\"\n\
         preprocess = {{ mean = [0.2860], std = [0.3530] }}\nlimit = 64\nbatch_size = 64\n\n\
         [stages.distill]\nkind = \"distill\"\ninput = \"quantize\"\nteacher = \"fuse\"\ndata = \"unlabelled\"\n\
         validation = \"val\"\nkeep_best = false\nepochs = 10\ndrop_last = false\n\
         optimizer = {{ kind = \"sgd\", lr = 0.005, momentum = 0.0 }}\n\
         distill = {{ block_size = 2, kl_weight = 1.0 }}\n"
    );
    let text = std::fs::read_to_string(&r).unwrap() + &unlabelled;
    std::fs::write(&r, text).unwrap();
    ok(command(&r, &dir, "out", "cache").output().unwrap());
    let out = dir.join("out");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let d = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "distill")
        .unwrap()
        .clone();
    assert_eq!(d["status"], "ok", "{d}");
    let m = &d["metrics"];
    // The fashion CNN has 5 layers: blocks of 2 give 3 blocks, 2 boundaries.
    assert_eq!(m["blocks"], 3, "{m}");
    assert_eq!(m["steps"], 10);
    assert!(
        m["epochs"][0]["train_accuracy"].is_null(),
        "no labels were used"
    );
    assert!(m["val_accuracy"].as_f64().unwrap() > 0.6, "{m}");
    let curve = m["loss_curve"].as_array().unwrap();
    let first = curve[0][1].as_f64().unwrap();
    let last = curve[curve.len() - 1][1].as_f64().unwrap();
    assert!(last < first, "block losses must fall: {first} -> {last}");
    for f in ["fake_quant.onnx", "deploy.onnx", "quant_record.json"] {
        assert!(out.join("distill").join(f).is_file(), "distill/{f} missing");
    }
}

#[test]
fn keep_best_returns_the_best_epoch_and_early_stopping_stops() {
    let dir = scratch("best");
    // A learning rate far too high: the validation loss gets worse after the first epochs.
    let stage = "epochs = 6\nmetric = \"loss\"\nearly_stopping = 1\nkeep_best = true\n\
                 optimizer = { kind = \"sgd\", lr = 2.0, momentum = 0.9 }\nclip_grad_norm = 50.0";
    let r = recipe(&dir, &fashion_cnn(), 256, stage);
    let eval =
        "\n[stages.eval]\nkind = \"eval\"\ninputs = [\"train\"]\ndata = \"val\"\nlatency = false\n";
    let text = std::fs::read_to_string(&r).unwrap() + eval;
    std::fs::write(&r, text).unwrap();
    ok(command(&r, &dir, "out", "cache").output().unwrap());
    let m = metrics(&dir, "out");
    let epochs = m["epochs"].as_array().unwrap();
    let losses: Vec<f64> = epochs
        .iter()
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect();
    let best = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
        .unwrap();
    assert_eq!(m["kept_epoch"], best + 1, "{losses:?}");
    assert_eq!(m["best_validation"].as_f64().unwrap(), losses[best]);
    assert_eq!(m["val_loss"].as_f64().unwrap(), losses[best]);
    // Stopped one epoch after the last improvement, before epoch 6.
    assert!(m["stopped_early"].as_bool().unwrap(), "{losses:?}");
    assert_eq!(epochs.len(), best + 2, "{losses:?}");
    // The written model is the kept epoch's: an eval stage on the same 500 images
    // measures that epoch's validation accuracy.
    let kept_acc = epochs[best]["val_accuracy"].as_f64().unwrap();
    assert_eq!(m["val_accuracy"].as_f64().unwrap(), kept_acc);
    let text = std::fs::read_to_string(dir.join("out/report.json")).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    let eval = &report["stages"][1]["metrics"]["train"]["top1"];
    assert_eq!(eval.as_f64().unwrap(), kept_acc, "{losses:?}");
}
