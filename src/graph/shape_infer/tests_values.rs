//! Per-op tests for shape inference, part 2: constant propagation through
//! shape computations, reductions and Resize/Pad.

use super::tests::{dims, infer, input, ints, model, node, shape_of};
use crate::graph::{DType, Dim, Node, Tensor};

fn one(opset: i64, spec: &str, n: Node, inits: Vec<Tensor>) -> Vec<Dim> {
    let out = n.outputs[0].clone();
    shape_of(
        &infer(&model(opset, vec![input("x", spec)], vec![n], inits)),
        &out,
    )
}

#[test]
fn shape_values_through_slice_cast_and_arithmetic() {
    let m = model(
        13,
        vec![input("x", "N,3,32,32")],
        vec![
            node("Shape", &["x"], &["s"]),
            node("Slice", &["s", "two", "four"], &["hw"]),
            node("Mul", &["hw", "two"], &["hw2"]),
            node("Cast", &["hw2"], &["hwf"]),
            node("ConstantOfShape", &["s"], &["zeros"]),
            node("Expand", &["x", "ones"], &["e"]),
            node("Tile", &["x", "rep"], &["t"]),
            node("Range", &["r0", "r5", "r2"], &["rg"]),
        ],
        vec![
            ints("two", &[2]),
            ints("four", &[4]),
            ints("ones", &[2, 1, 1, 1]),
            ints("rep", &[1, 1, 2, 1]),
            Tensor::from_i64("r0", vec![], &[0]).unwrap(),
            Tensor::from_i64("r5", vec![], &[5]).unwrap(),
            Tensor::from_i64("r2", vec![], &[2]).unwrap(),
        ],
    );
    let mut m = m;
    m.graph.nodes[3].set_int("to", DType::F32.0 as i64);
    let r = infer(&m);
    assert_eq!(r.int_value("hw"), Some(dims("32,32").as_slice()));
    assert_eq!(r.int_value("hw2"), Some(dims("64,64").as_slice()));
    assert_eq!(shape_of(&r, "zeros"), dims("N,3,32,32"));
    assert_eq!(r.dtype("zeros"), Some(DType::F32));
    assert_eq!(shape_of(&r, "e"), dims("2,3,32,32"));
    assert_eq!(shape_of(&r, "t"), dims("N,3,64,32"));
    assert_eq!(r.int_value("rg"), Some(dims("0,2,4").as_slice()));
}

#[test]
fn reductions() {
    let mut r1 = node("ReduceMean", &["x"], &["y"]);
    r1.set_ints("axes", &[2, 3]);
    r1.set_int("keepdims", 0);
    assert_eq!(one(13, "N,3,4,4", r1, vec![]), dims("N,3"));
    assert_eq!(
        one(
            18,
            "N,3,4,4",
            node("ReduceMax", &["x", "a"], &["y"]),
            vec![ints("a", &[-1])]
        ),
        dims("N,3,4,1")
    );
    assert_eq!(
        one(13, "N,3", node("ReduceSum", &["x"], &["y"]), vec![]),
        dims("1,1")
    );
    let mut noop = node("ReduceSum", &["x"], &["y"]);
    noop.set_int("noop_with_empty_axes", 1);
    assert_eq!(one(13, "N,3", noop, vec![]), dims("N,3"));
    let mut am = node("ArgMax", &["x"], &["y"]);
    am.set_int("axis", 1);
    am.set_int("keepdims", 0);
    let r = infer(&model(13, vec![input("x", "N,10")], vec![am], vec![]));
    assert_eq!(
        (shape_of(&r, "y"), r.dtype("y")),
        (dims("N"), Some(DType::I64))
    );
}

#[test]
fn resize_scales_and_sizes() {
    let sc = Tensor::from_f32("sc", vec![4], &[1.0, 1.0, 2.0, 0.5]).unwrap();
    let empty = Tensor::from_f32("roi", vec![0], &[]).unwrap();
    assert_eq!(
        one(
            13,
            "N,3,8,8",
            node("Resize", &["x", "", "sc"], &["y"]),
            vec![sc.clone()]
        ),
        dims("N,3,16,4")
    );
    assert_eq!(
        one(
            10,
            "N,3,8,8",
            node("Resize", &["x", "sc"], &["y"]),
            vec![sc]
        ),
        dims("N,3,16,4")
    );
    let sz = ints("sz", &[1, 3, 20, 30]);
    assert_eq!(
        one(
            13,
            "N,3,8,8",
            node("Resize", &["x", "roi", "roi", "sz"], &["y"]),
            vec![empty, sz]
        ),
        dims("1,3,20,30")
    );
    let m = model(
        13,
        vec![input("x", "N,3,8,8")],
        vec![
            node("Shape", &["x"], &["s"]),
            node("Slice", &["s", "z", "two"], &["nc"]),
            node("Concat", &["nc", "hw"], &["sizes"]),
            node("Resize", &["x", "", "", "sizes"], &["y"]),
            node("Pad", &["x", "pads"], &["p"]),
        ],
        vec![
            ints("z", &[0]),
            ints("two", &[2]),
            ints("hw", &[5, 6]),
            ints("pads", &[0, 0, 1, 2, 0, 0, 3, 4]),
        ],
    );
    let mut m = m;
    m.graph.nodes[2].set_int("axis", 0);
    let r = infer(&m);
    assert_eq!(shape_of(&r, "y"), dims("N,3,5,6"));
    assert_eq!(shape_of(&r, "p"), dims("N,3,12,14"));
}
