//! Tests for the inference driver: symbolic dims, overrides, constant
//! propagation chains, declared-type fallback, errors and `annotate`.

use std::collections::HashMap;

use super::{annotate, infer_shapes, InferredShapes};
use crate::graph::{DType, Dim, GraphError, Model, Node, OpsetId, Tensor, ValueInfo};

/// Parses "N,3,224,224" ("?" is unknown, names are symbolic).
pub(super) fn dims(spec: &str) -> Vec<Dim> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<i64>() {
            Ok(v) => Dim::Known(v),
            Err(_) if s == "?" => Dim::Unknown,
            Err(_) => Dim::Symbolic(s.to_string()),
        })
        .collect()
}

pub(super) fn input(name: &str, spec: &str) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: Some(dims(spec)),
        ..Default::default()
    }
}

pub(super) fn weight(name: &str, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::from_f32(name, shape.to_vec(), &vec![0.5; n as usize]).unwrap()
}

pub(super) fn ints(name: &str, values: &[i64]) -> Tensor {
    Tensor::from_i64(name, vec![values.len() as i64], values).unwrap()
}

pub(super) fn model(
    opset: i64,
    inputs: Vec<ValueInfo>,
    nodes: Vec<Node>,
    inits: Vec<Tensor>,
) -> Model {
    let mut m = Model {
        ir_version: 8,
        ..Default::default()
    };
    m.opsets.push(OpsetId {
        domain: String::new(),
        version: opset,
    });
    m.graph.inputs = inputs;
    m.graph.nodes = nodes;
    for t in inits {
        m.graph.initializers.insert(t.name.clone(), t);
    }
    m
}

pub(super) fn node(op: &str, ins: &[&str], outs: &[&str]) -> Node {
    Node::new(&format!("{op}_{}", outs[0]), op, ins, outs)
}

pub(super) fn infer(m: &Model) -> InferredShapes {
    infer_shapes(m, &HashMap::new()).unwrap()
}

pub(super) fn shape_of(r: &InferredShapes, name: &str) -> Vec<Dim> {
    r.shape(name)
        .unwrap_or_else(|| panic!("no shape for {name}"))
        .to_vec()
}

pub(super) fn err_of(m: &Model) -> String {
    match infer_shapes(m, &HashMap::new()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    }
}

fn cnn() -> Model {
    let mut conv = node("Conv", &["x", "w", "b"], &["c"]);
    conv.set_ints("pads", &[1, 1, 1, 1]);
    conv.set_ints("strides", &[2, 2]);
    let mut pool = node("MaxPool", &["r"], &["p"]);
    pool.set_ints("kernel_shape", &[2, 2]);
    pool.set_ints("strides", &[2, 2]);
    let mut gemm = node("Gemm", &["f", "fw", "fb"], &["y"]);
    gemm.set_int("transB", 1);
    model(
        13,
        vec![input("x", "N,3,32,32")],
        vec![
            conv,
            node("Relu", &["c"], &["r"]),
            pool,
            node("Flatten", &["p"], &["f"]),
            gemm,
        ],
        vec![
            weight("w", &[8, 3, 3, 3]),
            weight("b", &[8]),
            weight("fw", &[10, 512]),
            weight("fb", &[10]),
        ],
    )
}

#[test]
fn symbolic_batch_flows_through_conv_flatten_gemm() {
    let r = infer(&cnn());
    assert_eq!(shape_of(&r, "c"), dims("N,8,16,16"));
    assert_eq!(shape_of(&r, "p"), dims("N,8,8,8"));
    assert_eq!(shape_of(&r, "f"), dims("N,512"));
    assert_eq!(shape_of(&r, "y"), dims("N,10"));
    assert_eq!(r.dtype("y"), Some(DType::F32));
    assert_eq!(r.known_shape("w"), Some(vec![8, 3, 3, 3]));
}

