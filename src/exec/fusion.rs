//! Conv + activation fusion for the executor: a `Conv` whose only reader is a `Relu` or a
//! `Clip` with constant bounds runs as one kernel call (`kernels::conv2d` applies the
//! activation while the output is still in cache), and the activation node is skipped. In
//! forward-only executors a `Conv` whose only reader is an `Add` (a residual join) whose
//! other operand is already computed absorbs that Add and the activation after it
//! (`kernels::conv2d_add`: the residual is added to each output tile as it is finished), and
//! an `Add` that no Conv absorbed fuses with its Relu (`kernels::add_act`).
//!
//! The plan is made once per executor; a run drops a fusion whose intermediate (the Conv's
//! own output) the caller wants to see or keep, so observers still get every value they ask
//! for. Clip bounds are read from constant initializers, so Clip fuses only in inference
//! executors (in training, float initializers are trainable parameters).

use std::collections::HashMap;

use crate::exec::kernels::conv2d::FusedActivation;
use crate::graph::{Model, Node};

/// One Conv (or Add) node fused with its activation, and a Conv with a residual Add.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fusion {
    /// Index (in run order) of the last node absorbed (the activation, or the Add when no
    /// activation follows it): the fused call writes its outputs.
    pub consumer: usize,
    /// The residual Add absorbed by a Conv: its index and which of its inputs is the
    /// residual (the operand that is not the Conv's output).
    pub residual: Option<(usize, usize)>,
    pub activation: FusedActivation,
}

