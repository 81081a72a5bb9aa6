//! Writes a quantization plan into the graph as QuantizeLinear /
//! DequantizeLinear pairs: the fake-quant form keeps float weights behind
//! Q -> DQ, the deploy form stores int8 (or uint8, zero point 128) weights
//! and int32 biases behind DQ (the QDQ form onnxruntime and TensorRT fuse
//! into integer kernels).

use std::collections::BTreeMap;

use super::plan::QuantPlan;
use super::qparams::{IntGrid, QParams};
use super::weights::QuantWeight;
use crate::graph::LeBytes;
use crate::graph::{DType, GraphError, Model, Node, Tensor};
use crate::passes::NameGen;

/// Which model to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdqForm {
    FakeQuant,
    Deploy,
}

/// The parameters of one quantized activation tensor.
#[derive(Debug, Clone, Copy)]
pub struct ActQuant {
    pub params: QParams,
    pub grid: IntGrid,
}

/// Builds the fake-quant or deploy model. `acts` holds the parameters of
/// each representative activation tensor, `weights` the quantized weight of
/// each layer of the plan (by position in `plan.layers`).
pub fn write_qdq(
    model: &Model,
    plan: &QuantPlan,
    acts: &BTreeMap<String, ActQuant>,
    weights: &[QuantWeight],
    form: QdqForm,
) -> Result<Model, GraphError> {
    let mut m = model.clone();
    let mut names = NameGen::new(&m.graph);
    let mut new_nodes: Vec<Node> = Vec::new();
    let act_of = |t: &str| -> Result<ActQuant, GraphError> {
        acts.get(plan.representative(t))
            .copied()
            .ok_or_else(|| GraphError::BadTensor {
                name: t.to_string(),
                reason: "has no calibrated range".into(),
            })
    };
    // Weights and biases first: they read the activation scales.
    for (layer, qw) in plan.layers.iter().zip(weights) {
        let node_inputs = m.graph.nodes[layer.node].inputs.clone();
        let w_name = &node_inputs[layer.weight];
        let axis = qw.axis.map(|a| a as i64);
        let w_scale = scale_tensor(&mut names, w_name, &qw.scales(), qw.axis.is_some())?;
        let w_zp = zero_point_tensor(
            &mut names,
            w_name,
            qw.params.len(),
            qw.axis.is_some(),
            qw.stored_zero_point(),
            qw.storage,
        )?;
        let dq_out = names.fresh(&format!("{w_name}_dequantized"));
        let source = match form {
            QdqForm::FakeQuant => {
                // QuantizeLinear reads the dequantized weights, so that it reproduces exactly
                // the integers chosen offline (AdaRound's rounding, a clip below the int8
                // range at fewer bits) rather than re-rounding the float weights to nearest.
                let rounded = names.fresh(&format!("{w_name}_rounded"));
                let dims = qw.dims.iter().map(|&d| d as i64).collect();
                m.graph.initializers.insert(
                    rounded.clone(),
                    Tensor::from_f32(&rounded, dims, &qw.dequantized())?,
                );
                let q_out = names.fresh(&format!("{w_name}_quantized"));
                new_nodes.push(qdq_node(
                    &mut names,
                    "QuantizeLinear",
                    [&rounded, &w_scale.name, &w_zp.name],
                    &q_out,
                    axis,
                ));
                q_out
            }
            QdqForm::Deploy => {
                let name = names.fresh(&format!("{w_name}_quantized"));
                let dims = qw.dims.iter().map(|&d| d as i64).collect();
                let values = qw.stored_values();
                m.graph
                    .initializers
                    .insert(name.clone(), int_tensor(&name, dims, &values, qw.storage)?);
                name
            }
        };
        new_nodes.push(qdq_node(
            &mut names,
            "DequantizeLinear",
            [&source, &w_scale.name, &w_zp.name],
            &dq_out,
            axis,
        ));
        m.graph.initializers.insert(w_scale.name.clone(), w_scale);
        m.graph.initializers.insert(w_zp.name.clone(), w_zp);
        m.graph.nodes[layer.node].inputs[layer.weight] = dq_out;
        if let Some(b) = layer.bias {
            let b_name = node_inputs[b].clone();
            let x = act_of(&layer.activation)?;
            let bias = quantize_bias(&m, &b_name, x.params.scale, qw)?;
            // The bias is int32 behind DequantizeLinear in both forms: that
            // is what lets onnxruntime fuse a layer with a float output.
            let new_input = {
                let q_name = names.fresh(&format!("{b_name}_quantized"));
                let n = bias.values.len() as i64;
                let bytes = bias.values.iter().map(|v| v.to_le_bytes()).le_bytes();
                m.graph.initializers.insert(
                    q_name.clone(),
                    Tensor::from_raw(&q_name, DType::I32, vec![n], bytes)?,
                );
                let per_channel = bias.scales.len() > 1;
                let s = scale_tensor(&mut names, &b_name, &bias.scales, per_channel)?;
                let zp_name = names.fresh(&format!("{b_name}_zero_point"));
                let zeros = vec![0u8; 4 * bias.scales.len()];
                let zp_dims = if per_channel {
                    vec![bias.scales.len() as i64]
                } else {
                    vec![]
                };
                let zp = Tensor::from_raw(&zp_name, DType::I32, zp_dims, zeros)?;
                let out = names.fresh(&format!("{b_name}_dequantized"));
                new_nodes.push(qdq_node(
                    &mut names,
                    "DequantizeLinear",
                    [&q_name, &s.name, &zp.name],
                    &out,
                    per_channel.then_some(0),
                ));
                m.graph.initializers.insert(s.name.clone(), s);
                m.graph.initializers.insert(zp.name.clone(), zp);
                out
            };
            m.graph.nodes[layer.node].inputs[b] = new_input;
        }
    }
    // Activations: the producer writes `T_float`, Q/DQ turn it back into `T`,
    // so consumers and graph outputs are untouched. Graph inputs keep their
    // name and their consumers are rewired instead.
    let graph_inputs: Vec<String> = m.graph.inputs.iter().map(|i| i.name.clone()).collect();
    for tensor in plan.activations.keys() {
        let a = act_of(tensor)?;
        let scale = scale_tensor(&mut names, tensor, &[a.params.scale], false)?;
        let zp_name = names.fresh(&format!("{tensor}_zero_point"));
        let zp = int_tensor(&zp_name, vec![], &[a.params.zero_point], a.grid)?;
        let q_out = names.fresh(&format!("{tensor}_quantized"));
        let (q_in, dq_out) = if graph_inputs.contains(tensor) {
            let dq_out = names.fresh(&format!("{tensor}_dequantized"));
            for node in m.graph.nodes.iter_mut() {
                for i in node.inputs.iter_mut().filter(|i| *i == tensor) {
                    *i = dq_out.clone();
                }
            }
            (tensor.clone(), dq_out)
        } else {
            let float = names.fresh(&format!("{tensor}_float"));
            let producer = m
                .graph
                .nodes
                .iter_mut()
                .find(|n| n.outputs.contains(tensor))
                .ok_or_else(|| GraphError::BadTensor {
                    name: tensor.clone(),
                    reason: "no node produces it".into(),
                })?;
            for o in producer.outputs.iter_mut().filter(|o| *o == tensor) {
                *o = float.clone();
            }
            (float, tensor.clone())
        };
        new_nodes.push(qdq_node(
            &mut names,
            "QuantizeLinear",
            [&q_in, &scale.name, &zp.name],
            &q_out,
            None,
        ));
        new_nodes.push(qdq_node(
            &mut names,
            "DequantizeLinear",
            [&q_out, &scale.name, &zp.name],
            &dq_out,
            None,
        ));
        m.graph.initializers.insert(scale.name.clone(), scale);
        m.graph.initializers.insert(zp.name.clone(), zp);
    }
    m.graph.nodes.extend(new_nodes);
    crate::graph::sort_topologically(&mut m.graph)?;
    crate::passes::tidy(&mut m);
    Ok(m)
}