#[test]
fn overrides_pin_symbolic_dims() {
    let m = cnn();
    let over = HashMap::from([("x".to_string(), dims("4,3,32,32"))]);
    let r = infer_shapes(&m, &over).unwrap();
    assert_eq!(r.known_shape("y"), Some(vec![4, 10]));
    let bad = HashMap::from([("nope".to_string(), dims("1"))]);
    assert!(infer_shapes(&m, &bad)
        .unwrap_err()
        .to_string()
        .contains("nope"));
    let bad_rank = HashMap::from([("x".to_string(), dims("1,3"))]);
    assert!(infer_shapes(&m, &bad_rank).is_err());
}

#[test]
fn shape_gather_concat_reshape_chain() {
    let mut gather = node("Gather", &["s", "zero"], &["n"]);
    gather.set_int("axis", 0);
    let mut concat = node("Concat", &["n1", "minus1"], &["target"]);
    concat.set_int("axis", 0);
    let m = model(
        13,
        vec![input("x", "N,8,4,4")],
        vec![
            node("Shape", &["x"], &["s"]),
            gather,
            node("Unsqueeze", &["n", "ax0"], &["n1"]),
            concat,
            node("Reshape", &["x", "target"], &["y"]),
        ],
        vec![
            Tensor::from_i64("zero", vec![], &[0]).unwrap(),
            ints("ax0", &[0]),
            ints("minus1", &[-1]),
        ],
    );
    let r = infer(&m);
    assert_eq!(r.int_value("s"), Some(dims("N,8,4,4").as_slice()));
    assert_eq!(shape_of(&r, "n"), vec![]);
    assert_eq!(r.int_value("target"), Some(dims("N,-1").as_slice()));
    assert_eq!(shape_of(&r, "y"), dims("N,128"));
    assert_eq!(r.dtype("s"), Some(DType::I64));
    // With the batch pinned the whole chain becomes numbers.
    let r = infer_shapes(&m, &HashMap::from([("x".to_string(), dims("2,8,4,4"))])).unwrap();
    assert_eq!(r.int_value("target"), Some(dims("2,-1").as_slice()));
    assert_eq!(r.known_shape("y"), Some(vec![2, 128]));
}

#[test]
fn reshape_resolves_symbolic_minus_one() {
    let m = model(
        13,
        vec![input("x", "N,8,4,4")],
        vec![
            node("Reshape", &["x", "t"], &["y"]),
            node("Reshape", &["x", "t2"], &["z"]),
        ],
        vec![ints("t", &[-1, 8, 16]), ints("t2", &[0, 0, -1])],
    );
    let r = infer(&m);
    assert_eq!(shape_of(&r, "y"), dims("N,8,16"));
    assert_eq!(shape_of(&r, "z"), dims("N,8,16"));
    let bad = model(
        13,
        vec![input("x", "2,3,5")],
        vec![node("Reshape", &["x", "t"], &["y"])],
        vec![ints("t", &[4, -1])],
    );
    let e = err_of(&bad);
    assert!(
        e.contains("Reshape_y") && e.contains("'x'") && e.contains("'t'"),
        "{e}"
    );
}

#[test]
fn ceil_mode_pooling() {
    let pool = |ceil: i64, k: i64, s: i64, pads: &[i64]| {
        let mut p = node("MaxPool", &["x"], &["y"]);
        p.set_ints("kernel_shape", &[k, k]);
        p.set_ints("strides", &[s, s]);
        p.set_ints("pads", pads);
        p.set_int("ceil_mode", ceil);
        p
    };
    let run = |spec: &str, p: Node| {
        infer(&model(13, vec![input("x", spec)], vec![p], vec![])).known_shape("y")
    };
    assert_eq!(
        run("1,3,112,112", pool(1, 3, 2, &[0, 0, 0, 0])),
        Some(vec![1, 3, 56, 56])
    );
    assert_eq!(
        run("1,3,112,112", pool(0, 3, 2, &[0, 0, 0, 0])),
        Some(vec![1, 3, 55, 55])
    );
    // The last window would start in the end padding: dropped.
    assert_eq!(
        run("1,1,5,5", pool(1, 2, 2, &[1, 1, 1, 1])),
        Some(vec![1, 1, 3, 3])
    );
    assert_eq!(
        run("1,1,6,6", pool(1, 3, 2, &[1, 1, 1, 1])),
        Some(vec![1, 1, 4, 4])
    );
}

