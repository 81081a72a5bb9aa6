//! `upgrade_opset`: moves a model of ONNX opset 7 to 12 to opset 13 (what
//! per-channel QuantizeLinear/DequantizeLinear need), rewriting the ops
//! whose signature or meaning changed on the way: attributes that became
//! inputs (Unsqueeze, Squeeze, ReduceSum, Split axes; Dropout ratio; Clip
//! min/max; Pad pads/value; Slice starts/ends/axes; TopK k) and the
//! softmax family, whose pre-13 form flattens to 2-D at `axis`. Ops whose
//! change has no rewrite here (Upsample, pre-11 Resize, Scan...) are
//! refused by name. IR is raised to 7 and weights listed as graph inputs
//! (IR 3 style) become plain initializers.

use super::util::NameGen;
use super::PassError;
use crate::graph::{verify_model, Model, Node, Tensor};

const PASS: &str = "upgrade_opset";
pub const TARGET_OPSET: i64 = 13;

/// Upgrades `model` in place to opset 13; returns how many nodes changed.
pub fn upgrade_opset(model: &mut Model) -> Result<usize, PassError> {
    let from = model.onnx_opset();
    if from >= TARGET_OPSET {
        return Ok(0);
    }
    if from < 7 {
        return Err(node_error(
            "model",
            format!("opset {from} is too old to upgrade (7 or newer needed)"),
        ));
    }
    let mut names = NameGen::new(&model.graph);
    let mut new_nodes = Vec::new();
    let mut new_inits = Vec::new();
    let mut changed = 0;
    for node in model.graph.nodes.iter_mut() {
        if !node.is_onnx_domain() {
            continue;
        }
        let op = node.op_type.clone();
        let refused = match op.as_str() {
            "Upsample" | "Scan" | "If" | "Loop" => true,
            "Resize" => from < 11,
            _ => false,
        };
        if refused {
            return Err(node_error(
                &node.label(),
                format!("{op} changed before opset 13 and cannot be upgraded here"),
            ));
        }
        let mut ints_to_input =
            |node: &mut Node, attr: &str, position: usize| -> Result<bool, PassError> {
                let Some(values) = node.attr_ints(attr).map(<[i64]>::to_vec) else {
                    return Ok(false);
                };
                let name = names.fresh(&format!("{}_{attr}", node.name));
                new_inits.push(int_tensor(&name, &values)?);
                remove_attr(node, attr);
                node.inputs
                    .resize(position.max(node.inputs.len()), String::new());
                node.inputs.insert(position, name);
                trim_inputs(node);
                Ok(true)
            };
        let did = match op.as_str() {
            "Unsqueeze" | "Squeeze" | "ReduceSum" => ints_to_input(node, "axes", 1)?,
            "Split" => ints_to_input(node, "split", 1)?,
            "Slice" if from < 10 => {
                let starts = ints_to_input(node, "starts", 1)?;
                let ends = ints_to_input(node, "ends", 2)?;
                let axes = ints_to_input(node, "axes", 3)?;
                starts || ends || axes
            }
            "Pad" if from < 11 => {
                let value = node.float_or("value", 0.0);
                let _ = ints_to_input(node, "pads", 1)?;
                remove_attr(node, "value");
                if value != 0.0 {
                    let name = names.fresh(&format!("{}_value", node.name));
                    new_inits.push(float_tensor(&name, value)?);
                    node.inputs.push(name);
                }
                true
            }
            "Clip" if from < 11 => {
                let bounds = [
                    node.attr_float("min").map(|v| ("min", v)),
                    node.attr_float("max").map(|v| ("max", v)),
                ];
                remove_attr(node, "min");
                remove_attr(node, "max");
                node.inputs.truncate(1);
                for (i, b) in bounds.iter().enumerate() {
                    match b {
                        Some((which, v)) => {
                            let name = names.fresh(&format!("{}_{which}", node.name));
                            new_inits.push(float_tensor(&name, *v)?);
                            node.inputs.push(name);
                        }
                        None if i == 0 && bounds[1].is_some() => node.inputs.push(String::new()),
                        None => {}
                    }
                }
                true
            }
            "Dropout" if from < 12 => {
                let ratio = node.attr_float("ratio");
                remove_attr(node, "ratio");
                remove_attr(node, "is_test");
                if let Some(r) = ratio {
                    let name = names.fresh(&format!("{}_ratio", node.name));
                    new_inits.push(float_tensor(&name, r)?);
                    node.inputs.truncate(1);
                    node.inputs.push(name);
                }
                true
            }
            "TopK" if from < 10 => match node.attr_int("k") {
                Some(k) => {
                    let name = names.fresh(&format!("{}_k", node.name));
                    new_inits.push(int_tensor(&name, &[k])?);
                    remove_attr(node, "k");
                    node.inputs.truncate(1);
                    node.inputs.push(name);
                    true
                }
                None => false,
            },
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                // Pre-13: flatten to 2-D at `axis` (default 1), normalise rows.
                let axis = node.int_or("axis", 1);
                let input = node.inputs[0].clone();
                let output = node.outputs[0].clone();
                let flat = names.fresh(&format!("{input}_2d"));
                let shape = names.fresh(&format!("{input}_shape"));
                let out2d = names.fresh(&format!("{output}_2d"));
                let mut flatten = Node::new(
                    &names.fresh(&format!("{}_flatten", node.name)),
                    "Flatten",
                    &[&input],
                    &[&flat],
                );
                flatten.set_int("axis", axis);
                let shape_node = Node::new(
                    &names.fresh(&format!("{}_shape", node.name)),
                    "Shape",
                    &[&input],
                    &[&shape],
                );
                let reshape = Node::new(
                    &names.fresh(&format!("{}_reshape", node.name)),
                    "Reshape",
                    &[&out2d, &shape],
                    &[&output],
                );
                node.inputs[0] = flat;
                node.outputs[0] = out2d;
                node.set_int("axis", -1);
                new_nodes.extend([flatten, shape_node, reshape]);
                true
            }
            _ => false,
        };
        changed += usize::from(did);
    }
    let g = &mut model.graph;
    for t in new_inits {
        g.initializers.insert(t.name.clone(), t);
    }
    g.nodes.extend(new_nodes);
    g.overridable_initializers.clear();
    crate::graph::sort_topologically(g)
        .map_err(|source| PassError::Graph { pass: PASS, source })?;
    for o in model
        .opsets
        .iter_mut()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        o.version = TARGET_OPSET;
    }
    model.ir_version = model.ir_version.max(7);
    verify_model(model).map_err(|source| PassError::Verify { pass: PASS, source })?;
    Ok(changed)
}

