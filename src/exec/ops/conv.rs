//! Conv and ConvTranspose (1-D and 2-D): groups (depthwise included),
//! asymmetric pads, auto_pad, strides, dilations, output_padding and
//! output_shape. 1-D convolutions run as 2-D ones with height 1. On CPU,
//! depthwise convolutions use amct's direct kernel (`kernels::depthwise`) and
//! the others its im2col + GEMM kernel (`kernels::conv2d`); other devices use
//! candle's `conv2d`.

use candle_core::{DType, Tensor};

use super::conv_taps::{depthwise_by_taps, TapGeometry};
use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::kernels::add_act::add_activate;
use crate::exec::kernels::conv2d::{
    conv2d as kernel_conv2d, conv2d_add, Conv2dParams, FusedActivation,
};
use crate::exec::kernels::depthwise::{depthwise_conv2d_fused, DepthwiseParams};
use crate::exec::Value;
use crate::graph::Node;

/// Spatial settings of a Conv/ConvTranspose node for rank-2 spatial data.
struct Geometry {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
}

fn spatial_rank(node: &Node) -> std::result::Result<(), String> {
    if let Some(k) = node.attr_ints("kernel_shape") {
        if k.len() > 2 {
            return Err(format!(
                "{}-D convolution (only 1-D and 2-D are supported)",
                k.len()
            ));
        }
    }
    match node.attr_string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") | Some("SAME_UPPER") | Some("SAME_LOWER") => Ok(()),
        Some(other) => Err(format!("auto_pad '{other}'")),
    }
}

pub fn check_conv(node: &Node) -> std::result::Result<(), String> {
    spatial_rank(node)?;
    if let Some(d) = node.attr_ints("dilations") {
        if d.len() == 2 && d[0] != d[1] {
            return Err(format!("different dilations per axis {d:?}"));
        }
    }
    Ok(())
}

pub fn check_conv_transpose(node: &Node) -> std::result::Result<(), String> {
    check_conv(node)?;
    if let Some(s) = node.attr_ints("strides") {
        if s.len() == 2 && s[0] != s[1] {
            return Err(format!("different strides per axis {s:?}"));
        }
    }
    Ok(())
}

/// Reads 1-D or 2-D attributes into 2-D form (1-D gets a unit height axis).
fn attr2(node: &Node, name: &str, n: usize, default: usize) -> Vec<usize> {
    let v: Vec<usize> = node
        .attr_ints(name)
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
        .unwrap_or_else(|| vec![default; n]);
    if n == 1 {
        vec![default, v[0]]
    } else {
        v
    }
}

fn geometry(
    ctx: &OpCtx,
    spatial: &[usize],
    kernel: [usize; 2],
    n: usize,
    transpose: bool,
) -> Result<Geometry> {
    let node = ctx.node;
    let stride = attr2(node, "strides", n, 1);
    let dilation = attr2(node, "dilations", n, 1);
    let raw_pads: Vec<usize> = node
        .attr_ints("pads")
        .map(|p| p.iter().map(|&x| x.max(0) as usize).collect())
        .unwrap_or_else(|| vec![0; 2 * n]);
    if raw_pads.len() != 2 * n {
        return Err(ctx.err(&format!(
            "pads has {} entries, expected {}",
            raw_pads.len(),
            2 * n
        )));
    }
    let mut pads = if n == 1 {
        [0, raw_pads[0], 0, raw_pads[1]]
    } else {
        [raw_pads[0], raw_pads[1], raw_pads[2], raw_pads[3]]
    };
    let auto_pad = node.attr_string("auto_pad").unwrap_or_default();
    if !transpose && (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
        for a in 0..2 {
            let input = spatial[a];
            let out = input.div_ceil(stride[a]);
            let needed = (out.saturating_sub(1)) * stride[a] + (kernel[a] - 1) * dilation[a] + 1;
            let total = needed.saturating_sub(input);
            let small = total / 2;
            let (begin, end) = if auto_pad == "SAME_UPPER" {
                (small, total - small)
            } else {
                (total - small, small)
            };
            pads[a] = begin;
            pads[a + 2] = end;
        }
    } else if auto_pad == "VALID" {
        pads = [0; 4];
    }
    Ok(Geometry {
        kernel,
        stride: [stride[0], stride[1]],
        dilation: [dilation[0], dilation[1]],
        pads,
    })
}

