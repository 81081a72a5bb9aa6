//! The graphs of quantization-aware training. `training_graph` turns a
//! fake-quant model (float weights behind QuantizeLinear -> DequantizeLinear,
//! int32 biases behind DequantizeLinear, activation Q/DQ pairs) into the graph
//! QAT trains: the same, but every int32 bias is a float initializer, so the
//! weights, biases, weight scales and activation scales are all float
//! initializers the trainer can learn (zero points stay fixed). `export`
//! turns the trained graph back into the two output forms: the fake-quant
//! model (weights rounded onto their learned grid, biases int32 again at
//! input scale x weight scale) and the deploy model (integer weights).

use serde_json::{json, Value as Json};

use super::qdq::QdqForm;
use crate::graph::LeBytes;
use crate::graph::{DType, GraphError, Model, Node, Tensor};

/// An int32 bias behind DequantizeLinear in the fake-quant model, turned
/// into the float initializer `value` for training.
#[derive(Debug, Clone)]
pub struct BiasSlot {
    /// The DequantizeLinear node (its output is the float bias's name).
    pub dq: Node,
    /// Its zero point (an initializer the training graph no longer reads).
    pub zero_point: Option<Tensor>,
}

/// The graph QAT trains, and the biases to quantize again on export.
pub struct QatGraph {
    pub model: Model,
    pub biases: Vec<BiasSlot>,
}

fn bad(name: &str, reason: impl Into<String>) -> GraphError {
    GraphError::BadTensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn floats(m: &Model, name: &str) -> Result<Vec<f32>, GraphError> {
    m.graph
        .initializers
        .get(name)
        .and_then(|t| t.to_f32_vec())
        .ok_or_else(|| bad(name, "expected a float initializer"))
}

fn ints(m: &Model, name: &str) -> Result<(Vec<i64>, DType), GraphError> {
    let t = m
        .graph
        .initializers
        .get(name)
        .ok_or_else(|| bad(name, "expected an integer initializer"))?;
    Ok((
        t.to_i64_vec()
            .ok_or_else(|| bad(name, "expected an integer initializer"))?,
        t.dtype,
    ))
}

/// Builds the QAT graph of a fake-quant model; errors when it has no Q/DQ pair.
pub fn training_graph(fake: &Model) -> Result<QatGraph, GraphError> {
    let mut m = fake.clone();
    if !m.graph.nodes.iter().any(|n| n.op_type == "QuantizeLinear") {
        return Err(bad(
            &m.graph.name,
            "has no QuantizeLinear node: qat trains a quantized model (put a quantize stage before it)",
        ));
    }
    let mut biases = Vec::new();
    let mut keep = Vec::with_capacity(m.graph.nodes.len());
    for node in std::mem::take(&mut m.graph.nodes) {
        let is_int32_bias = node.op_type == "DequantizeLinear"
            && m.graph
                .initializers
                .get(&node.inputs[0])
                .is_some_and(|t| t.dtype == DType::I32);
        if !is_int32_bias {
            keep.push(node);
            continue;
        }
        let (q, _) = ints(&m, &node.inputs[0])?;
        let scales = floats(&m, &node.inputs[1])?;
        let zero = match node.inputs.get(2).filter(|z| !z.is_empty()) {
            Some(z) => ints(&m, z)?.0,
            None => vec![0],
        };
        let at = |v: &[i64], i: usize| v[if v.len() > 1 { i } else { 0 }];
        let values: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let s = scales[if scales.len() > 1 { i } else { 0 }];
                (v - at(&zero, i)) as f32 * s
            })
            .collect();
        let out = node.outputs[0].clone();
        let dims = m.graph.initializers[&node.inputs[0]].dims.clone();
        m.graph
            .initializers
            .insert(out.clone(), Tensor::from_f32(&out, dims, &values)?);
        let zero_point = node
            .inputs
            .get(2)
            .and_then(|z| m.graph.initializers.get(z))
            .cloned();
        biases.push(BiasSlot {
            dq: node,
            zero_point,
        });
    }
    m.graph.nodes = keep;
    crate::passes::tidy(&mut m);
    Ok(QatGraph { model: m, biases })
}

