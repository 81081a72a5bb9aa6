//! The quantize stage through the library: the plan on the pretrained
//! MNIST CNN (Relu folded into layer outputs, MaxPool sharing its input's
//! parameters), fake-quant and deploy models computing the same outputs in
//! amct's executor, a 3.5x smaller deploy model, the record's contents, the
//! bundled recipe end to end, located recipe errors for quantize keys, and
//! uint8 weight storage (zero point 128) computing what int8 computes.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use amct::exec::{ExecOptions, Executor, Value};
use amct::graph::{DType, Model};
use amct::onnx::load_model;
use amct::quant::{QdqForm, Quantizer};
use amct::recipe::{load_recipe, QuantizeParams, StageParams};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(tag: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amct-quant-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A quantize recipe on the bundled MNIST CNN and digits, with `extra`
/// lines in the quantize stage.
fn recipe_text(extra: &str) -> String {
    let root = root();
    format!(
        r#"[recipe]
name = "mnist-int8"

[model]
path = "{model}"

[data.digits]
format = "npz"
path = "{data}"
preprocess = {{ mean = [0.1307], std = [0.3081] }}
batch_size = 50

[stages.quantize]
kind = "quantize"
data = "digits"
{extra}
"#,
        model = root.join("models/mnist_cnn.onnx").display(),
        data = root.join("data/mnist_test_500.npz").display(),
    )
}

fn quantize_params(tag: &str, extra: &str) -> QuantizeParams {
    let path = write(tag, "recipe.toml", &recipe_text(extra));
    let recipe = load_recipe(&path, &[]).expect("valid recipe");
    match &recipe.stages[0].params {
        StageParams::Quantize(p) => (**p).clone(),
        _ => panic!("not a quantize stage"),
    }
}

fn digits() -> Value {
    let data = root().join("data/mnist_test_500.npz");
    let arrays =
        amct::exec::npz::read_npz(&data, &candle_core::Device::Cpu, candle_core::DType::F32)
            .expect("digits");
    let x = arrays["x"].tensor.narrow(0, 0, 64).expect("narrow");
    let x = ((x / 255.0).expect("scale") - 0.1307).expect("sub") / 0.3081;
    Value::new(x.expect("normalize"), DType::F32)
}

fn run(model: &amct::graph::Model, x: &Value) -> Vec<f32> {
    let exec = Executor::new(model, ExecOptions::default()).expect("executor");
    let outs = exec
        .run(&HashMap::from([("input".to_string(), x.clone())]))
        .expect("run");
    outs[0]
        .tensor
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values")
}

#[test]
fn plan_folds_relu_and_ties_maxpool() {
    let model = load_model(&root().join("models/mnist_cnn.onnx")).expect("model");
    let params = quantize_params("plan", "");
    let plan = amct::quant::plan(&model, &params, &BTreeSet::new());
    assert_eq!(plan.layers.len(), 5, "3 Conv + 2 Gemm");
    let producers: HashMap<&str, &str> = model
        .graph
        .nodes
        .iter()
        .flat_map(|n| {
            n.outputs
                .iter()
                .map(move |o| (o.as_str(), n.op_type.as_str()))
        })
        .collect();
    for t in plan.activations.keys() {
        let op = producers.get(t.as_str()).copied().unwrap_or("graph input");
        assert_ne!(op, "Conv", "Q/DQ between a Conv and its Relu ({t})");
    }
    for node in model.graph.nodes.iter().filter(|n| n.op_type == "MaxPool") {
        assert_eq!(
            plan.representative(&node.outputs[0]),
            plan.representative(&node.inputs[0]),
            "MaxPool {} shares its input's parameters",
            node.name
        );
    }
    let skip = quantize_params("plan-skip", "skip_types = [\"Gemm\"]");
    let plan = amct::quant::plan(&model, &skip, &BTreeSet::new());
    assert_eq!(plan.layers.len(), 3);
    assert_eq!(plan.skipped.len(), 2);
}

#[test]
fn fake_quant_and_deploy_compute_the_same_outputs() {
    let model = load_model(&root().join("models/mnist_cnn.onnx")).expect("model");
    let params = quantize_params("same", "weight = { bias_correction = true }");
    let mut q = Quantizer::new(model.clone(), params).expect("quantizer");
    let exec = Executor::new(&q.float, ExecOptions::default()).expect("executor");
    let x = digits();
    let feeds = HashMap::from([("input".to_string(), x.clone())]);
    q.calibrator
        .observe_batch(&exec, &feeds)
        .expect("calibrate");
    q.finish_calibration();
    let fake = q.build(&BTreeSet::new(), QdqForm::FakeQuant).expect("fake");
    let deploy = q.build(&BTreeSet::new(), QdqForm::Deploy).expect("deploy");
    let (f, d, reference) = (
        run(&fake.model, &x),
        run(&deploy.model, &x),
        run(&model, &x),
    );
    assert_eq!(f, d, "fake-quant and deploy differ");
    assert_ne!(f, reference, "quantization changed nothing");
    let argmax = |v: &[f32]| -> Vec<usize> {
        v.chunks(10)
            .map(|r| (0..10).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
            .collect()
    };
    let agree = argmax(&f)
        .iter()
        .zip(argmax(&reference))
        .filter(|(a, b)| **a == *b)
        .count();
    assert!(agree >= 62, "only {agree}/64 top-1 agree with float");
    let int8_bytes: usize = deploy
        .model
        .graph
        .initializers
        .values()
        .filter(|t| t.dtype == DType::I8)
        .map(|t| t.numel())
        .sum();
    assert!(
        int8_bytes >= 380_000,
        "weights stored as int8: {int8_bytes}"
    );
    assert!(deploy
        .model
        .graph
        .initializers
        .values()
        .all(|t| t.dtype != DType::F32 || t.numel() <= 512));
}

#[test]
fn recipe_writes_every_quantize_output() {
    let recipe = write("run", "recipe.toml", &recipe_text("batches = 2"));
    let out = recipe.parent().unwrap().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_amct"))
        .args(["run", recipe.to_str().unwrap(), "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(recipe.parent().unwrap().join("cache"))
        .output()
        .expect("amct");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let dir = out.join("quantize");
    for f in [
        "model.onnx",
        "fake_quant.onnx",
        "deploy.onnx",
        "quant_record.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = size(&root().join("models/mnist_cnn.onnx")) / size(&dir.join("deploy.onnx"));
    assert!(ratio >= 3.5, "deploy only {ratio:.2}x smaller");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quant_record.json")).unwrap())
            .unwrap();
    let tensors = record["tensors"].as_object().expect("tensors");
    assert!(
        tensors.contains_key("input"),
        "the graph input is quantized"
    );
    for (name, t) in tensors {
        let scale = t["scale"].as_f64().unwrap_or(0.0);
        assert!(scale > 0.0, "{name}: scale {scale}");
        let zp = t["zero_point"].as_i64().expect("zero point");
        assert!((0..=255).contains(&zp), "{name}: uint8 zero point {zp}");
    }
    let layers = record["layers"].as_object().expect("layers");
    assert_eq!(layers.len(), 5);
    for (name, l) in layers {
        let scales = l["weight"]["scale"].as_array().expect("scales");
        assert!(scales.len() > 1, "{name}: per-channel scales");
    }
}

/// Asserts the recipe fails at `line:col` with a message containing `needle`.
fn assert_error(tag: &str, extra: &str, line: usize, col: usize, needle: &str) {
    let path = write(tag, "recipe.toml", &recipe_text(extra));
    let e = load_recipe(&path, &[]).expect_err("invalid recipe");
    let shown = e.to_string();
    assert_eq!(
        e.location(),
        format!("{}:{line}:{col}", path.display()),
        "{tag}: {shown}"
    );
    assert!(shown.contains(needle), "{tag}: {shown}");
}

#[test]
fn quantize_recipe_errors_are_located() {
    assert_error("bits", "weight = { bits = 9 }", 16, 19, "4 to 8");
    assert_error(
        "algo",
        "activation = { algo = \"kl\" }",
        16,
        23,
        "unknown variant",
    );
    assert_error(
        "typo",
        "activation = { algo = \"hfmg\", symetric = true }",
        16,
        31,
        "symetric",
    );
    assert_error("top-typo", "batchs = 3", 16, 1, "batchs");
    assert_error(
        "layer",
        "[stages.quantize.layers.conv1]\nweight = { bits = 2 }",
        17,
        19,
        "4 to 8",
    );
    assert_error(
        "layer-key",
        "[stages.quantize.layers.conv1]\nwieght = { bits = 6 }",
        17,
        1,
        "wieght",
    );
    assert_error(
        "weight-type",
        "weight = { type = \"uint4\" }",
        16,
        19,
        "unknown variant",
    );
    assert_error(
        "layer-weight-type",
        "[stages.quantize.types.Gemm]\nweight = { type = \"int16\" }",
        17,
        19,
        "unknown variant",
    );
    assert_error(
        "rollback",
        "rollback = { metric = \"cosine\", tolerance = 2.0 }",
        16,
        45,
        "tolerance",
    );
    let path = write(
        "no-data",
        "recipe.toml",
        &recipe_text("").replace("data = \"digits\"\n", ""),
    );
    let e = load_recipe(&path, &[]).expect_err("quantize without data");
    assert!(e.to_string().contains("calibration set"), "{e}");
}

#[test]
fn adaround_through_the_recipe_never_loses_to_nearest() {
    let extra = "batches = 1\nweight = { bits = 6, rounding = \"adaround\", adaround = { iterations = 15 } }";
    let recipe = write("ada", "recipe.toml", &recipe_text(extra));
    let out = recipe.parent().unwrap().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_amct"))
        .args(["run", recipe.to_str().unwrap(), "--out"])
        .arg(&out)
        .arg("--cache")
        .arg(recipe.parent().unwrap().join("cache"))
        .output()
        .expect("amct");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let ada = report["stages"][0]["metrics"]["adaround"]
        .as_object()
        .expect("adaround report")
        .clone();
    assert_eq!(ada.len(), 5, "{ada:?}");
    let mut improved = 0;
    for (layer, r) in ada {
        let near = r["nearest_mse"].as_f64().unwrap();
        let learned = r["adaround_mse"].as_f64().unwrap();
        let kept = r["kept"].as_str().unwrap();
        // Learned rounding is kept only where it reproduces the layer better.
        assert_eq!(kept == "adaround", learned < near, "{layer}: {r}");
        improved += usize::from(learned < near);
    }
    assert!(
        improved >= 3,
        "adaround improved only {improved} of 5 layers"
    );
    // The learned rounding reaches the fake-quant model too, not only the deploy model.
    let x = digits();
    let load = |f: &str| load_model(&out.join("quantize").join(f)).expect(f);
    let (f, d) = (
        run(&load("fake_quant.onnx"), &x),
        run(&load("deploy.onnx"), &x),
    );
    assert_eq!(
        max_abs_diff(&f, &d),
        0.0,
        "fake-quant and deploy differ after AdaRound"
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fake_quant_keeps_the_offline_integers_below_8_bits() {
    let x = digits();
    for (tag, extra) in [
        ("bits4mse", "weight = { bits = 4, algo = \"mse\" }"),
        ("bits5", "weight = { bits = 5 }"),
    ] {
        let (fake, deploy) = build_both(tag, extra);
        let d = max_abs_diff(&run(&fake.model, &x), &run(&deploy.model, &x));
        assert_eq!(d, 0.0, "{extra}: fake-quant and deploy differ by {d}");
    }
}

/// Fake-quant and deploy models of the MNIST CNN calibrated on one batch.
fn build_both(tag: &str, extra: &str) -> (amct::quant::Built, amct::quant::Built) {
    let model = load_model(&root().join("models/mnist_cnn.onnx")).expect("model");
    let mut q = Quantizer::new(model, quantize_params(tag, extra)).expect("quantizer");
    let exec = Executor::new(&q.float, ExecOptions::default()).expect("executor");
    let feeds = HashMap::from([("input".to_string(), digits())]);
    q.calibrator
        .observe_batch(&exec, &feeds)
        .expect("calibrate");
    q.finish_calibration();
    let fake = q.build(&BTreeSet::new(), QdqForm::FakeQuant).expect("fake");
    let deploy = q.build(&BTreeSet::new(), QdqForm::Deploy).expect("deploy");
    (fake, deploy)
}

/// Per layer: the type of the weight tensor read by its DequantizeLinear
/// and that DQ's zero point (type and values).
fn weight_storage(m: &Model, layer: &str) -> (DType, DType, Vec<i64>) {
    let node = m.graph.nodes.iter().find(|n| n.name == layer).unwrap();
    let dq = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op_type == "DequantizeLinear" && n.outputs[0] == node.inputs[1])
        .unwrap_or_else(|| panic!("{layer}: no DequantizeLinear on the weight"));
    let zp = &m.graph.initializers[&dq.inputs[2]];
    let scale = &m.graph.initializers[&dq.inputs[1]];
    assert_eq!(zp.dims, scale.dims, "{layer}: zero point and scale shapes");
    let stored = match m.graph.initializers.get(&dq.inputs[0]) {
        Some(t) => t.dtype,
        None => {
            // Fake-quant: the QuantizeLinear feeding the DQ has the same zero point.
            let q = m
                .graph
                .nodes
                .iter()
                .find(|n| n.outputs[0] == dq.inputs[0])
                .unwrap();
            assert_eq!(q.op_type, "QuantizeLinear");
            assert_eq!(q.inputs[2], dq.inputs[2]);
            DType::F32
        }
    };
    (
        stored,
        zp.dtype,
        zp.to_i64_vec().expect("zero point values"),
    )
}

#[test]
fn uint8_weights_compute_what_int8_weights_compute() {
    let (fake8, deploy8) = build_both("w-int8", "weight = { bias_correction = true }");
    let (fake_u8, deploy_u8) = build_both(
        "w-uint8",
        "weight = { bias_correction = true, type = \"uint8\" }",
    );
    let x = digits();
    let reference = run(&fake8.model, &x);
    assert_eq!(run(&deploy8.model, &x), reference);
    assert_eq!(run(&fake_u8.model, &x), reference, "uint8 fake-quant");
    assert_eq!(run(&deploy_u8.model, &x), reference, "uint8 deploy");
    for layer in &deploy_u8.plan.layers {
        let (stored, zp_type, zp) = weight_storage(&deploy_u8.model, &layer.name);
        assert_eq!((stored, zp_type), (DType::U8, DType::U8), "{}", layer.name);
        assert!(
            zp.len() > 1 && zp.iter().all(|&z| z == 128),
            "{}",
            layer.name
        );
        let (_, zp_type, zp) = weight_storage(&fake_u8.model, &layer.name);
        assert_eq!(zp_type, DType::U8);
        assert!(zp.iter().all(|&z| z == 128));
        let (stored, zp_type, zp) = weight_storage(&deploy8.model, &layer.name);
        assert_eq!((stored, zp_type), (DType::I8, DType::I8));
        assert!(zp.iter().all(|&z| z == 0));
    }
    // Same scales and the same integers, shifted by 128.
    for (a, b) in deploy8.weights.iter().zip(&deploy_u8.weights) {
        assert_eq!(a.params, b.params);
        assert_eq!(a.values, b.values);
    }
    assert!(deploy_u8
        .model
        .graph
        .initializers
        .values()
        .all(|t| t.dtype != DType::I8));
    let record = amct::quant::record::quant_record(
        &deploy_u8.plan,
        &deploy_u8.acts,
        &deploy_u8.ranges,
        &deploy_u8.weights,
        None,
    );
    for (name, l) in record["layers"].as_object().unwrap() {
        assert_eq!(l["weight"]["type"], "uint8", "{name}");
        let zp = l["weight"]["zero_point"].as_array().unwrap();
        assert!(zp.iter().all(|z| z == 128), "{name}");
    }
}

#[test]
fn weight_type_overrides_per_type_and_per_layer() {
    let extra = "weight = { type = \"uint8\" }\n\n\
                 [stages.quantize.types.Gemm]\nweight = { type = \"int8\" }\n\n\
                 [stages.quantize.layers.fc2]\nweight = { type = \"uint8\", bits = 8 }\n\n\
                 [stages.quantize.layers.conv2]\nweight = { type = \"int8\" }";
    let params = quantize_params("w-override", extra);
    let (_, deploy) = build_both("w-override", extra);
    let want = [
        ("conv1", DType::U8),
        ("conv2", DType::I8),
        ("conv3", DType::U8),
        ("fc1", DType::I8),
        ("fc2", DType::U8),
    ];
    for (layer, dtype) in want {
        let (stored, zp_type, zp) = weight_storage(&deploy.model, layer);
        assert_eq!((stored, zp_type), (dtype, dtype), "{layer}");
        let z = if dtype == DType::U8 { 128 } else { 0 };
        assert!(zp.iter().all(|&v| v == z), "{layer}: {zp:?}");
    }
    // The per-type override keeps the stage's other weight settings.
    assert_eq!(params.types["Gemm"].weight.bits, 8);
    let (fake, _) = build_both("w-int8-ref", "");
    assert_eq!(run(&deploy.model, &digits()), run(&fake.model, &digits()));
}
