//! Unit tests of the passes on tiny hand-built models: each checks the
//! structural invariant of its pass and that the model before and after
//! computes the same outputs on the same random inputs.

mod bn;
mod fold;
mod misc;
mod pipeline;

use std::collections::{HashMap, HashSet};

use candle_core::{DType as CDType, Device, Tensor as CTensor};

use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::{verify_model, DType, Graph, Model, Node, OpsetId, Tensor, ValueInfo};

/// Deterministic xorshift numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// A random float32 initializer; `lo..lo+1` shifted when `lo > 0` (variances).
pub fn init(rng: &mut Rng, name: &str, dims: &[i64], lo: f32) -> Tensor {
    let n = dims.iter().product::<i64>() as usize;
    let v: Vec<f32> = rng
        .vec(n)
        .into_iter()
        .map(|x| if lo > 0.0 { lo + (x + 1.0) / 2.0 } else { x })
        .collect();
    Tensor::from_f32(name, dims.to_vec(), &v).unwrap()
}

pub fn ints(name: &str, v: &[i64]) -> Tensor {
    Tensor::from_i64(name, vec![v.len() as i64], v).unwrap()
}

/// A model of `nodes` with float32 inputs, the named outputs and initializers.
pub fn model(
    nodes: Vec<Node>,
    inputs: &[(&str, &[i64])],
    outputs: &[&str],
    inits: Vec<Tensor>,
    opset: i64,
) -> Model {
    let graph = Graph {
        name: "t".into(),
        nodes,
        inputs: inputs
            .iter()
            .map(|(n, d)| ValueInfo::tensor(n, DType::F32, d))
            .collect(),
        outputs: outputs
            .iter()
            .map(|o| ValueInfo {
                name: o.to_string(),
                ..Default::default()
            })
            .collect(),
        initializers: inits.into_iter().map(|t| (t.name.clone(), t)).collect(),
        ..Default::default()
    };
    Model {
        ir_version: 8,
        opsets: vec![OpsetId {
            domain: String::new(),
            version: opset,
        }],
        graph,
        ..Default::default()
    }
}

pub fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
    Node::new(name, op, inputs, outputs)
}

/// Standard BN params `{p}.scale/bias/mean/var` for `c` channels.
pub fn bn_params(rng: &mut Rng, p: &str, c: i64) -> Vec<Tensor> {
    vec![
        init(rng, &format!("{p}.scale"), &[c], 0.0),
        init(rng, &format!("{p}.bias"), &[c], 0.0),
        init(rng, &format!("{p}.mean"), &[c], 0.0),
        init(rng, &format!("{p}.var"), &[c], 0.5),
    ]
}

pub fn bn(name: &str, x: &str, y: &str) -> Node {
    let p = |s: &str| format!("{name}.{s}");
    let (a, b, c, d) = (p("scale"), p("bias"), p("mean"), p("var"));
    node(name, "BatchNormalization", &[x, &a, &b, &c, &d], &[y])
}

pub fn count(m: &Model, op: &str) -> usize {
    m.graph.nodes.iter().filter(|n| n.op_type == op).count()
}

pub fn none() -> HashSet<String> {
    HashSet::new()
}

fn outputs(m: &Model, feeds: &HashMap<String, Value>) -> Vec<Vec<f64>> {
    let exec = Executor::new(m, ExecOptions::default()).unwrap();
    exec.run(feeds)
        .unwrap()
        .iter()
        .map(|v| {
            v.tensor
                .flatten_all()
                .unwrap()
                .to_dtype(CDType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect()
}

/// Verifies `after`, checks graph output names are unchanged, and that both
/// models agree on random inputs: max|diff| <= 1e-5 * max|output| per output.
/// Returns the worst relative difference.
#[track_caller]
pub fn assert_equivalent(before: &Model, after: &Model) -> f64 {
    verify_model(after).unwrap();
    let names = |m: &Model| {
        m.graph
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(before), names(after), "graph output names changed");
    let mut rng = Rng::new(7);
    let feeds: HashMap<String, Value> = before
        .graph
        .inputs
        .iter()
        .map(|i| {
            let shape = i.shape.as_ref().unwrap();
            let dims: Vec<usize> = shape
                .iter()
                .map(|d| d.known().unwrap_or(2) as usize)
                .collect();
            let n = dims.iter().product();
            let t = CTensor::from_vec(rng.vec(n), dims, &Device::Cpu).unwrap();
            (i.name.clone(), Value::new(t, DType::F32))
        })
        .collect();
    let (a, b) = (outputs(before, &feeds), outputs(after, &feeds));
    let mut worst = 0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len(), "output {i} size");
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        let rel = if scale > 0.0 { diff / scale } else { diff };
        assert!(
            rel <= 1e-5,
            "output {i}: max|diff| {diff:e} vs max|out| {scale:e}"
        );
        worst = worst.max(rel);
    }
    worst
}