/// The spatial attributes of a depthwise `Conv` node over `[h, w]` images with a `k` kernel.
pub(super) fn depthwise_params(
    ctx: &OpCtx,
    [h, w]: [usize; 2],
    k: (usize, usize),
) -> Result<DepthwiseParams> {
    let p = conv_params(ctx, [h, w], k)?;
    Ok(DepthwiseParams {
        stride: p.stride,
        dilation: p.dilation,
        pads: p.pads,
    })
}

/// The attributes of an ungrouped 2-D `Conv` node over `[h, w]` images with a `k` kernel
/// (no activation).
pub(super) fn conv_params(
    ctx: &OpCtx,
    [h, w]: [usize; 2],
    k: (usize, usize),
) -> Result<Conv2dParams> {
    let g = geometry(ctx, &[h, w], [k.0, k.1], 2, false)?;
    Ok(Conv2dParams {
        stride: g.stride,
        dilation: g.dilation,
        pads: g.pads,
        groups: 1,
        activation: FusedActivation::None,
    })
}

/// Makes input and weight 4-D; returns the number of spatial axes (1 or 2).
fn to_4d(ctx: &OpCtx, x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    match x.rank() {
        3 => Ok((x.unsqueeze(2)?, w.unsqueeze(2)?, 1)),
        4 => Ok((x.clone(), w.clone(), 2)),
        r => Err(ctx.unsupported(&format!(
            "input of rank {r} (only 1-D and 2-D convolutions)"
        ))),
    }
}

pub fn conv(ctx: &OpCtx) -> Result<Vec<Value>> {
    let residual = ctx.residual.as_ref().map(|r| &r.tensor);
    let (mut out, added) = conv_inner(ctx, residual)?;
    if let (Some(r), false) = (residual, added) {
        // The kernels could not take the residual: added here, then the activation.
        let y = &out[0].tensor;
        let r = r.to_dtype(y.dtype())?;
        let sum = match add_activate(y, &r, ctx.activation)? {
            Some(sum) => sum,
            None => activate(y.broadcast_add(&r)?, ctx.activation)?,
        };
        out[0] = Value::new(sum, out[0].dtype);
    }
    Ok(out)
}

