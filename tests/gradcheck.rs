//! Gradient checks: for every differentiable op family, the executor's
//! backward pass (candle autograd plus amct's custom ops) against central
//! finite differences in f64, for graph inputs and for parameters.

mod common;

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor, Var};

use amct::exec::{ExecOptions, Executor, Value};
use amct::graph::{DType, Model, Node, Tensor as IrTensor};
use common::{random_init, single_op_model, Rng};

const EPS: f64 = 1e-6;
const TOL: f64 = 2e-6;
/// At most this many elements of each tensor are probed (spread evenly).
const PROBES: usize = 40;

/// Integer-list attributes to set on a node.
type Attrs = Vec<(&'static str, Vec<i64>)>;

fn loss(exec: &Executor, feeds: &HashMap<String, Value>, r: &Tensor) -> (Tensor, f64) {
    let outs = exec.run(feeds).expect("forward runs");
    let y = outs[0].tensor.to_dtype(CDType::F64).expect("f64");
    let l = (y * r).expect("same shape").sum_all().expect("sum");
    let v = l.to_scalar::<f64>().expect("scalar");
    (l, v)
}

/// Checks d(sum(y * r))/d(input or parameter) for every graph input and
/// every float initializer of `model`, whose first output must be float.
fn check(label: &str, model: &Model, gap: f64, seed: u64) {
    let exec = Executor::new(
        model,
        ExecOptions {
            device: Device::Cpu,
            float: CDType::F64,
            track_params: true,
            train: false,
            qat: false,
        },
    )
    .expect("executor");
    let mut rng = Rng::new(seed);
    let mut inputs: Vec<(String, Var)> = Vec::new();
    for vi in &model.graph.inputs {
        let shape: Vec<usize> = vi
            .known_shape()
            .expect("known")
            .iter()
            .map(|&d| d as usize)
            .collect();
        let n = shape.iter().product();
        let var = Var::from_vec(rng.away_from_zero(n, gap), shape, &Device::Cpu).expect("var");
        inputs.push((vi.name.clone(), var));
    }
    let feeds_of = |vals: &[(String, Var)]| -> HashMap<String, Value> {
        vals.iter()
            .map(|(n, v)| (n.clone(), Value::new(v.as_tensor().clone(), DType::F32)))
            .collect()
    };
    let feeds = feeds_of(&inputs);
    let y_shape = exec.run(&feeds).expect("forward")[0].tensor.dims().to_vec();
    let n_out: usize = y_shape.iter().product();
    let r = Tensor::from_vec(rng.away_from_zero(n_out, 0.1), y_shape, &Device::Cpu).expect("r");
    let (l, _) = loss(&exec, &feeds, &r);
    let grads = l.backward().expect("backward");

    let mut targets: Vec<(String, Var, bool)> = inputs
        .iter()
        .map(|(n, v)| (n.clone(), v.clone(), true))
        .collect();
    targets.extend(
        exec.params()
            .map(|(n, v)| (n.to_string(), v.clone(), false)),
    );
    assert!(!targets.is_empty(), "{label}: nothing to differentiate");
    for (name, var, is_input) in targets {
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; base.len()],
        };
        let step = (base.len() / PROBES).max(1);
        for i in (0..base.len()).step_by(step) {
            let eval = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                if is_input {
                    let mut f = feeds.clone();
                    f.insert(name.clone(), Value::new(t, DType::F32));
                    loss(&exec, &f, &r).1
                } else {
                    var.set(&t).unwrap();
                    let out = loss(&exec, &feeds, &r).1;
                    var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    out
                }
            };
            let numeric = (eval(EPS) - eval(-EPS)) / (2.0 * EPS);
            let a = analytic[i];
            let err = (a - numeric).abs();
            assert!(
                err <= TOL * (1.0 + a.abs().max(numeric.abs())),
                "{label}: d/d{name}[{i}] analytic {a} vs numeric {numeric}"
            );
        }
    }
}

fn unary(op: &str, shape: &[i64], gap: f64, opset: i64, configure: impl FnOnce(&mut Node)) {
    let model = single_op_model(op, &[("x", shape)], vec![], &["x"], 1, opset, configure);
    check(op, &model, gap, 1);
}

