//! Tests for `inspect`: MAC conventions (grouped/depthwise conv, transposed
//! conv, gemm, batched matmul), parameters, JSON field names, the text
//! summary, and agreement with the generated fixtures' independent counts.

use std::path::Path;

use super::{inspect, inspect_model, InspectReport};
use crate::graph::{DType, Dim, Model, Node, OpsetId, Tensor, ValueInfo};

fn input(name: &str, dims: Vec<Dim>) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: Some(dims),
        ..Default::default()
    }
}

fn weight(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::from_f32(name, shape.to_vec(), &vec![0.25; n as usize]).unwrap()
}

fn model(inputs: Vec<ValueInfo>, nodes: Vec<Node>, inits: Vec<Tensor>) -> Model {
    let mut m = Model {
        ir_version: 8,
        ..Default::default()
    };
    m.opsets.push(OpsetId {
        domain: String::new(),
        version: 13,
    });
    m.graph.inputs = inputs;
    m.graph.nodes = nodes;
    for t in inits {
        m.graph.initializers.insert(t.name.clone(), t);
    }
    m
}

fn n_chw(c: i64, h: i64, w: i64) -> Vec<Dim> {
    vec![
        Dim::Symbolic("N".into()),
        Dim::Known(c),
        Dim::Known(h),
        Dim::Known(w),
    ]
}

fn layer_macs(r: &InspectReport, name: &str) -> u64 {
    r.layers
        .iter()
        .find(|l| l.name == name)
        .map_or(0, |l| l.macs)
}

#[test]
fn conv_macs_plain_grouped_depthwise() {
    let mut grouped = Node::new("grouped", "Conv", &["c1", "w2"], &["c2"]);
    grouped.set_int("group", 4);
    grouped.set_ints("pads", &[1, 1, 1, 1]);
    let mut dw = Node::new("dw", "Conv", &["c2", "w3"], &["c3"]);
    dw.set_int("group", 16);
    dw.set_ints("strides", &[2, 2]);
    dw.set_ints("pads", &[1, 1, 1, 1]);
    let m = model(
        vec![input("x", n_chw(3, 16, 16))],
        vec![
            Node::new("plain", "Conv", &["x", "w1", "b1"], &["c1"]),
            grouped,
            dw,
        ],
        vec![
            weight("w1", &[16, 3, 3, 3]),
            weight("b1", &[16]),
            weight("w2", &[16, 4, 3, 3]),
            weight("w3", &[16, 1, 3, 3]),
        ],
    );
    let r = inspect_model(&m, 1).unwrap();
    assert_eq!(layer_macs(&r, "plain"), 16 * 14 * 14 * 3 * 9);
    assert_eq!(layer_macs(&r, "grouped"), 16 * 14 * 14 * 4 * 9);
    assert_eq!(layer_macs(&r, "dw"), 16 * 7 * 7 * 9);
    assert_eq!(r.macs, r.layers.iter().map(|l| l.macs).sum::<u64>());
    assert_eq!(r.layers[0].params, 16 * 27 + 16);
    assert_eq!(r.parameters, 16 * 27 + 16 + 16 * 36 + 16 * 9);
    // The symbolic batch is set to `batch`.
    let r8 = inspect_model(&m, 8).unwrap();
    assert_eq!(r8.macs, 8 * r.macs);
    assert!(inspect_model(&m, 0).is_err());
}

#[test]
fn conv_transpose_gemm_matmul_macs() {
    let mut deconv = Node::new("deconv", "ConvTranspose", &["x", "wt"], &["d"]);
    deconv.set_ints("strides", &[2, 2]);
    let mut gemm = Node::new("fc", "Gemm", &["f", "wf"], &["y"]);
    gemm.set_int("transB", 1);
    let m = model(
        vec![
            input("x", n_chw(4, 5, 5)),
            input(
                "a",
                vec![Dim::Known(2), Dim::Known(1), Dim::Known(3), Dim::Known(8)],
            ),
        ],
        vec![
            deconv,
            Node::new("flat", "Flatten", &["d"], &["f"]),
            gemm,
            Node::new("mm", "MatMul", &["a", "wm"], &["z"]),
            Node::new("mv", "MatMul", &["a", "v"], &["zv"]),
        ],
        vec![
            weight("wt", &[4, 6, 3, 3]),
            weight("wf", &[10, 6 * 11 * 11]),
            weight("wm", &[5, 8, 7]),
            weight("v", &[8]),
        ],
    );
    let r = inspect_model(&m, 1).unwrap();
    assert_eq!(layer_macs(&r, "deconv"), 4 * 5 * 5 * 6 * 9);
    assert_eq!(layer_macs(&r, "fc"), 10 * 726);
    assert_eq!(layer_macs(&r, "mm"), 2 * 5 * 3 * 7 * 8);
    assert_eq!(layer_macs(&r, "mv"), 2 * 3 * 8);
    assert!(r.layers.iter().all(|l| l.op_type != "Flatten"));
    assert!(r.unsupported.is_empty(), "{:?}", r.unsupported);
}