/// A quantized bias: int32 values and the scale of each channel
/// (activation scale times weight scale).
struct QuantBias {
    values: Vec<i32>,
    scales: Vec<f32>,
}

fn quantize_bias(
    m: &Model,
    name: &str,
    x_scale: f32,
    w: &QuantWeight,
) -> Result<QuantBias, GraphError> {
    let b = m
        .graph
        .initializers
        .get(name)
        .and_then(|t| t.to_f32_vec())
        .ok_or_else(|| GraphError::BadTensor {
            name: name.to_string(),
            reason: "a bias must be a float initializer".into(),
        })?;
    let scales: Vec<f32> = w
        .scales()
        .iter()
        .map(|&s| (s * x_scale).max(f32::MIN_POSITIVE))
        .collect();
    let values = b
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = scales[if scales.len() > 1 { i } else { 0 }];
            (v as f64 / s as f64)
                .round_ties_even()
                .clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect();
    Ok(QuantBias { values, scales })
}

fn qdq_node(
    names: &mut NameGen,
    op: &str,
    inputs: [&str; 3],
    output: &str,
    axis: Option<i64>,
) -> Node {
    let name = names.fresh(&format!("{output}_{op}"));
    let mut node = Node::new(&name, op, &inputs, &[output]);
    if let Some(a) = axis {
        node.set_int("axis", a);
    }
    node
}

fn scale_tensor(
    names: &mut NameGen,
    base: &str,
    scales: &[f32],
    vector: bool,
) -> Result<Tensor, GraphError> {
    let name = names.fresh(&format!("{base}_scale"));
    let dims = if vector {
        vec![scales.len() as i64]
    } else {
        vec![]
    };
    Tensor::from_f32(name, dims, scales)
}

/// A weight's zero point, `value` for every channel, in the storage type.
fn zero_point_tensor(
    names: &mut NameGen,
    base: &str,
    n: usize,
    vector: bool,
    value: i32,
    storage: IntGrid,
) -> Result<Tensor, GraphError> {
    let name = names.fresh(&format!("{base}_zero_point"));
    let dims = if vector { vec![n as i64] } else { vec![] };
    int_tensor(
        &name,
        dims,
        &vec![value; if vector { n } else { 1 }],
        storage,
    )
}

/// An int8 or uint8 tensor (the grid's storage type) from values.
fn int_tensor(
    name: &str,
    dims: Vec<i64>,
    values: &[i32],
    grid: IntGrid,
) -> Result<Tensor, GraphError> {
    let (dtype, bytes) = if grid.signed {
        (DType::I8, values.iter().map(|&v| v as i8 as u8).collect())
    } else {
        (DType::U8, values.iter().map(|&v| v as u8).collect())
    };
    Tensor::from_raw(name, dtype, dims, bytes)
}