fn ints(name: &str, v: &[i64]) -> IrTensor {
    IrTensor::from_i64(name, vec![v.len() as i64], v).unwrap()
}

fn scalar(name: &str, v: f32) -> IrTensor {
    IrTensor::from_f32(name, vec![], &[v]).unwrap()
}

#[test]
fn conv_family() {
    let mut rng = Rng::new(7);
    let cases: Vec<(&str, i64, i64, i64, Attrs)> = vec![
        ("plain 3x3 p1", 4, 6, 1, vec![("pads", vec![1, 1, 1, 1])]),
        (
            "stride 2 asymmetric pads",
            4,
            6,
            1,
            vec![("strides", vec![2, 2]), ("pads", vec![0, 1, 1, 0])],
        ),
        ("grouped", 4, 6, 2, vec![("pads", vec![1, 1, 1, 1])]),
        (
            "depthwise dilated",
            4,
            4,
            4,
            vec![("dilations", vec![2, 2]), ("pads", vec![2, 2, 2, 2])],
        ),
        ("uneven strides", 4, 6, 1, vec![("strides", vec![1, 2])]),
    ];
    for (label, cin, cout, group, attrs) in cases {
        let w = random_init(&mut rng, "w", &[cout, cin / group, 3, 3], 0.0);
        let b = random_init(&mut rng, "b", &[cout], 0.0);
        let model = single_op_model(
            "Conv",
            &[("x", &[2, cin, 7, 6])],
            vec![w, b],
            &["x", "w", "b"],
            1,
            17,
            |n| {
                n.set_int("group", group);
                for (k, v) in &attrs {
                    n.set_ints(k, v);
                }
            },
        );
        check(label, &model, 0.0, 2);
    }
    // 1-D conv with SAME_UPPER auto padding.
    let w = random_init(&mut rng, "w", &[3, 2, 3], 0.0);
    let model = single_op_model(
        "Conv",
        &[("x", &[2, 2, 9])],
        vec![w],
        &["x", "w"],
        1,
        17,
        |n| {
            n.set_string("auto_pad", "SAME_UPPER");
            n.set_ints("strides", &[2]);
        },
    );
    check("conv1d same_upper", &model, 0.0, 3);
}

/// Depthwise convs (group == C_in), which run through amct's CPU kernel
/// (`exec::kernels::depthwise`) rather than candle's per-group conv2d.
#[test]
fn depthwise_conv_family() {
    let mut rng = Rng::new(17);
    // (label, C_in, channel multiplier, kernel, attributes)
    let cases: Vec<(&str, i64, i64, i64, Attrs)> = vec![
        ("dw 3x3 p1", 3, 1, 3, vec![("pads", vec![1, 1, 1, 1])]),
        (
            "dw 3x3 s2 same",
            3,
            1,
            3,
            vec![("strides", vec![2, 2]), ("pads", vec![0, 0, 1, 1])],
        ),
        (
            "dw 5x5 s2 asymmetric",
            2,
            1,
            5,
            vec![("strides", vec![2, 2]), ("pads", vec![1, 2, 2, 1])],
        ),
        (
            "dw multiplier 2 dilation 2",
            2,
            2,
            3,
            vec![("dilations", vec![2, 2]), ("pads", vec![2, 1, 0, 2])],
        ),
        (
            "dw uneven strides",
            3,
            1,
            3,
            vec![("strides", vec![1, 2]), ("pads", vec![1, 0, 1, 1])],
        ),
    ];
    for (label, cin, mult, k, attrs) in cases {
        let w = random_init(&mut rng, "w", &[cin * mult, 1, k, k], 0.0);
        let b = random_init(&mut rng, "b", &[cin * mult], 0.0);
        let model = single_op_model(
            "Conv",
            &[("x", &[2, cin, 9, 8])],
            vec![w, b],
            &["x", "w", "b"],
            1,
            17,
            |n| {
                n.set_int("group", cin);
                for (k, v) in &attrs {
                    n.set_ints(k, v);
                }
            },
        );
        check(label, &model, 0.0, 5);
    }
    // 1-D depthwise, multiplier 2, SAME_LOWER, stride 2.
    let w = random_init(&mut rng, "w", &[6, 1, 3], 0.0);
    let model = single_op_model(
        "Conv",
        &[("x", &[2, 3, 11])],
        vec![w],
        &["x", "w"],
        1,
        17,
        |n| {
            n.set_int("group", 3);
            n.set_string("auto_pad", "SAME_LOWER");
            n.set_ints("strides", &[2]);
        },
    );
    check("dw conv1d same_lower", &model, 0.0, 6);
}

