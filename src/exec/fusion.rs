//! Conv + activation fusion for the executor: a `Conv` whose only reader is a `Relu` or a
//! `Clip` with constant bounds runs as one kernel call (`kernels::conv2d` applies the
//! activation while the output is still in cache), and the activation node is skipped. In
//! forward-only executors an `Add` (a residual join) fuses with its Relu the same way
//! (`kernels::add_act`).
//!
//! The plan is made once per executor; a run drops a fusion whose intermediate (the Conv's
//! own output) the caller wants to see or keep, so observers still get every value they ask
//! for. Clip bounds are read from constant initializers, so Clip fuses only in inference
//! executors (in training, float initializers are trainable parameters).

use std::collections::HashMap;

use crate::exec::kernels::conv2d::FusedActivation;
use crate::graph::{Model, Node};

/// One Conv (or Add) node fused with its activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fusion {
    /// Index (in run order) of the activation node that the Conv absorbs.
    pub consumer: usize,
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
    nodes
        .iter()
        .map(|producer| {
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
            let [consumer] = readers.get(out)?.as_slice() else {
                return None;
            };
            let act = &nodes[*consumer];
            if is_output(out) || act.inputs.first().map(String::as_str) != Some(out) {
                return None;
            }
            let activation = match act.op_type.as_str() {
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
            };
            Some(Fusion {
                consumer: *consumer,
                activation,
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
