//! Per-op tests for shape inference: conv/pool geometry, matmul rules,
//! split/slice/squeeze opset forms, reductions, resize and types.

use super::tests::{dims, err_of, infer, input, ints, model, node, shape_of, weight};
use crate::graph::{DType, Dim, Node, Tensor};

fn one(opset: i64, spec: &str, n: Node, inits: Vec<Tensor>) -> Vec<Dim> {
    let out = n.outputs[0].clone();
    shape_of(
        &infer(&model(opset, vec![input("x", spec)], vec![n], inits)),
        &out,
    )
}

#[test]
fn conv_geometry() {
    let mut c = node("Conv", &["x", "w"], &["y"]);
    c.set_string("auto_pad", "SAME_UPPER");
    c.set_ints("strides", &[2]);
    assert_eq!(
        one(13, "N,4,15", c, vec![weight("w", &[6, 4, 3])]),
        dims("N,6,8")
    );
    let mut c = node("Conv", &["x", "w"], &["y"]);
    c.set_ints("dilations", &[2, 2]);
    c.set_ints("pads", &[2, 1, 2, 1]);
    assert_eq!(
        one(13, "1,3,10,10", c, vec![weight("w", &[5, 3, 3, 3])]),
        dims("1,5,10,8")
    );
    let mut c = node("Conv", &["x", "w"], &["y"]);
    c.set_string("auto_pad", "VALID");
    assert_eq!(
        one(13, "1,3,10,?", c, vec![weight("w", &[5, 3, 3, 3])]),
        dims("1,5,8,?")
    );
    let mut dw = node("Conv", &["x", "w"], &["y"]);
    dw.set_int("group", 32);
    assert_eq!(
        one(13, "1,32,8,8", dw, vec![weight("w", &[32, 1, 3, 3])]),
        dims("1,32,6,6")
    );
}

#[test]
fn conv_transpose_geometry() {
    let mut c = node("ConvTranspose", &["x", "w"], &["y"]);
    c.set_ints("strides", &[2, 2]);
    c.set_ints("pads", &[1, 1, 1, 1]);
    c.set_ints("output_padding", &[1, 1]);
    c.set_int("group", 2);
    assert_eq!(
        one(13, "N,4,4,5", c, vec![weight("w", &[4, 3, 3, 3])]),
        dims("N,6,8,10")
    );
    let mut c = node("ConvTranspose", &["x", "w"], &["y"]);
    c.set_ints("output_shape", &[9]);
    c.set_ints("strides", &[2]);
    assert_eq!(
        one(13, "1,4,4", c, vec![weight("w", &[4, 2, 3])]),
        dims("1,2,9")
    );
    let mut c = node("ConvTranspose", &["x", "w"], &["y"]);
    c.set_string("auto_pad", "SAME_UPPER");
    c.set_ints("strides", &[2]);
    assert_eq!(
        one(13, "1,4,7", c, vec![weight("w", &[4, 2, 3])]),
        dims("1,2,14")
    );
    let bad = model(
        13,
        vec![input("x", "1,5,4")],
        vec![node("ConvTranspose", &["x", "w"], &["y"])],
        vec![weight("w", &[4, 2, 3])],
    );
    assert!(err_of(&bad).contains("channels"));
}

#[test]
fn pools_and_norms() {
    let mut p = node("AveragePool", &["x"], &["y"]);
    p.set_ints("kernel_shape", &[3]);
    p.set_string("auto_pad", "SAME_LOWER");
    p.set_ints("strides", &[2]);
    assert_eq!(one(13, "N,3,9", p, vec![]), dims("N,3,5"));
    assert_eq!(
        one(
            13,
            "N,3,9,7",
            node("GlobalAveragePool", &["x"], &["y"]),
            vec![]
        ),
        dims("N,3,1,1")
    );
    let bn = node("BatchNormalization", &["x", "s", "s", "s", "s"], &["y"]);
    assert_eq!(
        one(13, "N,3,4,4", bn.clone(), vec![weight("s", &[3])]),
        dims("N,3,4,4")
    );
    let bad = model(
        13,
        vec![input("x", "N,4,4,4")],
        vec![bn],
        vec![weight("s", &[3])],
    );
    assert!(err_of(&bad).contains("channels"));
    let ln = node("LayerNormalization", &["x", "g"], &["y", "mean", "inv"]);
    let r = infer(&model(
        17,
        vec![input("x", "N,5,16")],
        vec![ln],
        vec![weight("g", &[16])],
    ));
    assert_eq!(shape_of(&r, "y"), dims("N,5,16"));
    assert_eq!(shape_of(&r, "mean"), dims("N,5,1"));
}