fn node_error(node: &str, reason: String) -> PassError {
    PassError::Node {
        pass: PASS,
        node: node.to_string(),
        reason,
    }
}

fn int_tensor(name: &str, values: &[i64]) -> Result<Tensor, PassError> {
    Tensor::from_i64(name, vec![values.len() as i64], values)
        .map_err(|source| PassError::Graph { pass: PASS, source })
}

fn float_tensor(name: &str, value: f32) -> Result<Tensor, PassError> {
    Tensor::from_f32(name, vec![], &[value])
        .map_err(|source| PassError::Graph { pass: PASS, source })
}

fn remove_attr(node: &mut Node, name: &str) {
    node.attributes.retain(|a| a.name.as_deref() != Some(name));
}

/// Drops trailing empty inputs.
fn trim_inputs(node: &mut Node) {
    while node.inputs.last().is_some_and(String::is_empty) {
        node.inputs.pop();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::exec::{ExecOptions, Executor, Value};
    use crate::graph::{DType, OpsetId, ValueInfo};

    /// Opset 9: Unsqueeze(axes attr) -> Softmax(axis 1 of a 4-D tensor:
    /// flattens) -> Clip(min/max attrs) -> Dropout(ratio attr).
    fn model() -> Model {
        let mut m = Model {
            ir_version: 3,
            opsets: vec![OpsetId {
                domain: String::new(),
                version: 9,
            }],
            ..Model::default()
        };
        let mut unsq = Node::new("u", "Unsqueeze", &["x"], &["a"]);
        unsq.set_ints("axes", &[1]);
        let mut soft = Node::new("s", "Softmax", &["a"], &["b"]);
        soft.set_int("axis", 1);
        let mut clip = Node::new("c", "Clip", &["b"], &["c"]);
        clip.set_float("min", 0.01);
        clip.set_float("max", 0.2);
        let mut drop = Node::new("d", "Dropout", &["c"], &["y"]);
        drop.set_float("ratio", 0.3);
        m.graph.nodes = vec![unsq, soft, clip, drop];
        m.graph.inputs = vec![ValueInfo::tensor("x", DType::F32, &[2, 3, 4])];
        m.graph.outputs = vec![ValueInfo::tensor("y", DType::F32, &[2, 1, 3, 4])];
        m
    }

    fn run(m: &Model) -> Vec<f32> {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let x = candle_core::Tensor::from_vec(x, (2, 3, 4), &candle_core::Device::Cpu).unwrap();
        let exec = Executor::new(m, ExecOptions::default()).unwrap();
        let out = exec
            .run(&HashMap::from([(
                "x".to_string(),
                Value::new(x, DType::F32),
            )]))
            .unwrap();
        out[0].tensor.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn upgrade_keeps_outputs() {
        let before = model();
        let mut after = before.clone();
        assert_eq!(upgrade_opset(&mut after).unwrap(), 4);
        assert_eq!(after.onnx_opset(), 13);
        assert!(after.ir_version >= 7);
        let u = after.graph.nodes.iter().find(|n| n.name == "u").unwrap();
        assert_eq!(u.inputs.len(), 2, "axes became an input");
        assert!(after.graph.nodes.iter().any(|n| n.op_type == "Flatten"));
        let (a, b) = (run(&before), run(&after));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn upsample_is_refused_by_name() {
        let mut m = model();
        m.graph.nodes[0] = Node::new("up", "Upsample", &["x"], &["a"]);
        let e = upgrade_opset(&mut m).unwrap_err().to_string();
        assert!(e.contains("Upsample") && e.contains("up"), "{e}");
    }
}