#[test]
fn conv_transpose_family() {
    let mut rng = Rng::new(8);
    for (label, group, attrs) in [
        (
            "stride 2 pads",
            1,
            vec![("strides", vec![2, 2]), ("pads", vec![1, 0, 0, 1])],
        ),
        (
            "output_padding",
            1,
            vec![("strides", vec![2, 2]), ("output_padding", vec![1, 1])],
        ),
        ("grouped", 2, vec![("strides", vec![1, 1])]),
    ] {
        let w = random_init(&mut rng, "w", &[4, 6 / group, 3, 3], 0.0);
        let b = random_init(&mut rng, "b", &[6], 0.0);
        let model = single_op_model(
            "ConvTranspose",
            &[("x", &[2, 4, 4, 5])],
            vec![w, b],
            &["x", "w", "b"],
            1,
            17,
            |n| {
                n.set_int("group", group);
                for (k, v) in &attrs {
                    n.set_ints(k, v);
                }
            },
        );
        check(label, &model, 0.0, 4);
    }
}

#[test]
fn gemm_and_matmul() {
    let mut rng = Rng::new(9);
    let b = random_init(&mut rng, "b", &[5, 3], 0.0);
    let c = random_init(&mut rng, "c", &[5], 0.0);
    let model = single_op_model(
        "Gemm",
        &[("a", &[3, 4])],
        vec![b, c],
        &["a", "b", "c"],
        1,
        17,
        |n| {
            n.set_int("transA", 1);
            n.set_int("transB", 1);
            n.set_float("alpha", 0.7);
            n.set_float("beta", 1.3);
        },
    );
    // a is [K=3, M=4] with transA; b is [N=5, K=3] with transB.
    check("gemm transA transB", &model, 0.0, 5);
    let w = random_init(&mut rng, "w", &[4, 3], 0.0);
    let model = single_op_model(
        "MatMul",
        &[("a", &[2, 3, 5, 4])],
        vec![w],
        &["a", "w"],
        1,
        17,
        |_| {},
    );
    check("matmul batched x 2-D", &model, 0.0, 6);
    let model = single_op_model(
        "MatMul",
        &[("a", &[2, 1, 5, 4]), ("b", &[3, 4, 2])],
        vec![],
        &["a", "b"],
        1,
        17,
        |_| {},
    );
    check("matmul broadcast batch", &model, 0.0, 7);
    let model = single_op_model(
        "MatMul",
        &[("a", &[4]), ("b", &[2, 4, 3])],
        vec![],
        &["a", "b"],
        1,
        17,
        |_| {},
    );
    check("matmul 1-D lhs", &model, 0.0, 8);
}

#[test]
fn normalization() {
    let mut rng = Rng::new(10);
    let scale = random_init(&mut rng, "s", &[3], 0.0);
    let bias = random_init(&mut rng, "b", &[3], 0.0);
    let mean = random_init(&mut rng, "m", &[3], 0.0);
    let var = IrTensor::from_f32("v", vec![3], &[0.5, 1.5, 2.0]).unwrap();
    let model = single_op_model(
        "BatchNormalization",
        &[("x", &[2, 3, 4, 4])],
        vec![scale, bias, mean, var],
        &["x", "s", "b", "m", "v"],
        1,
        15,
        |_| {},
    );
    check("batchnorm", &model, 0.0, 9);
    // Batch statistics (training_mode = 1): the gradient flows through the mean and variance.
    let bn_params = |rng: &mut _| {
        vec![
            random_init(rng, "s", &[3], 0.0),
            random_init(rng, "b", &[3], 0.0),
            random_init(rng, "m", &[3], 0.0),
            IrTensor::from_f32("v", vec![3], &[0.5, 1.5, 2.0]).unwrap(),
        ]
    };
    let model = single_op_model(
        "BatchNormalization",
        &[("x", &[4, 3, 3, 3])],
        bn_params(&mut rng),
        &["x", "s", "b", "m", "v"],
        1,
        15,
        |n| n.set_int("training_mode", 1),
    );
    check("batchnorm training", &model, 0.0, 11);
    let scale = random_init(&mut rng, "s", &[6], 0.0);
    let bias = random_init(&mut rng, "b", &[6], 0.0);
    let model = single_op_model(
        "LayerNormalization",
        &[("x", &[2, 3, 6])],
        vec![scale, bias],
        &["x", "s", "b"],
        1,
        17,
        |_| {},
    );
    check("layernorm", &model, 0.0, 10);
    unary("LRN", &[2, 5, 3, 3], 0.0, 13, |n| {
        n.set_int("size", 3);
        n.set_float("alpha", 0.5);
        n.set_float("beta", 0.75);
        n.set_float("bias", 1.5);
    });
}