#[test]
fn conv_channel_mismatch_names_node_and_values() {
    let m = model(
        13,
        vec![input("x", "1,4,8,8")],
        vec![node("Conv", &["x", "w"], &["y"])],
        vec![weight("w", &[8, 3, 3, 3])],
    );
    let e = err_of(&m);
    assert!(
        e.contains("Conv_y") && e.contains("'x'") && e.contains("'w'") && e.contains("channels"),
        "{e}"
    );
    let mut grouped = node("Conv", &["x", "w"], &["y"]);
    grouped.set_int("group", 2);
    let ok = model(
        13,
        vec![input("x", "1,4,8,8")],
        vec![grouped],
        vec![weight("w", &[8, 2, 3, 3])],
    );
    assert_eq!(infer(&ok).known_shape("y"), Some(vec![1, 8, 6, 6]));
}

#[test]
fn matmul_inner_mismatch_is_an_error() {
    let m = model(
        13,
        vec![input("a", "N,4,5")],
        vec![node("MatMul", &["a", "b"], &["y"])],
        vec![weight("b", &[6, 7])],
    );
    let e = err_of(&m);
    assert!(
        e.contains("MatMul_y") && e.contains("'a'") && e.contains("'b'") && e.contains("K=5"),
        "{e}"
    );
}

#[test]
fn unknown_ops_fall_back_to_declared_types() {
    let mut custom = node("FancyNorm", &["x"], &["f"]);
    custom.domain = "com.example".into();
    let mut m = model(
        17,
        vec![input("x", "N,3,8,8")],
        vec![
            custom,
            node("Relu", &["f"], &["r"]),
            node("MysteryOp", &["r"], &["q"]),
            node("Relu", &["q"], &["y"]),
        ],
        vec![],
    );
    m.graph.value_info.push(input("f", "N,3,8,8"));
    let r = infer(&m);
    assert_eq!(shape_of(&r, "r"), dims("N,3,8,8"));
    assert_eq!(r.shape("q"), None);
    assert_eq!(r.shape("y"), None);
    // Declared symbols are substituted by overrides too.
    let r = infer_shapes(&m, &HashMap::from([("x".to_string(), dims("1,3,8,8"))])).unwrap();
    assert_eq!(r.known_shape("r"), Some(vec![1, 3, 8, 8]));
}

#[test]
fn annotate_writes_intermediates_only() {
    let mut m = cnn();
    m.graph.outputs.push(input("y", "N,10"));
    let n = annotate(&mut m, &HashMap::new()).unwrap();
    assert_eq!(n, 4);
    let names: Vec<&str> = m.graph.value_info.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["c", "r", "p", "f"]);
    assert_eq!(
        m.graph.value_info("f").and_then(|v| v.shape.clone()),
        Some(dims("N,512"))
    );
    assert_eq!(annotate(&mut m, &HashMap::new()).unwrap(), 4);
    assert_eq!(m.graph.value_info.len(), 4);
}

#[test]
fn errors_are_bad_node_errors() {
    let m = model(
        13,
        vec![input("x", "1,4,8,8")],
        vec![node("Conv", &["x", "w"], &["y"])],
        vec![weight("w", &[8, 3, 3, 3])],
    );
    assert!(matches!(
        infer_shapes(&m, &HashMap::new()),
        Err(GraphError::BadNode { .. })
    ));
}