/// Saturating round-half-even of `x / s + z` onto the integer range of `dtype`.
fn quantize(x: f32, s: f32, z: i64, dtype: DType) -> i64 {
    let (lo, hi) = match dtype {
        DType::U8 => (0, 255),
        _ => (-128, 127),
    };
    ((x / s).round_ties_even() as i64 + z).clamp(lo, hi)
}

/// A weight behind Q -> DQ: its float initializer and quantization.
struct FakeWeight {
    q: usize,
    float: String,
    scale: String,
    zero: String,
    axis: Option<usize>,
}

fn fake_weights(m: &Model) -> Vec<FakeWeight> {
    m.graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            n.op_type == "QuantizeLinear"
                && n.inputs.len() == 3
                && m.graph.initializers.contains_key(&n.inputs[0])
        })
        .map(|(i, n)| {
            let rank = m.graph.initializers[&n.inputs[0]].dims.len() as i64;
            let scalar = m
                .graph
                .initializers
                .get(&n.inputs[1])
                .is_some_and(|s| s.numel() == 1);
            let axis = (!scalar).then(|| n.int_or("axis", 1).rem_euclid(rank.max(1)) as usize);
            FakeWeight {
                q: i,
                float: n.inputs[0].clone(),
                scale: n.inputs[1].clone(),
                zero: n.inputs[2].clone(),
                axis,
            }
        })
        .collect()
}

/// A fake weight's integers on its learned grid, and that grid.
struct WeightInts {
    q: Vec<i64>,
    /// `(q - zero point) * scale` per element: the values the integers stand for.
    dequantized: Vec<f32>,
    dtype: DType,
}

fn weight_ints(m: &Model, w: &FakeWeight) -> Result<WeightInts, GraphError> {
    let values = floats(m, &w.float)?;
    let scales = floats(m, &w.scale)?;
    let (zeros, dtype) = ints(m, &w.zero)?;
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(bad(
            &w.scale,
            format!("scale {s} is not positive: lower the learning rate"),
        ));
    }
    let dims: Vec<usize> = m.graph.initializers[&w.float]
        .dims
        .iter()
        .map(|&d| d as usize)
        .collect();
    let inner: usize = w.axis.map_or(1, |a| dims[a + 1..].iter().product());
    let channels = w.axis.map_or(1, |a| dims[a]);
    let pick = |v: &[f32], c: usize| v[if v.len() > 1 { c } else { 0 }];
    let pick_i = |v: &[i64], c: usize| v[if v.len() > 1 { c } else { 0 }];
    let (mut q, mut dequantized) = (
        Vec::with_capacity(values.len()),
        Vec::with_capacity(values.len()),
    );
    for (i, &x) in values.iter().enumerate() {
        let c = if channels > 1 {
            (i / inner) % channels
        } else {
            0
        };
        let (s, z) = (pick(&scales, c), pick_i(&zeros, c));
        let v = quantize(x, s, z, dtype);
        q.push(v);
        dequantized.push((v - z) as f32 * s);
    }
    Ok(WeightInts {
        q,
        dequantized,
        dtype,
    })
}