#[test]
fn activations() {
    let shape: &[i64] = &[2, 3, 4];
    for op in [
        "Relu",
        "Sigmoid",
        "Tanh",
        "Erf",
        "Gelu",
        "HardSwish",
        "Sqrt",
    ] {
        let gap = if op == "Sqrt" { 0.0 } else { 0.05 };
        if op == "Sqrt" {
            // Sqrt needs positive inputs: feed through Abs-free positive data via Pow test below.
            continue;
        }
        unary(op, shape, gap, 20, |_| {});
    }
    unary("LeakyRelu", shape, 0.05, 17, |n| n.set_float("alpha", 0.1));
    unary("HardSigmoid", shape, 0.05, 17, |n| {
        n.set_float("alpha", 0.3)
    });
    unary("Softmax", shape, 0.0, 17, |n| n.set_int("axis", 1));
    unary("Softmax", shape, 0.0, 11, |n| n.set_int("axis", 1));
    unary("LogSoftmax", shape, 0.0, 17, |_| {});
    unary("Gelu", shape, 0.0, 20, |n| {
        n.set_string("approximate", "tanh")
    });
    let mut rng = Rng::new(11);
    let slope = random_init(&mut rng, "slope", &[3, 1], 0.0);
    let model = single_op_model(
        "PRelu",
        &[("x", shape)],
        vec![slope],
        &["x", "slope"],
        1,
        17,
        |_| {},
    );
    check("prelu", &model, 0.05, 12);
    let model = single_op_model(
        "Clip",
        &[("x", shape)],
        vec![scalar("lo", -0.5), scalar("hi", 0.6)],
        &["x", "lo", "hi"],
        1,
        17,
        |_| {},
    );
    check("clip", &model, 0.0, 13);
}

#[test]
fn elementwise_broadcast() {
    let mut rng = Rng::new(12);
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"] {
        let b = random_init(&mut rng, "b", &[3, 1], 0.2);
        let model = single_op_model(
            op,
            &[("a", &[2, 3, 4])],
            vec![b],
            &["a", "b"],
            1,
            17,
            |_| {},
        );
        check(op, &model, 0.2, 14);
    }
    let e = IrTensor::from_i64("e", vec![], &[3]).unwrap();
    let model = single_op_model(
        "Pow",
        &[("x", &[2, 3])],
        vec![e],
        &["x", "e"],
        1,
        17,
        |_| {},
    );
    check("pow integer exponent", &model, 0.1, 15);
    // Sqrt of x*x + 1 keeps the input positive.
    let mut m = single_op_model("Mul", &[("x", &[2, 3])], vec![], &["x", "x"], 1, 17, |n| {
        n.outputs = vec!["sq".into()]
    });
    m.graph
        .initializers
        .insert("one".into(), scalar("one", 1.0));
    m.graph
        .nodes
        .push(Node::new("add", "Add", &["sq", "one"], &["pos"]));
    m.graph
        .nodes
        .push(Node::new("sqrt", "Sqrt", &["pos"], &["y0"]));
    check("sqrt", &m, 0.0, 16);
}