#[test]
fn gemm_and_matmul_rules() {
    let mut g = node("Gemm", &["x", "w"], &["y"]);
    g.set_int("transA", 1);
    assert_eq!(one(13, "7,N", g, vec![weight("w", &[7, 3])]), dims("N,3"));
    let mm = |a: &str, b: &str| {
        let m = model(
            13,
            vec![input("a", a), input("b", b)],
            vec![node("MatMul", &["a", "b"], &["y"])],
            vec![],
        );
        shape_of(&infer(&m), "y")
    };
    assert_eq!(mm("2,1,4,5", "3,5,6"), dims("2,3,4,6"));
    assert_eq!(mm("5", "5,6"), dims("6"));
    assert_eq!(mm("N,4,5", "5"), dims("N,4"));
    assert_eq!(mm("5", "5"), dims(""));
    let bad = model(
        13,
        vec![input("a", "2,4,5"), input("b", "3,5,6")],
        vec![node("MatMul", &["a", "b"], &["y"])],
        vec![],
    );
    assert!(err_of(&bad).contains("broadcast"));
}

#[test]
fn broadcasting_and_types() {
    let m = model(
        13,
        vec![input("a", "N,1,4"), input("b", "3,1")],
        vec![
            node("Add", &["a", "b"], &["s"]),
            node("Greater", &["s", "b"], &["g"]),
            node("Where", &["g", "s", "b"], &["w"]),
            node("Cast", &["g"], &["c"]),
        ],
        vec![],
    );
    let mut m = m;
    m.graph.nodes[3].set_int("to", DType::F16.0 as i64);
    let r = infer(&m);
    assert_eq!(shape_of(&r, "s"), dims("N,3,4"));
    assert_eq!(r.dtype("g"), Some(DType::BOOL));
    assert_eq!(r.dtype("w"), Some(DType::F32));
    assert_eq!(r.dtype("c"), Some(DType::F16));
    let bad = model(
        13,
        vec![input("a", "2,4"), input("b", "3,4")],
        vec![node("Mul", &["a", "b"], &["y"])],
        vec![],
    );
    let e = err_of(&bad);
    assert!(
        e.contains("Mul_y") && e.contains("'a' [2, 4]") && e.contains("'b' [3, 4]"),
        "{e}"
    );
}

#[test]
fn quantize_dequantize_types() {
    let zp = Tensor::from_raw("zp", DType::I8, vec![], vec![0]).unwrap();
    let m = model(
        13,
        vec![input("x", "N,3")],
        vec![
            node("QuantizeLinear", &["x", "sc", "zp"], &["q"]),
            node("DequantizeLinear", &["q", "sc", "zp"], &["d"]),
            node("QuantizeLinear", &["x", "sc"], &["u"]),
        ],
        vec![weight("sc", &[]), zp],
    );
    let r = infer(&m);
    assert_eq!(
        (r.dtype("q"), r.dtype("d"), r.dtype("u")),
        (Some(DType::I8), Some(DType::F32), Some(DType::U8))
    );
    assert_eq!(shape_of(&r, "d"), dims("N,3"));
}