#[test]
fn json_field_names_and_shapes() {
    let mut custom = Node::new("fancy", "FancyNorm", &["x"], &["y"]);
    custom.domain = "com.example".into();
    let mut m = model(vec![input("x", n_chw(3, 4, 4))], vec![custom], vec![]);
    m.graph.outputs.push(ValueInfo {
        name: "y".into(),
        ..Default::default()
    });
    let r = inspect_model(&m, 1).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "path",
        "ir_version",
        "opsets",
        "inputs",
        "outputs",
        "op_histogram",
        "parameters",
        "macs",
        "layers",
        "size_bytes",
        "unsupported",
    ];
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["N", 3, 4, 4]));
    assert_eq!(v["inputs"][0]["dtype"], "float32");
    assert_eq!(v["outputs"][0]["shape"], serde_json::Value::Null);
    assert_eq!(
        v["opsets"][0],
        serde_json::json!({"domain": "", "version": 13})
    );
    assert_eq!(v["op_histogram"], serde_json::json!({"FancyNorm": 1}));
    assert_eq!(v["unsupported"][0]["node"], "fancy");
    assert_eq!(v["unsupported"][0]["op_type"], "FancyNorm");
    assert!(!v["unsupported"][0]["reason"].as_str().unwrap().is_empty());
    assert!(v["size_bytes"].as_u64().unwrap() > 0);
    let text = r.to_text();
    assert!(
        text.contains("FancyNorm") && text.contains("unsupported"),
        "{text}"
    );
}

#[test]
fn inspect_reads_file_and_external_data() {
    let dir = std::env::temp_dir().join(format!("amct-inspect-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.onnx");
    let m = model(
        vec![input("x", n_chw(3, 8, 8))],
        vec![Node::new("conv", "Conv", &["x", "w"], &["y"])],
        vec![weight("w", &[64, 3, 3, 3])],
    );
    let opts = crate::onnx::ExportOptions {
        external_data: true,
        ..Default::default()
    };
    crate::onnx::save_model(&m, &path, &opts).unwrap();
    let loaded = crate::onnx::load_model(&path).unwrap();
    let r = inspect(&path, &loaded, 1).unwrap();
    let main = std::fs::metadata(&path).unwrap().len();
    let data = std::fs::metadata(dir.join("m.onnx.data")).unwrap().len();
    assert!(data >= 64 * 27 * 4);
    assert_eq!(r.size_bytes, main + data);
    assert_eq!(r.parameters, 64 * 27);
    assert_eq!(r.macs, 64 * 36 * 27);
    let text = r.to_text();
    assert!(
        text.contains("all ops supported") && text.contains("conv"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Float elements held by Constant nodes' tensors in the file.
fn constant_floats(path: &Path) -> u64 {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let proto = crate::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = proto.graph.unwrap_or_default();
    let tensors = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Constant"))
        .flat_map(|n| &n.attribute);
    tensors
        .filter_map(|a| a.t.as_ref())
        .filter(|t| t.data_type.is_some_and(|d| DType(d).is_float()))
        .map(|t| t.dims.iter().product::<i64>() as u64)
        .sum()
}

/// The generated fixtures carry independent counts (scripts/count_macs.py);
/// skipped when they have not been generated.
#[test]
fn agrees_with_fixture_meta() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    let mut checked = 0;
    for entry in entries.flatten() {
        let (meta_path, model_path) = (
            entry.path().join("meta.json"),
            entry.path().join("model.onnx"),
        );
        let (Ok(meta), Ok(model)) = (
            std::fs::read_to_string(&meta_path),
            crate::onnx::load_model(&model_path),
        ) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        let r = inspect(&model_path, &model, 1)
            .unwrap_or_else(|e| panic!("{}: {e}", model_path.display()));
        let name = entry.file_name().to_string_lossy().into_owned();
        let want = meta["macs"].as_u64().unwrap();
        assert!(
            r.macs.abs_diff(want) as f64 <= 0.01 * want as f64,
            "{name}: macs {} vs {want}",
            r.macs
        );
        // Constant nodes are initializers in the IR: their floats are
        // parameters and the nodes leave the histogram.
        let constants = constant_floats(&model_path);
        assert_eq!(
            r.parameters,
            meta["params"].as_u64().unwrap() + constants,
            "{name}: parameters"
        );
        let mut ops = meta["ops"].clone();
        ops.as_object_mut().unwrap().remove("Constant");
        assert_eq!(
            serde_json::to_value(&r.op_histogram).unwrap(),
            ops,
            "{name}: histogram"
        );
        checked += 1;
    }
    eprintln!("checked {checked} fixtures against meta.json");
}