#[test]
fn pooling() {
    let pools: Vec<(&str, &str, Attrs, i64)> = vec![
        (
            "maxpool 3x3/s2/p1",
            "MaxPool",
            vec![
                ("kernel_shape", vec![3, 3]),
                ("strides", vec![2, 2]),
                ("pads", vec![1, 1, 1, 1]),
            ],
            0,
        ),
        (
            "maxpool ceil dilated",
            "MaxPool",
            vec![
                ("kernel_shape", vec![2, 2]),
                ("strides", vec![2, 2]),
                ("dilations", vec![2, 1]),
            ],
            1,
        ),
        (
            "avgpool padded exclude",
            "AveragePool",
            vec![
                ("kernel_shape", vec![3, 3]),
                ("strides", vec![2, 2]),
                ("pads", vec![1, 1, 1, 1]),
            ],
            0,
        ),
        (
            "avgpool padded include",
            "AveragePool",
            vec![
                ("kernel_shape", vec![3, 3]),
                ("strides", vec![1, 2]),
                ("pads", vec![1, 0, 1, 1]),
            ],
            2,
        ),
    ];
    for (label, op, attrs, mode) in pools {
        let model = single_op_model(op, &[("x", &[2, 3, 7, 8])], vec![], &["x"], 1, 19, |n| {
            for (k, v) in &attrs {
                n.set_ints(k, v);
            }
            if mode == 1 {
                n.set_int("ceil_mode", 1);
            }
            if mode == 2 {
                n.set_int("count_include_pad", 1);
            }
        });
        check(label, &model, 0.0, 17);
    }
    unary("GlobalAveragePool", &[2, 3, 4, 5], 0.0, 17, |_| {});
    unary("GlobalMaxPool", &[2, 3, 4, 5], 0.0, 17, |_| {});
}

#[test]
fn shape_ops() {
    unary("Flatten", &[2, 3, 4], 0.0, 17, |n| n.set_int("axis", 2));
    unary("Transpose", &[2, 3, 4], 0.0, 17, |n| {
        n.set_ints("perm", &[2, 0, 1])
    });
    let m = single_op_model(
        "Reshape",
        &[("x", &[2, 3, 4])],
        vec![ints("s", &[0, -1, 2])],
        &["x", "s"],
        1,
        17,
        |_| {},
    );
    check("reshape", &m, 0.0, 18);
    let m = single_op_model(
        "Concat",
        &[("a", &[2, 3]), ("b", &[2, 2])],
        vec![],
        &["a", "b"],
        1,
        17,
        |n| n.set_int("axis", 1),
    );
    check("concat", &m, 0.0, 19);
    let m = single_op_model(
        "Split",
        &[("x", &[2, 6])],
        vec![ints("s", &[2, 4])],
        &["x", "s"],
        2,
        17,
        |n| n.set_int("axis", 1),
    );
    check("split", &m, 0.0, 20);
    let m = single_op_model(
        "Unsqueeze",
        &[("x", &[2, 3])],
        vec![ints("a", &[0, 3])],
        &["x", "a"],
        1,
        17,
        |_| {},
    );
    check("unsqueeze", &m, 0.0, 21);
    let m = single_op_model(
        "Squeeze",
        &[("x", &[2, 1, 3])],
        vec![ints("a", &[1])],
        &["x", "a"],
        1,
        17,
        |_| {},
    );
    check("squeeze", &m, 0.0, 22);
    let m = single_op_model(
        "Expand",
        &[("x", &[3, 1])],
        vec![ints("s", &[2, 3, 4])],
        &["x", "s"],
        1,
        17,
        |_| {},
    );
    check("expand", &m, 0.0, 23);
    let cond = IrTensor::from_raw("c", DType::BOOL, vec![3, 1], vec![1, 0, 1]).unwrap();
    let m = single_op_model(
        "Where",
        &[("a", &[3, 4]), ("b", &[4])],
        vec![cond],
        &["c", "a", "b"],
        1,
        17,
        |_| {},
    );
    check("where", &m, 0.0, 24);
}

#[test]
fn pow_tensor_exponent() {
    // Positive bases: d/dx and d/de are both defined.
    let mut m = single_op_model("Mul", &[("x", &[2, 3])], vec![], &["x", "x"], 1, 17, |n| {
        n.outputs = vec!["sq".into()]
    });
    m.graph.initializers.insert(
        "e".into(),
        IrTensor::from_f32("e", vec![3], &[0.5, 1.5, 2.5]).unwrap(),
    );
    m.graph
        .nodes
        .push(Node::new("pow", "Pow", &["sq", "e"], &["y0"]));
    check("pow tensor exponent", &m, 0.2, 25);
}
