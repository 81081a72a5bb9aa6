//! The fuse pipeline on the generated fixtures: foldable BatchNormalization
//! nodes are gone, the result verifies and survives an export/import round
//! trip, graph output names are unchanged, and the executor's outputs on the
//! fixture's batch-1 inputs agree before and after within 1e-5 relative
//! (max|diff| <= 1e-5 * max|output| per output).

mod common;

use std::collections::HashMap;

use amct::exec::{npz::read_npz, ExecOptions, Executor, Value};
use amct::graph::{verify_model, Model};
use amct::onnx::{load_model, model_from_bytes, model_to_proto};
use amct::passes::{fuse_pipeline, FuseOptions, FuseReport};
use candle_core::{DType as CDType, Device};
use prost::Message;

const REL_TOL: f64 = 1e-5;

fn count(m: &Model, op: &str) -> usize {
    m.graph.nodes.iter().filter(|n| n.op_type == op).count()
}

fn run(m: &Model, feeds: &HashMap<String, Value>) -> Vec<Vec<f64>> {
    let exec = Executor::new(m, ExecOptions::default()).expect("executor");
    exec.run(feeds)
        .expect("run")
        .iter()
        .map(|v| {
            let t = v.tensor.flatten_all().and_then(|t| t.to_dtype(CDType::F64));
            t.and_then(|t| t.to_vec1()).expect("read output")
        })
        .collect()
}

/// Fuses fixture `name`; returns the fused model, the report and the worst
/// relative output difference.
fn fuse_fixture(name: &str) -> (Model, Model, FuseReport, f64) {
    let dir = common::fixtures_dir().join(name);
    let model = load_model(&dir.join("model.onnx")).expect("load fixture");
    let (fused, report) = fuse_pipeline(&model, &FuseOptions::default()).expect("fuse");
    verify_model(&fused).expect("fused model verifies");
    let bytes = model_to_proto(&fused).encode_to_vec();
    let reloaded = model_from_bytes(&bytes, &dir.join("fused.onnx")).expect("fused model reloads");
    let names = |m: &Model| {
        m.graph
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&model),
        names(&fused),
        "{name}: graph output names changed"
    );
    let feeds = read_npz(&dir.join("in_b1.npz"), &Device::Cpu, CDType::F32).expect("inputs");
    let (a, b) = (run(&model, &feeds), run(&reloaded, &feeds));
    let mut worst = 0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len(), "{name}: output {i} size");
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        let rel = if scale > 0.0 { diff / scale } else { diff };
        assert!(
            rel <= REL_TOL,
            "{name}: output {i}: max|diff| {diff:e}, max|out| {scale:e}, ratio {rel:e}"
        );
        worst = worst.max(rel);
    }
    eprintln!(
        "{name}: max relative difference {worst:.3e}; nodes {} -> {}; {:?}",
        report.nodes_before, report.nodes_after, report.passes
    );
    (model, fused, report, worst)
}

#[test]
fn resnet50_all_batch_norms_fold() {
    let (before, after, report, _) = fuse_fixture("resnet50");
    assert_eq!(count(&before, "BatchNormalization"), 53);
    assert_eq!(count(&after, "BatchNormalization"), 0);
    assert_eq!(report.count("fold_batch_norm"), 53);
    assert_eq!(count(&after, "Conv"), 53);
    assert!(after.graph.parameter_count() < before.graph.parameter_count());
}

#[test]
fn mobilenetv2_all_batch_norms_fold() {
    let (before, after, report, _) = fuse_fixture("mobilenetv2");
    assert_eq!(count(&before, "BatchNormalization"), 52);
    assert_eq!(count(&after, "BatchNormalization"), 0);
    assert_eq!(report.count("fold_batch_norm"), 52);
}

#[test]
fn mnist_cnn_is_unchanged_in_function() {
    let (before, after, _, _) = fuse_fixture("mnist_cnn");
    assert_eq!(before.graph.nodes.len(), after.graph.nodes.len());
}

#[test]
fn opset11_mix_folds_bn_identity_and_dropout() {
    let (_, after, _, _) = fuse_fixture("opset11_mix");
    for op in ["BatchNormalization", "Identity", "Dropout", "Constant"] {
        assert_eq!(count(&after, op), 0, "{op} left");
    }
}

#[test]
fn opset18_mix_folds_bn_identity_and_dropout() {
    let (_, after, _, _) = fuse_fixture("opset18_mix");
    for op in ["BatchNormalization", "Identity", "Dropout", "Constant"] {
        assert_eq!(count(&after, op), 0, "{op} left");
    }
}

#[test]
fn transformer_block_keeps_its_function() {
    let (_, after, _, _) = fuse_fixture("transformer_block");
    assert_eq!(count(&after, "LayerNormalization"), 2);
}

#[test]
fn qdq_model_keeps_its_quantization() {
    let (before, after, _, _) = fuse_fixture("qdq_int8");
    for op in ["QuantizeLinear", "DequantizeLinear"] {
        assert_eq!(count(&before, op), count(&after, op), "{op} count changed");
    }
}

#[test]
fn ir3_model_with_initializers_as_inputs_folds() {
    let (before, after, _, _) = fuse_fixture("ir3_inits_as_inputs");
    assert!(count(&before, "BatchNormalization") > 0);
    assert_eq!(count(&after, "BatchNormalization"), 0);
    let inits = &after.graph.initializers;
    assert!(after
        .graph
        .overridable_initializers
        .iter()
        .all(|v| inits.contains_key(&v.name)));
}
