//! constants_to_initializers, remove_identity, eliminate_dead_nodes.

use super::*;
use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};
use crate::passes::{constants_to_initializers, eliminate_dead_nodes, remove_identity};

fn constant(name: &str, out: &str, t: &Tensor) -> Node {
    let mut n = node(name, "Constant", &[], &[out]);
    n.attributes.push(AttributeProto {
        name: Some("value".into()),
        t: Some(crate::onnx::tensor_to_proto(t)),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    });
    n
}

#[test]
fn constant_nodes_become_initializers_except_graph_outputs() {
    let mut rng = Rng::new(20);
    let a = init(&mut rng, "ignored", &[3], 0.0);
    let mut ints_node = node("k2", "Constant", &[], &["k"]);
    ints_node.set_ints("value_ints", &[1, 2, 3]);
    let nodes = vec![
        constant("c1", "c", &a),
        node("add", "Add", &["x", "c"], &["y"]),
        constant("c_out", "z", &a),
        ints_node,
        node("cast", "Cast", &["k"], &["kf"]),
        node("mul", "Mul", &["y", "kf"], &["w"]),
    ];
    let mut m = model(nodes, &[("x", &[3])], &["w", "z"], vec![], 17);
    m.graph.nodes[4].set_int("to", DType::F32.0 as i64);
    let (out, n) = constants_to_initializers(&m, &none()).unwrap();
    assert_eq!((n, count(&out, "Constant")), (2, 1));
    assert_eq!(out.graph.initializers["c"].to_f32_vec(), a.to_f32_vec());
    assert_eq!(
        out.graph.initializers["k"].to_i64_vec(),
        Some(vec![1, 2, 3])
    );
    // The executor runs Constant only in its tensor form: compare on that.
    let mut tensor_form = m.clone();
    tensor_form.graph.nodes[3] = constant("k2", "k", &ints("k", &[1, 2, 3]));
    assert_equivalent(&tensor_form, &out);
}

#[test]
fn identity_in_the_middle_is_bypassed() {
    let nodes = vec![
        node("r", "Relu", &["x"], &["a"]),
        node("id", "Identity", &["a"], &["b"]),
        node("n", "Neg", &["b"], &["y"]),
        node("s", "Sigmoid", &["b"], &["z"]),
    ];
    let m = model(nodes, &[("x", &[4])], &["y", "z"], vec![], 17);
    let (out, n) = remove_identity(&m, &none()).unwrap();
    assert_eq!((n, count(&out, "Identity")), (1, 0));
    assert!(out
        .graph
        .nodes
        .iter()
        .all(|n| n.op_type == "Relu" || n.inputs[0] == "a"));
    assert_equivalent(&m, &out);
}

#[test]
fn identity_feeding_a_graph_output_renames_the_producer() {
    let nodes = vec![
        node("r", "Relu", &["x"], &["a"]),
        node("n", "Neg", &["a"], &["b"]),
        node("id", "Identity", &["a"], &["y"]),
    ];
    let m = model(nodes, &[("x", &[4])], &["y", "b"], vec![], 17);
    let (out, n) = remove_identity(&m, &none()).unwrap();
    assert_eq!(n, 1);
    assert_eq!(out.graph.nodes[0].outputs, vec!["y".to_string()]);
    assert_eq!(out.graph.nodes[1].inputs, vec!["y".to_string()]);
    assert_equivalent(&m, &out);
}

#[test]
fn identity_of_an_input_initializer_or_output_stays() {
    let mut rng = Rng::new(21);
    let nodes = vec![
        node("i1", "Identity", &["x"], &["y"]),
        node("i2", "Identity", &["w"], &["z"]),
        node("i3", "Identity", &["y"], &["u"]),
        node("i4", "Identity", &["x"], &["v"]),
    ];
    let m = model(
        nodes,
        &[("x", &[4])],
        &["y", "z", "u", "v"],
        vec![init(&mut rng, "w", &[4], 0.0)],
        17,
    );
    let excluded: HashSet<String> = ["i4".to_string()].into();
    let (out, n) = remove_identity(&m, &excluded).unwrap();
    assert_eq!(n, 0);
    assert_eq!(out, m);
}

#[test]
fn inference_dropout_is_removed_unless_its_mask_is_read() {
    let train = Tensor::from_raw("train", DType::BOOL, vec![], vec![0]).unwrap();
    let ratio = Tensor::from_f32("ratio", vec![], &[0.3]).unwrap();
    let nodes = vec![
        node("r", "Relu", &["x"], &["a"]),
        node(
            "d1",
            "Dropout",
            &["a", "ratio", "train"],
            &["b", "unused_mask"],
        ),
        node("n", "Neg", &["b"], &["y"]),
        node("d2", "Dropout", &["y"], &["c", "mask"]),
    ];
    let m = model(
        nodes,
        &[("x", &[4])],
        &["y", "c", "mask"],
        vec![train, ratio],
        13,
    );
    let (out, n) = remove_identity(&m, &none()).unwrap();
    assert_eq!((n, count(&out, "Dropout")), (1, 1));
    assert!(
        out.graph.initializers.is_empty(),
        "ratio/training_mode removed"
    );
    verify_model(&out).unwrap();
}

#[test]
fn dead_branches_and_unused_initializers_are_removed() {
    let mut rng = Rng::new(22);
    let nodes = vec![
        node("r", "Relu", &["x"], &["a"]),
        node("dead1", "Mul", &["a", "w"], &["d"]),
        node("dead2", "Neg", &["d"], &["e"]),
        node("kept", "Neg", &["a"], &["k"]),
        node("n", "Neg", &["a"], &["y"]),
    ];
    let inits = vec![
        init(&mut rng, "w", &[4], 0.0),
        init(&mut rng, "orphan", &[2], 0.0),
    ];
    let m = model(nodes, &[("x", &[4])], &["y"], inits, 17);
    let excluded: HashSet<String> = ["kept".to_string()].into();
    let (out, n) = eliminate_dead_nodes(&m, &excluded).unwrap();
    assert_eq!(n, 2);
    let names: Vec<&str> = out.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["r", "kept", "n"]);
    assert!(out.graph.initializers.is_empty());
    assert_eq!(out.graph.inputs.len(), 1, "graph inputs stay");
    assert_equivalent(&m, &out);
}