/// The convolution, with `residual` added and then the fused activation applied when the
/// kernel takes the residual (the `bool`); otherwise without either, when there is a
/// residual, for the caller to add.
fn conv_inner(ctx: &OpCtx, residual: Option<&Tensor>) -> Result<(Vec<Value>, bool)> {
    let act = match residual {
        Some(_) => FusedActivation::None,
        None => ctx.activation,
    };
    let xv = ctx.input(0)?;
    let (x, w, n) = to_4d(ctx, &ctx.float_tensor(0)?, &ctx.float_tensor(1)?)?;
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let g = geometry(ctx, &[h, wd], [kh, kw], n, false)?;
    let groups = ctx.node.int_or("group", 1).max(1) as usize;
    if g.dilation[0] != g.dilation[1] {
        return Err(ctx.unsupported("different dilations per axis"));
    }
    let bias = match ctx.opt_input(2) {
        Some(b) => Some(b.tensor.to_dtype(x.dtype())?),
        None => None,
    };
    let mut y = if is_cpu_depthwise(&x, &w, groups)? {
        let p = DepthwiseParams {
            stride: g.stride,
            dilation: g.dilation,
            pads: g.pads,
        };
        let bias = bias.map(|b| b.flatten_all()).transpose()?;
        let y = depthwise_conv2d_fused(&x, &w, bias.as_ref(), act, &p)?;
        return Ok((finish(y, n, xv.dtype)?, false));
    } else if is_cpu_float(&x, &w) {
        let p = Conv2dParams {
            stride: g.stride,
            dilation: g.dilation,
            pads: g.pads,
            groups,
            activation: ctx.activation,
        };
        let bias = bias.map(|b| b.flatten_all()).transpose()?;
        if let Some(r) = residual.filter(|_| n == 2) {
            if let Some(y) = conv2d_add(&x, &w, bias.as_ref(), r, &p)? {
                return Ok((finish(y, n, xv.dtype)?, true));
            }
        }
        let p = Conv2dParams {
            activation: act,
            ..p
        };
        return Ok((
            finish(kernel_conv2d(&x, &w, bias.as_ref(), &p)?, n, xv.dtype)?,
            false,
        ));
    } else if is_depthwise(&x, &w, groups)? && !x.device().is_cpu() {
        let taps = TapGeometry {
            pads: g.pads,
            stride: g.stride,
            dilation: g.dilation,
        };
        add_bias(depthwise_by_taps(&x, &w, &taps)?, bias.as_ref())?
    } else {
        let uniform_stride = g.stride[0] == g.stride[1];
        let stride = if uniform_stride { g.stride[0] } else { 1 };
        let (x, pad) = pad_exactly(ctx, &x, &g, stride)?;
        let y = x.conv2d(&w, pad, stride, g.dilation[0], groups)?;
        let y = if uniform_stride {
            y
        } else {
            subsample(&subsample(&y, 2, g.stride[0])?, 3, g.stride[1])?
        };
        add_bias(y, bias.as_ref())?
    };
    y = activate(y, act)?;
    Ok((finish(y, n, xv.dtype)?, false))
}

/// `y` through a fused activation, with candle's ops.
fn activate(y: Tensor, act: FusedActivation) -> Result<Tensor> {
    Ok(match act {
        FusedActivation::None => y,
        FusedActivation::Relu => y.relu()?,
        FusedActivation::Clip(lo, hi) => y.clamp(lo, hi)?,
    })
}

/// Drops the unit height axis of a 1-D convolution.
fn finish(y: Tensor, spatial: usize, dtype: crate::graph::DType) -> Result<Vec<Value>> {
    let y = if spatial == 1 { y.squeeze(2)? } else { y };
    Ok(vec![Value::new(y, dtype)])
}

/// Adds a per-channel bias to an NCHW output.
fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    })
}

/// Whether amct's im2col + GEMM kernel (`kernels::conv2d`) runs this convolution: f32/f64
/// operands of one dtype on CPU. Elsewhere candle's `conv2d`.
fn is_cpu_float(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == w.dtype() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// One group per input channel and one output channel per group.
fn is_depthwise(x: &Tensor, w: &Tensor, groups: usize) -> Result<bool> {
    Ok(groups > 1 && groups == x.dim(1)? && w.dim(0)? == groups && w.dim(1)? == 1)
}

/// Whether [`depthwise_conv2d_fused`] runs this convolution: one group per input channel (more than
/// one), `[C * M, 1, KH, KW]` weights, f32/f64 on CPU. Elsewhere candle's grouped `conv2d`.
fn is_cpu_depthwise(x: &Tensor, w: &Tensor, groups: usize) -> Result<bool> {
    let (c, o) = (x.dim(1)?, w.dim(0)?);
    Ok(groups > 1
        && groups == c
        && w.dim(1)? == 1
        && o % c == 0
        && x.device().is_cpu()
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F64))
}