/// The trained QAT graph in the fake-quant or deploy form.
pub fn export(trained: &Model, biases: &[BiasSlot], form: QdqForm) -> Result<Model, GraphError> {
    let mut m = trained.clone();
    let weights = fake_weights(&m);
    let mut drop_nodes = Vec::new();
    for w in &weights {
        let ints = weight_ints(&m, w)?;
        let dims = m.graph.initializers[&w.float].dims.clone();
        match form {
            QdqForm::FakeQuant => {
                let t = Tensor::from_f32(&w.float, dims, &ints.dequantized)?;
                m.graph.initializers.insert(w.float.clone(), t);
            }
            QdqForm::Deploy => {
                let name = m.graph.nodes[w.q].outputs[0].clone();
                let bytes = ints.q.iter().map(|&v| v as i8 as u8).collect();
                let t = Tensor::from_raw(&name, ints.dtype, dims, bytes)?;
                m.graph.initializers.insert(name, t);
                drop_nodes.push(w.q);
            }
        }
    }
    let mut nodes: Vec<Node> = m
        .graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop_nodes.contains(i))
        .map(|(_, n)| n.clone())
        .collect();
    for slot in biases {
        let out = &slot.dq.outputs[0];
        let consumer = nodes
            .iter()
            .find(|n| n.inputs.iter().any(|i| i == out))
            .ok_or_else(|| bad(out, "no node reads this bias"))?;
        let scale_of = |input: usize| -> Result<Vec<f32>, GraphError> {
            let dq = nodes
                .iter()
                .find(|n| n.op_type == "DequantizeLinear" && n.outputs[0] == consumer.inputs[input])
                .ok_or_else(|| bad(out, "the layer's input or weight is not dequantized"))?;
            floats(&m, &dq.inputs[1])
        };
        let (sx, sw) = (scale_of(0)?, scale_of(1)?);
        let b = floats(&m, out)?;
        let scales: Vec<f32> = (0..sw.len())
            .map(|c| (sx[0] * sw[c]).max(f32::MIN_POSITIVE))
            .collect();
        let values: Vec<i32> = b
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let s = scales[if scales.len() > 1 { i } else { 0 }];
                (v as f64 / s as f64)
                    .round_ties_even()
                    .clamp(i32::MIN as f64, i32::MAX as f64) as i32
            })
            .collect();
        let int_name = &slot.dq.inputs[0];
        let n = values.len() as i64;
        let bytes = values.iter().map(|v| v.to_le_bytes()).le_bytes();
        let old_dims = m
            .graph
            .initializers
            .get(int_name)
            .map_or(vec![n], |t| t.dims.clone());
        m.graph.initializers.insert(
            int_name.clone(),
            Tensor::from_raw(int_name, DType::I32, old_dims, bytes)?,
        );
        let scale_name = &slot.dq.inputs[1];
        let scale_dims = if scales.len() > 1 {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        m.graph.initializers.insert(
            scale_name.clone(),
            Tensor::from_f32(scale_name, scale_dims, &scales)?,
        );
        if let Some(z) = &slot.zero_point {
            m.graph.initializers.insert(z.name.clone(), z.clone());
        }
        m.graph.initializers.remove(out);
        nodes.push(slot.dq.clone());
    }
    m.graph.nodes = nodes;
    crate::graph::sort_topologically(&mut m.graph)?;
    crate::passes::tidy(&mut m);
    Ok(m)
}

/// `quant_record.json` of a QAT model (deploy form): the scale and zero point
/// of every dequantized tensor, by the name of the value it produces.
pub fn record(deploy: &Model, training: Json) -> Json {
    let mut tensors = serde_json::Map::new();
    for n in deploy
        .graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
    {
        let init = |i: usize| {
            n.inputs
                .get(i)
                .and_then(|x| deploy.graph.initializers.get(x))
        };
        let scale = init(1).and_then(|t| t.to_f32_vec());
        let zero = init(2).and_then(|t| t.to_i64_vec());
        let dtype = init(2).map(|t| t.dtype.to_string());
        let kind = if init(0).is_some() {
            "constant"
        } else {
            "activation"
        };
        tensors.insert(
            n.outputs[0].clone(),
            json!({ "kind": kind, "scale": scale, "zero_point": zero, "type": dtype, "axis": n.attr_int("axis") }),
        );
    }
    json!({
        "format": "amct-quant-record",
        "version": 1,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "source": "qat",
        "tensors": tensors,
        "training": training,
    })
}