/// For each node in run order, the fusion that starts at it (Conv and Add nodes only).
pub(super) fn plan(model: &Model, nodes: &[Node], trainable: bool) -> Vec<Option<Fusion>> {
    let graph = &model.graph;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for input in node.inputs.iter().filter(|s| !s.is_empty()) {
            readers.entry(input).or_default().push(i);
        }
    }
    let is_output = |name: &str| graph.outputs.iter().any(|o| o.name == name);
    let constant = |name: Option<&String>| -> Option<Option<f64>> {
        match name.map(String::as_str) {
            None | Some("") => Some(None),
            Some(n) => {
                let v = graph.initializers.get(n)?.to_f64_vec()?;
                (v.len() == 1).then(|| Some(v[0]))
            }
        }
    };
    let opset = model.onnx_opset();
    let activation_of = |act: &Node| -> Option<FusedActivation> {
        Some(match act.op_type.as_str() {
            "Relu" => FusedActivation::Relu,
            "Clip" if opset < 11 => FusedActivation::Clip(
                act.attr_float("min").map_or(f64::NEG_INFINITY, f64::from),
                act.attr_float("max").map_or(f64::INFINITY, f64::from),
            ),
            "Clip" if !trainable => {
                let lo = constant(act.inputs.get(1))?.unwrap_or(f64::NEG_INFINITY);
                let hi = constant(act.inputs.get(2))?.unwrap_or(f64::INFINITY);
                FusedActivation::Clip(lo, hi)
            }
            _ => return None,
        })
    };
    // The only reader of `out` (a value no graph output names), when it reads it first.
    let sole_reader = |out: &str| -> Option<usize> {
        let [reader] = readers.get(out)?.as_slice() else {
            return None;
        };
        let first = nodes[*reader].inputs.first().map(String::as_str) == Some(out);
        (!is_output(out) && first).then_some(*reader)
    };
    // Where each value is produced (graph inputs: before every node).
    let mut produced_at: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for o in &node.outputs {
            produced_at.insert(o, i);
        }
    }
    let is_input = |name: &str| graph.inputs.iter().any(|i| i.name == name);
    // A residual Add reading Conv `i`'s output `out`: the Add's index and the slot of its
    // other operand, which must be computed before the Conv runs.
    let residual_add = |i: usize, out: &str| -> Option<(usize, usize)> {
        let [add] = readers.get(out)?.as_slice() else {
            return None;
        };
        let node = &nodes[*add];
        if trainable || node.op_type != "Add" || node.inputs.len() != 2 || is_output(out) {
            return None;
        }
        let slot = node.inputs.iter().position(|n| n != out)?;
        let other = node.inputs[slot].as_str();
        let ready = produced_at.get(other).is_some_and(|&p| p < i) || is_input(other);
        ready.then_some((*add, slot))
    };
    nodes
        .iter()
        .enumerate()
        .map(|(i, producer)| {
            let fusable = match producer.op_type.as_str() {
                "Conv" => true,
                // Add has no fused backward: forward-only executors only.
                "Add" => !trainable,
                _ => false,
            };
            if !fusable || producer.outputs.len() != 1 {
                return None;
            }
            let out = producer.outputs[0].as_str();
            if producer.op_type == "Conv" {
                if let Some((add, slot)) = residual_add(i, out) {
                    let sum = nodes[add].outputs.first()?.as_str();
                    let act = sole_reader(sum).and_then(|r| Some((r, activation_of(&nodes[r])?)));
                    let (consumer, activation) = act.unwrap_or((add, FusedActivation::None));
                    return Some(Fusion {
                        consumer,
                        residual: Some((add, slot)),
                        activation,
                    });
                }
            }
            let consumer = sole_reader(out)?;
            Some(Fusion {
                consumer,
                residual: None,
                activation: activation_of(&nodes[consumer])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{ExecOptions, Executor, Value};
    use crate::graph::{topological_order, DType};
    use crate::passes::tests as t;
    use candle_core::{Device, Tensor};
    use std::collections::{BTreeMap, HashMap as Map};

    /// `x -> Conv -> act -> act_out`, plus `Conv -> Add -> sum` when `second_reader`.
    fn model(act: &str, second_reader: bool) -> Model {
        let mut rng = t::Rng::new(3);
        let mut inits = vec![t::init(&mut rng, "w", &[4, 3, 3, 3], 0.0)];
        let mut nodes = vec![t::node("conv", "Conv", &["x", "w"], &["c"])];
        if act == "Clip" {
            inits.push(crate::graph::Tensor::from_f32("lo", vec![], &[0.0]).unwrap());
            inits.push(crate::graph::Tensor::from_f32("hi", vec![], &[0.5]).unwrap());
            nodes.push(t::node("act", act, &["c", "lo", "hi"], &["act_out"]));
        } else {
            nodes.push(t::node("act", act, &["c"], &["act_out"]));
        }
        let mut outputs = vec!["act_out"];
        if second_reader {
            nodes.push(t::node("add", "Add", &["c", "c"], &["sum"]));
            outputs.push("sum");
        }
        t::model(nodes, &[("x", &[2, 3, 8, 8])], &outputs, inits, 13)
    }

    fn fusions(m: &Model, trainable: bool) -> Vec<Option<Fusion>> {
        let order = topological_order(&m.graph).unwrap();
        let nodes: Vec<Node> = order.iter().map(|&i| m.graph.nodes[i].clone()).collect();
        plan(m, &nodes, trainable)
    }

    #[test]
    fn fuses_relu_and_constant_clip_only_when_alone() {
        let relu = fusions(&model("Relu", false), true);
        assert_eq!(relu[0].map(|f| f.activation), Some(FusedActivation::Relu));
        let clip = fusions(&model("Clip", false), false);
        assert_eq!(
            clip[0].map(|f| f.activation),
            Some(FusedActivation::Clip(0.0, 0.5))
        );
        assert_eq!(fusions(&model("Clip", false), true)[0], None); // bounds are trainable
        assert_eq!(fusions(&model("Relu", true), false)[0], None); // two readers
        assert_eq!(fusions(&model("Sigmoid", false), false)[0], None);
    }

    #[test]
    fn residual_add_fuses_with_relu_in_inference_only() {
        let mut rng = t::Rng::new(5);
        let inits = vec![t::init(&mut rng, "w", &[3, 3, 1, 1], 0.0)];
        let nodes = vec![
            t::node("conv", "Conv", &["x", "w"], &["c"]),
            t::node("sigmoid", "Sigmoid", &["c"], &["s"]),
            t::node("add", "Add", &["s", "x"], &["sum"]),
            t::node("relu", "Relu", &["sum"], &["y"]),
        ];
        let m = t::model(nodes, &[("x", &[2, 3, 6, 6])], &["y"], inits, 13);
        let add = |trainable| fusions(&m, trainable)[2].map(|f| f.activation);
        assert_eq!(add(false), Some(FusedActivation::Relu));
        assert_eq!(add(true), None);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &Device::Cpu).unwrap();
        let feeds = Map::from([("x".to_string(), Value::new(x, DType::F32))]);
        let run = |options: ExecOptions| {
            let exec = Executor::new(&m, options).unwrap();
            exec.run(&feeds).unwrap().remove(0).tensor
        };
        let fused = run(ExecOptions::inference(&Device::Cpu));
        let plain = run(ExecOptions::default()).detach();
        let d = (fused - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// A ResNet block with a projection shortcut, the shortcut listed after the main branch:
    /// `x -> a -> relu -> c`, `x -> ds`, `relu(c + ds)`; with `one_d`, 1-D convolutions.
    fn residual_block(one_d: bool) -> Model {
        let mut rng = t::Rng::new(11);
        let w = |rng: &mut t::Rng, name| match one_d {
            false => t::init(rng, name, &[4, 4, 1, 1], 0.0),
            true => t::init(rng, name, &[4, 4, 1], 0.0),
        };
        let inits = vec![w(&mut rng, "wa"), w(&mut rng, "wc"), w(&mut rng, "wd")];
        let nodes = vec![
            t::node("a", "Conv", &["x", "wa"], &["ca"]),
            t::node("a_relu", "Relu", &["ca"], &["ra"]),
            t::node("c", "Conv", &["ra", "wc"], &["cc"]),
            t::node("ds", "Conv", &["x", "wd"], &["cd"]),
            t::node("add", "Add", &["cc", "cd"], &["s"]),
            t::node("relu", "Relu", &["s"], &["y"]),
        ];
        let x: &[i64] = if one_d { &[2, 4, 9] } else { &[2, 4, 6, 6] };
        t::model(nodes, &[("x", x)], &["y"], inits, 13)
    }

    #[test]
    fn conv_absorbs_a_residual_add_computed_before_it() {
        let m = residual_block(false);
        let order = topological_order(&m.graph).unwrap();
        let at = |name: &str| order.iter().position(|&i| m.graph.nodes[i].name == name);
        let (c, ds, add, relu) = (at("c").unwrap(), at("ds").unwrap(), at("add"), at("relu"));
        let plan = fusions(&m, false);
        // Of the two convolutions the Add joins, the one that runs second absorbs it; the
        // other's output is its residual (input 0 of the Add is `cc`, input 1 `cd`).
        let (first, second, slot) = if c < ds { (c, ds, 0) } else { (ds, c, 1) };
        assert_eq!(plan[first], None);
        assert_eq!(
            plan[second],
            Some(Fusion {
                consumer: relu.unwrap(),
                residual: Some((add.unwrap(), slot)),
                activation: FusedActivation::Relu,
            })
        );
        assert!(fusions(&m, true)[second].is_none_or(|f| f.residual.is_none()));
    }

    #[test]
    fn residual_fusion_gives_the_unfused_values() {
        for one_d in [false, true] {
            let m = residual_block(one_d);
            let dims: &[usize] = if one_d { &[2, 4, 9] } else { &[2, 4, 6, 6] };
            let x = Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap();
            let feeds = Map::from([("x".to_string(), Value::new(x, DType::F32))]);
            let run = |options: ExecOptions| {
                let exec = Executor::new(&m, options).unwrap();
                let mut times = Vec::new();
                let y = exec.run_timed(&feeds, &mut times).unwrap().remove(0).tensor;
                (y, times)
            };
            let (fused, times) = run(ExecOptions::inference(&Device::Cpu));
            let ops: Vec<&str> = times.iter().map(|t| t.op.as_str()).collect();
            assert_eq!(ops, ["Conv+Relu", "Conv", "Conv+Add+Relu"], "one_d {one_d}");
            let (plain, _) = run(ExecOptions::default());
            let d = (fused - plain.detach()).unwrap().abs().unwrap();
            let d = d.flatten_all().unwrap().max(0).unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "one_d {one_d}");
        }
    }

    #[test]
    fn fused_and_observed_runs_agree() {
        for act in ["Relu", "Clip"] {
            let m = model(act, false);
            let exec = Executor::new(&m, ExecOptions::inference(&Device::Cpu)).unwrap();
            let x = Tensor::randn(0f32, 3.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
            let feeds = Map::from([("x".to_string(), Value::new(x, DType::F32))]);
            let fused = exec.run(&feeds).unwrap().remove(0).tensor;
            // Watching the Conv output turns the fusion off for that run.
            let conv_out = "c".to_string();
            let mut seen = BTreeMap::new();
            let unfused = exec
                .run_observed(&feeds, &|n| n == conv_out, &mut |n, v| {
                    seen.insert(n.to_string(), v.dims().to_vec());
                    Ok(())
                })
                .unwrap()
                .remove(0)
                .tensor;
            assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&conv_out]);
            let d = (fused - unfused).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{act}");
        }
    }
}
