//! What an op sees: its node, its input values, and the execution settings.

use candle_core::{DType as CDType, Device, Tensor};

use crate::exec::error::{ExecError, Result};
use crate::exec::kernels::conv2d::FusedActivation;
use crate::exec::Value;
use crate::graph::{DType, Node};

/// Inputs and settings for running one node.
pub struct OpCtx<'a> {
    pub node: &'a Node,
    /// Input values in node order; `None` for omitted optional inputs.
    pub inputs: Vec<Option<Value>>,
    /// The model's ONNX opset version.
    pub opset: i64,
    pub device: &'a Device,
    /// candle float type used for computation (f32, or f64 for gradient checks).
    pub float: CDType,
    /// An activation the op applies to its output (a `Conv` fused with its `Relu`/`Clip`
    /// reader by the executor); `None` for every other op.
    pub activation: FusedActivation,
    /// A residual the op adds to its output before the activation (a `Conv` that absorbed
    /// the `Add` reading it, in forward-only executors); `None` for every other op.
    pub residual: Option<Value>,
    /// Training executor: BatchNormalization normalizes with the batch's statistics.
    pub train: bool,
    /// Quantization-aware training (see `ExecOptions::qat`).
    pub qat: bool,
}

impl<'a> OpCtx<'a> {
    /// Required input `i`.
    pub fn input(&self, i: usize) -> Result<&Value> {
        self.opt_input(i)
            .ok_or_else(|| self.err(&format!("required input #{i} is missing")))
    }

    /// Optional input `i`.
    pub fn opt_input(&self, i: usize) -> Option<&Value> {
        self.inputs.get(i).and_then(Option::as_ref)
    }

    /// Tensor of required input `i`.
    pub fn tensor(&self, i: usize) -> Result<&Tensor> {
        Ok(&self.input(i)?.tensor)
    }

    /// Optional input `i` read as integers (axes, shapes, pads).
    pub fn ints_input(&self, i: usize) -> Result<Option<Vec<i64>>> {
        self.opt_input(i).map(Value::to_i64_vec).transpose()
    }

    /// Integer list from attribute `name` (older opsets) or input `i` (newer).
    pub fn ints_attr_or_input(&self, name: &str, i: usize) -> Result<Option<Vec<i64>>> {
        match self.node.attr_ints(name) {
            Some(v) if self.node.attr(name).is_some() => Ok(Some(v.to_vec())),
            _ => self.ints_input(i),
        }
    }

    /// An error about this node.
    pub fn err(&self, reason: &str) -> ExecError {
        ExecError::Op {
            node: self.node.label(),
            reason: reason.to_string(),
        }
    }

    /// An "unsupported" error about this node.
    pub fn unsupported(&self, reason: &str) -> ExecError {
        ExecError::Unsupported {
            node: format!("'{}'", self.node.name),
            op_type: self.node.op_type.clone(),
            reason: reason.to_string(),
        }
    }

    /// A float value in the compute type.
    pub fn float_value(&self, t: Tensor, dtype: DType) -> Value {
        Value::new(t, dtype)
    }

    /// A scalar tensor of the compute float type on the device.
    pub fn scalar(&self, v: f64) -> Result<Tensor> {
        Ok(Tensor::new(v, self.device)?.to_dtype(self.float)?)
    }

    /// Normalizes a possibly negative axis against `rank`.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r.max(1) {
            return Err(self.err(&format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(a as usize)
    }

    /// Input `i` as a float tensor (integers converted), for arithmetic ops.
    pub fn float_tensor(&self, i: usize) -> Result<Tensor> {
        let t = self.tensor(i)?;
        Ok(if t.dtype().is_float() {
            t.clone()
        } else {
            t.to_dtype(self.float)?
        })
    }
}