#[test]
fn split_forms() {
    let outs = ["a", "b", "c"];
    let run = |opset: i64, n: Node, inits: Vec<Tensor>| {
        let r = infer(&model(opset, vec![input("x", "N,10")], vec![n], inits));
        outs.iter().map(|o| shape_of(&r, o)).collect::<Vec<_>>()
    };
    let mut attr = node("Split", &["x"], &outs);
    attr.set_int("axis", 1);
    attr.set_ints("split", &[2, 3, 5]);
    assert_eq!(
        run(11, attr, vec![]),
        [dims("N,2"), dims("N,3"), dims("N,5")]
    );
    let mut inp = node("Split", &["x", "sp"], &outs);
    inp.set_int("axis", -1);
    assert_eq!(
        run(13, inp, vec![ints("sp", &[1, 1, 8])]),
        [dims("N,1"), dims("N,1"), dims("N,8")]
    );
    let mut num = node("Split", &["x"], &outs);
    num.set_int("axis", 1);
    num.set_int("num_outputs", 3);
    assert_eq!(
        run(18, num, vec![]),
        [dims("N,4"), dims("N,4"), dims("N,2")]
    );
    let mut bad = node("Split", &["x"], &["a", "b", "c"]);
    bad.set_int("axis", 1);
    assert!(err_of(&model(13, vec![input("x", "N,10")], vec![bad], vec![])).contains("evenly"));
}

#[test]
fn slice_squeeze_unsqueeze_forms() {
    let s = node("Slice", &["x", "st", "en", "ax", "sp"], &["y"]);
    let inits = vec![
        ints("st", &[-1, 1]),
        ints("en", &[i64::MIN, i64::MAX]),
        ints("ax", &[2, 1]),
        ints("sp", &[-2, 1]),
    ];
    assert_eq!(one(13, "N,6,7", s, inits), dims("N,5,4"));
    let mut old = node("Slice", &["x"], &["y"]);
    old.set_ints("starts", &[1]);
    old.set_ints("ends", &[100]);
    old.set_ints("axes", &[0]);
    assert_eq!(one(9, "N,6", old, vec![]), dims("?,6"));
    let mut sq = node("Squeeze", &["x"], &["y"]);
    sq.set_ints("axes", &[1, -1]);
    assert_eq!(one(11, "N,1,5,1", sq, vec![]), dims("N,5"));
    assert_eq!(
        one(
            13,
            "N,1,5,1",
            node("Squeeze", &["x", "a"], &["y"]),
            vec![ints("a", &[3])]
        ),
        dims("N,1,5")
    );
    assert!(err_of(&model(
        13,
        vec![input("x", "2,3")],
        vec![node("Squeeze", &["x", "a"], &["y"])],
        vec![ints("a", &[0])]
    ))
    .contains("not 1"));
    assert_eq!(
        one(
            13,
            "N,5",
            node("Unsqueeze", &["x", "a"], &["y"]),
            vec![ints("a", &[0, -1])]
        ),
        dims("1,N,5,1")
    );
    let mut un = node("Unsqueeze", &["x"], &["y"]);
    un.set_ints("axes", &[1]);
    assert_eq!(one(11, "N,5", un, vec![]), dims("N,1,5"));
}

#[test]
fn gather_concat_transpose_and_errors() {
    let mut g = node("Gather", &["x", "i"], &["y"]);
    g.set_int("axis", 1);
    assert_eq!(
        one(13, "N,10,4", g.clone(), vec![ints("i", &[1, 2, 3])]),
        dims("N,3,4")
    );
    assert!(err_of(&model(
        13,
        vec![input("x", "N,10,4")],
        vec![g],
        vec![ints("i", &[10])]
    ))
    .contains("out of range"));
    let mut t = node("Transpose", &["x"], &["y"]);
    t.set_ints("perm", &[0, 2, 1]);
    assert_eq!(one(13, "N,10,4", t, vec![]), dims("N,4,10"));
    let mut c = node("Concat", &["x", "x2"], &["y"]);
    c.set_int("axis", 1);
    let m = model(
        13,
        vec![input("x", "N,10,4"), input("x2", "N,3,4")],
        vec![c.clone()],
        vec![],
    );
    assert_eq!(shape_of(&infer(&m), "y"), dims("N,13,4"));
    let bad = model(
        13,
        vec![input("x", "N,10,4"), input("x2", "N,3,5")],
        vec![c],
        vec![],
    );
    assert!(err_of(&bad).contains("axis 2"));
    let mut f = node("Flatten", &["x"], &["y"]);
    f.set_int("axis", 0);
    assert_eq!(one(13, "2,3,4", f, vec![]), dims("1,24"));
    let mut d2s = node("DepthToSpace", &["x"], &["y"]);
    d2s.set_int("blocksize", 2);
    assert_eq!(one(13, "N,8,3,3", d2s, vec![]), dims("N,2,6,6"));
}
