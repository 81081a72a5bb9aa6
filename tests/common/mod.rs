//! Helpers shared by the integration tests: tiny single-op models,
//! deterministic random data, and the fixtures directory.
#![allow(dead_code)]

use std::path::PathBuf;

use amct::graph::{DType, Graph, Model, Node, OpsetId, Tensor, ValueInfo};

/// A deterministic xorshift generator (tests must not depend on a crate RNG).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    /// Values in [-1, 1] kept at least `gap` away from zero (kinks of relu-like ops).
    pub fn away_from_zero(&mut self, n: usize, gap: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let u = self.uniform();
                u.signum() * (u.abs() * (1.0 - gap) + gap)
            })
            .collect()
    }
}

/// Builds a model with one node. `inputs` are graph inputs (float32),
/// `inits` initializers; the node reads inputs then initializers in order
/// given by `node_inputs`.
pub fn single_op_model(
    op: &str,
    inputs: &[(&str, &[i64])],
    inits: Vec<Tensor>,
    node_inputs: &[&str],
    n_outputs: usize,
    opset: i64,
    configure: impl FnOnce(&mut Node),
) -> Model {
    let outputs: Vec<String> = (0..n_outputs).map(|i| format!("y{i}")).collect();
    let out_refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut node = Node::new("op", op, node_inputs, &out_refs);
    configure(&mut node);
    let mut graph = Graph {
        name: "test".into(),
        nodes: vec![node],
        inputs: inputs
            .iter()
            .map(|(n, s)| ValueInfo::tensor(n, DType::F32, s))
            .collect(),
        outputs: outputs
            .iter()
            .map(|n| ValueInfo {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for t in inits {
        graph.initializers.insert(t.name.clone(), t);
    }
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

/// A float32 initializer with random values.
pub fn random_init(rng: &mut Rng, name: &str, dims: &[i64], gap: f64) -> Tensor {
    let n: i64 = dims.iter().product();
    let v: Vec<f32> = rng
        .away_from_zero(n as usize, gap)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::from_f32(name, dims.to_vec(), &v).expect("valid test tensor")
}

/// The generated fixtures directory (made by scripts/gen_fixtures.py).
/// Fails loudly when missing: run scripts/test.sh.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var("AMCT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen"));
    assert!(
        dir.join(".stamp").exists() || dir.is_dir(),
        "fixtures missing at {}: run scripts/test.sh (it generates them)",
        dir.display()
    );
    dir
}
