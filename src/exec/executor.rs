//! Runs a model: topological order, value lifetimes, parameters as `Var`s, and Conv +
//! activation fusion (`fusion`) where no caller needs the intermediate.

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Var};

use super::block_fusion::{self, BlockFusion};
use super::error::{ExecError, Result};
use super::fusion::{self, Fusion};
use super::kernels::conv2d::FusedActivation;
use super::ops::{self, OpCtx};
use super::Value;
use crate::graph::{topological_order, DType, Model, Node};

/// How to run a model.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    pub device: Device,
    /// Float type used for all float computation (F32, or F64 for gradient checks).
    pub float: CDType,
    /// Record operations on the parameters for backprop. Off for
    /// inference-only passes (calibration, eval, infer): with it on, every
    /// intermediate value stays alive until the run ends.
    pub track_params: bool,
    /// Training mode: BatchNormalization uses the statistics of the batch it
    /// normalizes (as in a training step) instead of its running statistics.
    pub train: bool,
    /// Quantization-aware training: QuantizeLinear keeps a float, differentiable output
    /// (straight-through rounding, LSQ-scaled gradients for the scales).
    pub qat: bool,
}

impl ExecOptions {
    /// Options for a forward-only pass on `device` in f32.
    pub fn inference(device: &Device) -> Self {
        ExecOptions {
            device: device.clone(),
            float: CDType::F32,
            track_params: false,
            train: false,
            qat: false,
        }
    }
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            device: Device::Cpu,
            float: CDType::F32,
            track_params: true,
            train: false,
            qat: false,
        }
    }
}

/// A model prepared for execution.
pub struct Executor {
    nodes: Vec<Node>,
    inputs: Vec<(String, Option<DType>)>,
    outputs: Vec<String>,
    opset: i64,
    options: ExecOptions,
    /// Float initializers, trainable.
    params: HashMap<String, (Var, DType)>,
    /// Integer and other non-trainable initializers.
    constants: HashMap<String, Value>,
    /// For each node (in run order), values whose last reader it is.
    frees_after: Vec<Vec<String>>,
    /// For each node (in run order), the activation it may absorb.
    fusions: Vec<Option<Fusion>>,
    /// For each node (in run order), the inverted-residual block it may run in one call.
    blocks: Vec<Option<BlockFusion>>,
}

