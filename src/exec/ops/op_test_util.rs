//! Test helpers for op unit tests: run one node through the executor on
//! given feeds, read results back, compare floats, and check gradients
//! against central finite differences in f64.

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor, Var};

use crate::exec::{ExecOptions, Executor, Result, Value};
use crate::graph::{DType, Graph, Model, Node, OpsetId, ValueInfo};

/// An f32 value.
pub fn f32v(dims: &[usize], data: &[f32]) -> Value {
    Value::new(
        Tensor::from_vec(data.to_vec(), dims, &Device::Cpu).unwrap(),
        DType::F32,
    )
}

/// An integer value of ONNX type `dtype` (stored as i64).
pub fn intv(dims: &[usize], data: &[i64], dtype: DType) -> Value {
    Value::new(
        Tensor::from_vec(data.to_vec(), dims, &Device::Cpu).unwrap(),
        dtype,
    )
}

/// An int64 value.
pub fn i64v(dims: &[usize], data: &[i64]) -> Value {
    intv(dims, data, DType::I64)
}

/// A 1-D int64 value.
pub fn ints(data: &[i64]) -> Value {
    i64v(&[data.len()], data)
}

fn model_of(node: Node, opset: i64, feeds: &[(&str, &Value)]) -> Model {
    let inputs = feeds
        .iter()
        .map(|(name, v)| {
            let dims: Vec<i64> = v.dims().iter().map(|&d| d as i64).collect();
            ValueInfo::tensor(name, v.dtype, &dims)
        })
        .collect();
    let outputs = node
        .outputs
        .iter()
        .filter(|o| !o.is_empty())
        .map(|o| ValueInfo {
            name: o.clone(),
            ..Default::default()
        })
        .collect();
    Model {
        ir_version: 8,
        opsets: vec![OpsetId {
            domain: "".into(),
            version: opset,
        }],
        graph: Graph {
            name: "g".into(),
            nodes: vec![node],
            inputs,
            outputs,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Runs `node` at `opset` on `feeds` (named after the node's inputs).
pub fn run_node(node: &Node, opset: i64, feeds: &[(&str, &Value)]) -> Result<Vec<Value>> {
    let model = model_of(node.clone(), opset, feeds);
    let exec = Executor::new(&model, ExecOptions::default())?;
    let map: HashMap<String, Value> = feeds
        .iter()
        .map(|(n, v)| (n.to_string(), (*v).clone()))
        .collect();
    exec.run(&map)
}

/// Like `run_node`, panicking on error, returning the first output.
pub fn run1(node: &Node, opset: i64, feeds: &[(&str, &Value)]) -> Value {
    match run_node(node, opset, feeds) {
        Ok(mut outs) => outs.remove(0),
        Err(e) => panic!("{} failed: {e}", node.op_type),
    }
}

/// A node with the given inputs and one output "y".
pub fn node(op: &str, inputs: &[&str]) -> Node {
    Node::new("n", op, inputs, &["y"])
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.tensor
        .flatten_all()
        .unwrap()
        .to_dtype(CDType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

pub fn i64s(v: &Value) -> Vec<i64> {
    v.tensor
        .flatten_all()
        .unwrap()
        .to_dtype(CDType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
}

/// Asserts element-wise |got - want| <= tol * (1 + |want|).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()) || g == w;
        assert!(
            ok,
            "element {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

/// Checks the gradient of sum(y * r) with respect to the float feed `wrt`
/// (other feeds fixed) against central finite differences, in f64.
#[track_caller]
pub fn grad_check(node: &Node, opset: i64, feeds: &[(&str, &Value)], wrt: &str) {
    let model = model_of(node.clone(), opset, feeds);
    let exec = Executor::new(
        &model,
        ExecOptions {
            device: Device::Cpu,
            float: CDType::F64,
            track_params: true,
            train: false,
            qat: false,
        },
    )
    .unwrap();
    let mut map: HashMap<String, Value> = feeds
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                Value::new(
                    v.tensor
                        .to_dtype(if v.is_float() {
                            CDType::F64
                        } else {
                            CDType::I64
                        })
                        .unwrap(),
                    v.dtype,
                ),
            )
        })
        .collect();
    let base = map[wrt]
        .tensor
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let shape = map[wrt].tensor.shape().clone();
    let var = Var::from_tensor(&map[wrt].tensor).unwrap();
    map.insert(
        wrt.to_string(),
        Value::new(var.as_tensor().clone(), DType::F64),
    );
    let y = exec.run(&map).unwrap().remove(0).tensor;
    let n: usize = y.elem_count();
    let r: Vec<f64> = (0..n).map(|i| 0.3 + ((i * 7) % 11) as f64 * 0.17).collect();
    let r = Tensor::from_vec(r, y.shape(), &Device::Cpu).unwrap();
    let loss = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap();
    let grads = loss(&y).backward().unwrap();
    let analytic = match grads.get(var.as_tensor()) {
        Some(g) => g.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        None => vec![0.0; base.len()],
    };
    let eps = 1e-6;
    for i in 0..base.len() {
        let eval = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            let mut m = map.clone();
            m.insert(
                wrt.to_string(),
                Value::new(
                    Tensor::from_vec(v, &shape, &Device::Cpu).unwrap(),
                    DType::F64,
                ),
            );
            let y = exec.run(&m).unwrap().remove(0).tensor;
            loss(&y).to_scalar::<f64>().unwrap()
        };
        let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let a = analytic[i];
        assert!(
            (a - numeric).abs() <= 1e-5 * (1.0 + a.abs().max(numeric.abs())),
            "{}: d/d{wrt}[{i}]: analytic {a}, numeric {numeric}",
            node.op_type
        );
    }
}
