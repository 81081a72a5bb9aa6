//! Runs a fused inverted-residual block (`exec::block_fusion`) with
//! `kernels::inverted_residual` when its operands suit the kernel: f32 on a CPU with AVX2 and
//! FMA, 2-D, an expanded activation (the depthwise convolution's input) large enough to leave
//! the cache between layers, a projection weight `[C_out, C_hidden, 1, 1]` and a residual
//! shaped like the output. Otherwise it answers `None` and the executor runs the block's nodes
//! one by one (which report whatever is wrong with them).

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor};

use super::conv::{conv_params, depthwise_params};
use super::OpCtx;
use crate::exec::block_fusion::BlockFusion;
use crate::exec::error::{ExecError, Result};
use crate::exec::kernels::conv2d::FusedActivation;
use crate::exec::kernels::depthwise::RowGeom;
use crate::exec::kernels::inverted_residual::{
    self as kernel, Block, Depthwise, Expansion, Pointwise,
};
use crate::exec::{with_f32_slice, Value};
use crate::graph::{DType, Node};

/// Below this many bytes of expanded activations per image the unfused kernels are as fast:
/// the expanded tensor of a batch stays in cache between them (measured on MobileNetV2's
/// blocks, `inverted_residual_times`).
const FUSE_MIN_HIDDEN_BYTES: usize = 512 << 10;

/// What the block needs from the executor: its nodes, the values computed so far, the
/// settings a node's context carries.
pub(in crate::exec) struct BlockRun<'a> {
    pub nodes: &'a [Node],
    pub env: &'a HashMap<String, Value>,
    pub opset: i64,
    pub device: &'a Device,
}

/// The block's output, or `None` where the kernel does not apply (the executor then runs
/// the nodes one by one).
pub(in crate::exec) fn inverted_residual(b: &BlockFusion, run: &BlockRun) -> Result<Option<Value>> {
    if !run.device.is_cpu() || !kernel::available() {
        return Ok(None);
    }
    let first = &run.nodes[b.first()];
    let get = |name: &str| {
        run.env
            .get(name)
            .ok_or_else(|| ExecError::Missing(name.into()))
    };
    let x = get(&first.inputs[0])?;
    let f32_4d = |v: &Value| {
        v.dtype == DType::F32 && v.tensor.dtype() == CDType::F32 && v.tensor.rank() == 4
    };
    if !f32_4d(x) {
        return Ok(None);
    }
    let (n, cin, h, w) = x.tensor.dims4()?;
    // Weights and biases, as flat f32 vectors (small next to the activations).
    let params = |i: usize| -> Result<ConvParams> {
        let node = &run.nodes[i];
        let wt = &get(&node.inputs[1])?.tensor;
        let bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
            Some(name) => Some(
                get(name)?
                    .tensor
                    .flatten_all()?
                    .to_dtype(CDType::F32)?
                    .to_vec1()?,
            ),
            None => None,
        };
        let flat = wt.flatten_all()?.to_dtype(CDType::F32)?.to_vec1()?;
        Ok((flat, wt.dims().to_vec(), bias))
    };
    let expand = b.expand.map(params).transpose()?;
    let (wd, dims_d, bd) = params(b.depthwise)?;
    let (wp, dims_p, bp) = params(b.project)?;
    let ctx_of = |i: usize| OpCtx {
        node: &run.nodes[i],
        inputs: Vec::new(),
        opset: run.opset,
        device: run.device,
        float: CDType::F32,
        activation: FusedActivation::None,
        residual: None,
        train: false,
        qat: false,
    };
    // The expansion's attributes and output size (the depthwise convolution's input).
    let (expand_params, mid) = match (&expand, b.expand) {
        (Some((_, d, _)), Some(i)) if d.len() == 4 => {
            let p = conv_params(&ctx_of(i), [h, w], (d[2], d[3]))?;
            let side = |a: usize, len: usize| {
                if p.stride[a] == 0 || p.dilation[a] == 0 || d[2 + a] == 0 {
                    return None;
                }
                let extent = p.dilation[a] * (d[2 + a] - 1) + 1;
                let padded = len + p.pads[a] + p.pads[a + 2];
                (padded >= extent).then(|| (padded - extent) / p.stride[a] + 1)
            };
            match (side(0, h), side(1, w)) {
                (Some(eh), Some(ew)) => (Some(p), (eh, ew)),
                _ => return Ok(None), // the node's own kernel reports the error
            }
        }
        (Some(_), _) => return Ok(None),
        _ => (None, (h, w)),
    };
    let hidden = expand.as_ref().map_or(cin, |(_, d, _)| d[0]);
    let hidden_bytes = hidden * mid.0 * mid.1 * 4;
    let projects_hidden = dims_p.len() == 4 && dims_p[1..] == [hidden, 1, 1];
    if hidden_bytes < FUSE_MIN_HIDDEN_BYTES
        || dims_d.len() != 4
        || dims_d[0] != hidden
        || !projects_hidden
    {
        return Ok(None);
    }
    let k = (dims_d[2], dims_d[3]);
    // Attributes the depthwise node's own kernel would reject: it runs, and reports them.
    let Ok(p) = depthwise_params(&ctx_of(b.depthwise), [mid.0, mid.1], k) else {
        return Ok(None);
    };
    let clamp = |a: FusedActivation| (a != FusedActivation::None).then(|| bounds(a));
    let [expand_act, dw_act, out_act] = b.activations;
    let block = Block {
        expand: expand
            .as_ref()
            .zip(expand_params)
            .map(|((w, d, bias), params)| Expansion {
                w,
                kernel: (d[2], d[3]),
                params,
                bias: bias.as_deref(),
                clamp: clamp(expand_act),
            }),
        depthwise: Depthwise {
            geom: RowGeom {
                c: hidden,
                inp: mid,
                k,
                p,
            },
            w: &wd,
            bias: bd.as_deref(),
            clamp: clamp(dw_act),
        },
        project: Pointwise {
            w: &wp,
            bias: bp.as_deref(),
            clamp: clamp(out_act),
        },
    };
    let residual = match b.residual {
        Some((add, slot)) => Some(get(&run.nodes[add].inputs[slot])?),
        None => None,
    };
    let Ok((oh, ow)) = block.depthwise.geom.output() else {
        return Ok(None);
    };
    let cout = dims_p[0];
    if residual.is_some_and(|r| !f32_4d(r) || r.tensor.dims() != [n, cout, oh, ow]) {
        return Ok(None);
    }
    let (y, dims) = with_f32_slice(&x.tensor, |xs| match residual {
        Some(r) => with_f32_slice(&r.tensor, |rs| {
            kernel::inverted_residual(&block, xs, [n, cin, h, w], Some(rs))
        }),
        None => Ok(kernel::inverted_residual(&block, xs, [n, cin, h, w], None)),
    })???;
    let y = Tensor::from_vec(y, dims.to_vec(), run.device)?;
    Ok(Some(Value::new(y, DType::F32)))
}

/// A convolution's weights (flat), their dims and its bias.
type ConvParams = (Vec<f32>, Vec<usize>, Option<Vec<f32>>);

/// The clamp an activation applies, in f32.
fn bounds(a: FusedActivation) -> (f32, f32) {
    let (lo, hi) = a.bounds();
    (lo as f32, hi as f32)
}