impl Executor {
    /// Prepares `model` for execution: orders nodes, uploads initializers.
    /// Unsupported ops are reported only when a run reaches them.
    pub fn new(model: &Model, options: ExecOptions) -> Result<Self> {
        let graph = &model.graph;
        let order = topological_order(graph)?;
        let nodes: Vec<Node> = order.iter().map(|&i| graph.nodes[i].clone()).collect();
        let mut params = HashMap::new();
        let mut constants = HashMap::new();
        for (name, t) in &graph.initializers {
            let value = Value::from_ir(t, &options.device, options.float)?;
            if t.dtype.is_float() {
                params.insert(name.clone(), (Var::from_tensor(&value.tensor)?, t.dtype));
            } else {
                constants.insert(name.clone(), value);
            }
        }
        for sparse in &graph.sparse_initializers {
            let t = crate::onnx::sparse_to_dense(sparse, None).map_err(|e| ExecError::Input {
                name: "sparse initializer".into(),
                reason: e.to_string(),
            })?;
            let value = Value::from_ir(&t, &options.device, options.float)?;
            if t.dtype.is_float() {
                params.insert(t.name.clone(), (Var::from_tensor(&value.tensor)?, t.dtype));
            } else {
                constants.insert(t.name.clone(), value);
            }
        }
        let outputs: Vec<String> = graph.outputs.iter().map(|o| o.name.clone()).collect();
        let frees_after = lifetimes(&nodes, &outputs);
        let fusions = fusion::plan(model, &nodes, options.track_params);
        let blocks = block_fusion::plan(model, &nodes, &fusions, options.track_params);
        Ok(Executor {
            nodes,
            inputs: graph
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.dtype))
                .collect(),
            outputs,
            opset: model.onnx_opset(),
            options,
            params,
            constants,
            frees_after,
            fusions,
            blocks,
        })
    }

    /// Trainable parameters (float initializers) by name.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|(k, (v, _))| (k.as_str(), v))
    }

    pub fn device(&self) -> &Device {
        &self.options.device
    }

    /// Names and ONNX types of the graph inputs to feed.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|(n, _)| n.as_str())
    }

    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Runs the graph and returns the graph outputs in order.
    pub fn run(&self, feeds: &HashMap<String, Value>) -> Result<Vec<Value>> {
        self.run_inner(feeds, &[], &|_| false, &mut |_, _| Ok(()))
            .and_then(|env| self.outputs_of(env))
    }

    /// Runs the graph keeping the named intermediate values as well as the outputs.
    pub fn run_keep(
        &self,
        feeds: &HashMap<String, Value>,
        keep: &[&str],
    ) -> Result<HashMap<String, Value>> {
        self.run_inner(feeds, keep, &|_| false, &mut |_, _| Ok(()))
    }

    /// Runs the graph and shows each graph input and node output that `watched` selects to
    /// `observe` as it is produced (before it is freed); returns the outputs.
    pub fn run_observed(
        &self,
        feeds: &HashMap<String, Value>,
        watched: &dyn Fn(&str) -> bool,
        observe: &mut dyn FnMut(&str, &Value) -> Result<()>,
    ) -> Result<Vec<Value>> {
        let env = self.run_inner(feeds, &[], watched, observe)?;
        self.outputs_of(env)
    }

    /// Runs the graph like `run`, adding each node's wall time to `times` (a node fused with
    /// the activation after it counts as one, named `Conv+Relu`).
    pub fn run_timed(
        &self,
        feeds: &HashMap<String, Value>,
        times: &mut Vec<NodeTime>,
    ) -> Result<Vec<Value>> {
        let env = self.run_with(feeds, &[], &|_| false, &mut |_, _| Ok(()), Some(times))?;
        self.outputs_of(env)
    }

    fn outputs_of(&self, env: HashMap<String, Value>) -> Result<Vec<Value>> {
        self.outputs
            .iter()
            .map(|name| {
                env.get(name)
                    .cloned()
                    .ok_or_else(|| ExecError::Missing(name.clone()))
            })
            .collect()
    }

    fn run_inner(
        &self,
        feeds: &HashMap<String, Value>,
        keep: &[&str],
        watched: &dyn Fn(&str) -> bool,
        observe: &mut dyn FnMut(&str, &Value) -> Result<()>,
    ) -> Result<HashMap<String, Value>> {
        self.run_with(feeds, keep, watched, observe, None)
    }

    fn run_with(
        &self,
        feeds: &HashMap<String, Value>,
        keep: &[&str],
        watched: &dyn Fn(&str) -> bool,
        observe: &mut dyn FnMut(&str, &Value) -> Result<()>,
        mut times: Option<&mut Vec<NodeTime>>,
    ) -> Result<HashMap<String, Value>> {
        let mut observe = |name: &str, value: &Value| match watched(name) {
            true => observe(name, value),
            false => Ok(()),
        };
        // Nodes whose work a fused Conv already did in this run.
        let mut absorbed = vec![false; self.nodes.len()];
        let mut env: HashMap<String, Value> = self.constants.clone();
        for (name, (var, dtype)) in &self.params {
            let t = if self.options.track_params {
                var.as_tensor().clone()
            } else {
                var.as_tensor().detach()
            };
            env.insert(name.clone(), Value::new(t, *dtype));
        }
        for (name, dtype) in &self.inputs {
            let v = feeds.get(name).ok_or_else(|| ExecError::Input {
                name: name.clone(),
                reason: "is a graph input but was not given".into(),
            })?;
            let value = self.coerce_feed(name, v, *dtype)?;
            observe(name, &value)?;
            env.insert(name.clone(), value);
        }
        for (i, (node, frees)) in self.nodes.iter().zip(&self.frees_after).enumerate() {
            if absorbed[i] {
                self.free(&mut env, frees, keep);
                continue;
            }
            if let Some(block) = &self.blocks[i] {
                let wanted = |v: &String| watched(v) || keep.contains(&v.as_str());
                if !block.unproduced.iter().any(wanted) {
                    let start = times.is_some().then(std::time::Instant::now);
                    let run = ops::BlockRun {
                        nodes: &self.nodes,
                        env: &env,
                        opset: self.opset,
                        device: &self.options.device,
                    };
                    let out =
                        ops::inverted_residual(block, &run).map_err(|e| with_node(e, node))?;
                    if let Some(value) = out {
                        if let (Some(times), Some(start)) = (times.as_deref_mut(), start) {
                            times.push(NodeTime {
                                node: node.name.clone(),
                                op: "InvertedResidual".into(),
                                seconds: start.elapsed().as_secs_f64(),
                            });
                        }
                        for &a in &block.absorbed {
                            absorbed[a] = true;
                        }
                        observe(&block.output, &value)?;
                        env.insert(block.output.clone(), value);
                        self.free(&mut env, frees, keep);
                        continue;
                    }
                }
            }
            let fused = self.fusions[i].filter(|f| {
                // The values the fused call never produces must not be wanted.
                let sum = f.residual.filter(|&(add, _)| add != f.consumer);
                let sum = sum.map(|(add, _)| self.nodes[add].outputs[0].as_str());
                [Some(node.outputs[0].as_str()), sum]
                    .into_iter()
                    .flatten()
                    .all(|mid| !watched(mid) && !keep.contains(&mid))
            });
            let residual = match fused.and_then(|f| f.residual) {
                Some((add, slot)) => {
                    let name = &self.nodes[add].inputs[slot];
                    let value = env
                        .get(name)
                        .ok_or_else(|| ExecError::Missing(name.clone()))?;
                    Some(value.clone())
                }
                None => None,
            };
            let inputs = node
                .inputs
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        return Ok(None);
                    }
                    env.get(n)
                        .cloned()
                        .map(Some)
                        .ok_or_else(|| ExecError::Missing(n.clone()))
                })
                .collect::<Result<Vec<_>>>()?;
            let ctx = OpCtx {
                node,
                inputs,
                opset: self.opset,
                device: &self.options.device,
                float: self.options.float,
                activation: fused.map_or(FusedActivation::None, |f| f.activation),
                residual,
                train: self.options.train,
                qat: self.options.qat,
            };
            let start = times.is_some().then(std::time::Instant::now);
            let outs = ops::run(&ctx).map_err(|e| with_node(e, node))?;
            if let (Some(times), Some(start)) = (times.as_deref_mut(), start) {
                let mut op = node.op_type.clone();
                if let Some(f) = fused {
                    let add = f.residual.map(|(add, _)| add).filter(|&a| a != f.consumer);
                    for absorbed in add.into_iter().chain([f.consumer]) {
                        op = format!("{op}+{}", self.nodes[absorbed].op_type);
                    }
                }
                times.push(NodeTime {
                    node: node.name.clone(),
                    op,
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            let names = match fused {
                Some(f) => {
                    absorbed[f.consumer] = true;
                    if let Some((add, _)) = f.residual {
                        absorbed[add] = true;
                    }
                    &self.nodes[f.consumer].outputs
                }
                None => &node.outputs,
            };
            for (name, value) in names.iter().zip(outs) {
                if !name.is_empty() {
                    observe(name, &value)?;
                    env.insert(name.clone(), value);
                }
            }
            self.free(&mut env, frees, keep);
        }
        Ok(env)
    }

    fn free(&self, env: &mut HashMap<String, Value>, frees: &[String], keep: &[&str]) {
        for name in frees {
            if !keep.contains(&name.as_str()) {
                env.remove(name);
            }
        }
    }

    /// Checks and converts a fed value to the graph input's type.
    fn coerce_feed(&self, name: &str, v: &Value, dtype: Option<DType>) -> Result<Value> {
        let t = v.tensor.to_device(&self.options.device)?;
        let dtype = dtype.unwrap_or(v.dtype);
        let storage =
            super::storage_dtype(dtype, self.options.float).ok_or_else(|| ExecError::Input {
                name: name.to_string(),
                reason: format!("element type {dtype} is not supported"),
            })?;
        Ok(Value::new(t.to_dtype(storage)?, dtype))
    }
}

/// The wall time of one node in one `Executor::run_timed`.
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub node: String,
    /// The op type (`Conv+Relu` where the executor fused the activation into the conv).
    pub op: String,
    pub seconds: f64,
}

fn with_node(e: ExecError, node: &Node) -> ExecError {
    match e {
        ExecError::Candle(c) => ExecError::Op {
            node: node.label(),
            reason: c.to_string(),
        },
        other => other,
    }
}

/// For each node, the values read for the last time by it (not graph outputs).
fn lifetimes(nodes: &[Node], outputs: &[String]) -> Vec<Vec<String>> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for input in node.inputs.iter().filter(|s| !s.is_empty()) {
            last.insert(input, i);
        }
    }
    let mut frees = vec![Vec::new(); nodes.len()];
    for (name, i) in last {
        if !outputs.iter().any(|o| o == name) {
            frees[i].push(name.to_string());
        }
    }
    frees
}
