//! fold_constants: evaluated nodes, statically known shapes, graph outputs,
//! and what must never fold.

use super::*;
use crate::graph::Dim;
use crate::passes::{eliminate_dead_nodes, fold_constants};

#[test]
fn all_constant_inputs_fold_into_an_initializer() {
    let mut rng = Rng::new(10);
    let inits = vec![
        init(&mut rng, "a", &[3], 0.0),
        init(&mut rng, "b", &[3], 0.0),
    ];
    let nodes = vec![
        node("add", "Add", &["a", "b"], &["s"]),
        node("mul", "Mul", &["x", "s"], &["y"]),
    ];
    let m = model(nodes, &[("x", &[2, 3])], &["y"], inits, 17);
    let (out, n) = fold_constants(&m, &none()).unwrap();
    assert_eq!((n, count(&out, "Add")), (1, 0));
    assert!(out.graph.initializers.contains_key("s"));
    assert!(
        !out.graph.initializers.contains_key("a"),
        "unused inputs removed"
    );
    assert_equivalent(&m, &out);
}

fn reshape_chain(batch: Dim) -> Model {
    let nodes = vec![
        node("shape", "Shape", &["x"], &["s"]),
        node("gather", "Gather", &["s", "idx"], &["n"]),
        node("slice", "Slice", &["s", "one", "three"], &["hw"]),
        node("concat", "Concat", &["n", "hw"], &["target"]),
        node("reshape", "Reshape", &["x", "target"], &["y"]),
    ];
    let inits = vec![ints("idx", &[0]), ints("one", &[1]), ints("three", &[3])];
    let mut m = model(nodes, &[("x", &[2, 3, 4])], &["y"], inits, 17);
    m.graph.nodes[3].set_int("axis", 0);
    if let Some(shape) = m.graph.inputs[0].shape.as_mut() {
        shape[0] = batch;
    }
    m
}

#[test]
fn shape_of_a_static_value_folds_and_makes_reshape_targets_constant() {
    let m = reshape_chain(Dim::Known(2));
    let (out, n) = fold_constants(&m, &none()).unwrap();
    assert_eq!(n, 4, "Shape, Gather, Slice and Concat fold");
    assert_eq!(out.graph.nodes.len(), 1);
    assert_eq!(
        out.graph.initializers["target"].to_i64_vec(),
        Some(vec![2, 3, 4])
    );
    assert_equivalent(&m, &out);
}

#[test]
fn symbolic_batch_folds_only_what_is_known() {
    let m = reshape_chain(Dim::Symbolic("N".into()));
    let (out, n) = fold_constants(&m, &none()).unwrap();
    assert_eq!(n, 1, "only the Slice of the known dims folds");
    assert_eq!(out.graph.initializers["hw"].to_i64_vec(), Some(vec![3, 4]));
    assert_eq!(count(&out, "Shape"), 1);
    assert_equivalent(&m, &out);
}

#[test]
fn folded_graph_output_becomes_a_constant_node() {
    let mut rng = Rng::new(11);
    let inits = vec![
        init(&mut rng, "a", &[3], 0.0),
        init(&mut rng, "b", &[3], 0.0),
    ];
    let nodes = vec![
        node("add", "Add", &["a", "b"], &["y"]),
        node("neg", "Neg", &["x"], &["z"]),
    ];
    let m = model(nodes, &[("x", &[3])], &["y", "z"], inits, 17);
    let (out, n) = fold_constants(&m, &none()).unwrap();
    assert_eq!(n, 1);
    assert_eq!(out.graph.nodes[0].op_type, "Constant");
    assert_eq!(out.graph.nodes[0].outputs, vec!["y".to_string()]);
    assert!(!out.graph.initializers.contains_key("y"));
    assert_equivalent(&m, &out);
}

#[test]
fn random_quant_unsupported_custom_and_excluded_nodes_stay() {
    let mut rng = Rng::new(12);
    let q = Tensor::from_raw("q", DType::I8, vec![4], vec![1, 2, 3, 4]).unwrap();
    let scale = Tensor::from_f32("sc", vec![], &[0.5]).unwrap();
    let mut custom = node("custom", "MyOp", &["a"], &["c"]);
    custom.domain = "com.example".into();
    let nodes = vec![
        node("rand", "RandomUniformLike", &["a"], &["r"]),
        node("dq", "DequantizeLinear", &["q", "sc"], &["d"]),
        node("det", "Det", &["m"], &["dt"]),
        custom,
        node("keep", "Neg", &["a"], &["k"]),
    ];
    let inits = vec![
        init(&mut rng, "a", &[4], 0.0),
        init(&mut rng, "m", &[2, 2], 0.0),
        q,
        scale,
    ];
    let m = model(nodes, &[], &["r", "d", "dt", "c", "k"], inits, 17);
    let excluded: HashSet<String> = ["keep".to_string()].into();
    let (out, n) = fold_constants(&m, &excluded).unwrap();
    assert_eq!(n, 0);
    assert_eq!(out, m);
}

#[test]
fn large_expansions_of_small_inputs_stay() {
    let big = vec![
        node("expand", "Expand", &["one", "big"], &["e"]),
        node("add", "Add", &["x", "e"], &["y"]),
    ];
    let inits = vec![
        Tensor::from_f32("one", vec![1], &[1.0]).unwrap(),
        ints("big", &[300, 300]),
    ];
    let m = model(big, &[("x", &[300, 300])], &["y"], inits, 17);
    assert_eq!(fold_constants(&m, &none()).unwrap().1, 0);
    let mut small = m.clone();
    small
        .graph
        .initializers
        .insert("big".into(), ints("big", &[3, 300]));
    small.graph.inputs[0] = ValueInfo::tensor("x", DType::F32, &[3, 300]);
    let (out, n) = fold_constants(&small, &none()).unwrap();
    assert_eq!(n, 1);
    let (out, _) = eliminate_dead_nodes(&out, &none()).unwrap();
    assert_equivalent(&small, &out);
}

#[test]
fn recorded_intermediate_shapes_never_become_constants() {
    let mut custom = node("custom", "Foo", &["x"], &["f"]);
    custom.domain = "com.example".into();
    let nodes = vec![custom, node("shape", "Shape", &["f"], &["y"])];
    let mut m = model(nodes, &[("x", &[2, 3])], &["y"], vec![], 17);
    m.graph.inputs[0].shape = Some(vec![Dim::Symbolic("N".into()), Dim::Known(3)]);
    // A traced record of f at batch 1.
    m.graph
        .value_info
        .push(ValueInfo::tensor("f", DType::F32, &[1, 3]));
    let (out, n) = fold_constants(&m, &none()).unwrap();
    assert_eq!(n, 0);
    assert_eq!(count(&out, "Shape"), 1);
}