/// Pads the input and drops trailing rows/columns no window reaches, so the
/// convolution covers its input exactly (candle's conv backward needs that).
/// Returns the input and the symmetric padding left for candle to apply.
fn pad_exactly(ctx: &OpCtx, x: &Tensor, g: &Geometry, stride: usize) -> Result<(Tensor, usize)> {
    let [top, left, bottom, right] = g.pads;
    let (_, _, h, w) = x.dims4()?;
    let used = |size: usize, a: usize| -> Result<usize> {
        let extent = (g.kernel[a] - 1) * g.dilation[a] + 1;
        if size < extent {
            return Err(ctx.err(&format!(
                "padded input size {size} is smaller than the kernel extent {extent}"
            )));
        }
        Ok((size - extent) / stride * stride + extent)
    };
    let (ph, pw) = (h + top + bottom, w + left + right);
    let (uh, uw) = (used(ph, 0)?, used(pw, 1)?);
    let symmetric = top == bottom && left == right && top == left;
    if symmetric && uh == ph && uw == pw {
        return Ok((x.clone(), top));
    }
    let mut x = x
        .pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?;
    if uh < ph {
        x = x.narrow(2, 0, uh)?;
    }
    if uw < pw {
        x = x.narrow(3, 0, uw)?;
    }
    Ok((x, 0))
}

/// Keeps every `step`-th element along `dim`.
fn subsample(t: &Tensor, dim: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return Ok(t.clone());
    }
    let len = t.dim(dim)?;
    let idx: Vec<i64> = (0..len as i64).step_by(step).collect();
    let idx = Tensor::new(idx.as_slice(), t.device())?;
    Ok(t.index_select(&idx, dim)?)
}

pub fn conv_transpose(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let (x, w, n) = to_4d(ctx, &ctx.float_tensor(0)?, &ctx.float_tensor(1)?)?;
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let mut g = geometry(ctx, &[h, wd], [kh, kw], n, true)?;
    let groups = ctx.node.int_or("group", 1).max(1) as usize;
    let out_pad = attr2(ctx.node, "output_padding", n, 0);
    let full =
        |a: usize, input: usize| (input - 1) * g.stride[a] + (g.kernel[a] - 1) * g.dilation[a] + 1;
    let inputs = [h, wd];
    let auto_pad = ctx.node.attr_string("auto_pad").unwrap_or_default();
    let output_shape = ctx.node.attr_ints("output_shape").map(|s| s.to_vec());
    if output_shape.is_some() || auto_pad.starts_with("SAME") {
        let target: Vec<usize> = match &output_shape {
            Some(s) if n == 1 => vec![1, s[s.len() - 1] as usize],
            Some(s) => s[s.len() - 2..].iter().map(|&v| v as usize).collect(),
            None => (0..2).map(|a| inputs[a] * g.stride[a]).collect(),
        };
        for a in 0..2 {
            let total = (full(a, inputs[a]) + out_pad[a]).saturating_sub(target[a]);
            let (begin, end) =
                if auto_pad == "SAME_UPPER" || output_shape.is_some() && auto_pad != "SAME_LOWER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
            g.pads[a] = begin;
            g.pads[a + 2] = end;
        }
    }
    let stride = g.stride[0];
    let y = if groups == 1 {
        x.conv_transpose2d(&w, 0, 0, stride, g.dilation[0])?
    } else {
        let xs = x.chunk(groups, 1)?;
        let ws = w.chunk(groups, 0)?;
        let parts = xs
            .iter()
            .zip(&ws)
            .map(|(xi, wi)| xi.conv_transpose2d(wi, 0, 0, stride, g.dilation[0]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)?
    };
    let mut y = y;
    for a in 0..2 {
        let f = full(a, inputs[a]);
        let wanted = (f + out_pad[a]).saturating_sub(g.pads[a] + g.pads[a + 2]);
        let begin = g.pads[a].min(f);
        let avail = f - begin;
        y = y.narrow(2 + a, begin, wanted.min(avail))?;
        if wanted > avail {
            y = y.pad_with_zeros(2 + a, 0, wanted - avail)?;
        }
    }
    if let Some(b) = ctx.opt_input(2) {
        let b = b.tensor.to_dtype(y.dtype())?;
        y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
    }
    if n == 1 {
        y = y.squeeze(2)?;
    }
    Ok(vec![Value::new(y, xv.dtype)])
}
