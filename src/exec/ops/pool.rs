//! MaxPool, AveragePool (1-D and 2-D; pads, auto_pad, ceil_mode,
//! count_include_pad, dilations), GlobalAveragePool, GlobalMaxPool.
//! 2-D pooling runs on amct's own kernels with an exact backward.

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::kernels::pool2d::{self, Pool2dParams};
use crate::exec::Value;
use crate::graph::Node;

pub fn check_pool(node: &Node) -> std::result::Result<(), String> {
    let k = node
        .attr_ints("kernel_shape")
        .ok_or("missing kernel_shape")?;
    if k.is_empty() || k.len() > 2 {
        return Err(format!(
            "{}-D pooling (only 1-D and 2-D are supported)",
            k.len()
        ));
    }
    if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
        return Err("the Indices output of MaxPool".into());
    }
    Ok(())
}

fn params(ctx: &OpCtx, h: usize, w: usize, n: usize) -> Result<Pool2dParams> {
    let node = ctx.node;
    let two = |name: &str, default: usize| -> Vec<usize> {
        let v: Vec<usize> = node
            .attr_ints(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
            .unwrap_or_else(|| vec![default; n]);
        if n == 1 {
            vec![1, v[0]]
        } else {
            v
        }
    };
    let kernel = two("kernel_shape", 1);
    let stride = two("strides", 1);
    let dilation = two("dilations", 1);
    let raw: Vec<usize> = node
        .attr_ints("pads")
        .map(|p| p.iter().map(|&x| x.max(0) as usize).collect())
        .unwrap_or_else(|| vec![0; 2 * n]);
    if raw.len() != 2 * n {
        return Err(ctx.err(&format!(
            "pads has {} entries, expected {}",
            raw.len(),
            2 * n
        )));
    }
    let mut pads = if n == 1 {
        [0, raw[0], 0, raw[1]]
    } else {
        [raw[0], raw[1], raw[2], raw[3]]
    };
    let auto_pad = node.attr_string("auto_pad").unwrap_or_default();
    if auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER" {
        let spatial = [h, w];
        for a in 0..2 {
            let out = spatial[a].div_ceil(stride[a]);
            // onnxruntime sizes SAME padding by the undilated kernel.
            let needed = out.saturating_sub(1) * stride[a] + kernel[a];
            let total = needed.saturating_sub(spatial[a]);
            let small = total / 2;
            let (b, e) = if auto_pad == "SAME_UPPER" {
                (small, total - small)
            } else {
                (total - small, small)
            };
            pads[a] = b;
            pads[a + 2] = e;
        }
    } else if auto_pad == "VALID" {
        pads = [0; 4];
    }
    Ok(Pool2dParams {
        kernel: [kernel[0], kernel[1]],
        stride: [stride[0], stride[1]],
        dilation: [dilation[0], dilation[1]],
        pads,
        ceil_mode: node.int_or("ceil_mode", 0) != 0,
        count_include_pad: node.int_or("count_include_pad", 0) != 0,
    })
}

fn pool(
    ctx: &OpCtx,
    f: fn(&Tensor, &Pool2dParams) -> candle_core::Result<Tensor>,
) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let (x4, n) = match x.rank() {
        3 => (x.unsqueeze(2)?, 1),
        4 => (x, 2),
        r => return Err(ctx.unsupported(&format!("pooling over input of rank {r}"))),
    };
    let (_, _, h, w) = x4.dims4()?;
    let p = params(ctx, h, w, n)?;
    let y = f(&x4, &p)?;
    let y = if n == 1 { y.squeeze(2)? } else { y };
    Ok(vec![Value::new(y, xv.dtype)])
}

pub fn max_pool(ctx: &OpCtx) -> Result<Vec<Value>> {
    pool(ctx, pool2d::max_pool2d)
}

pub fn average_pool(ctx: &OpCtx) -> Result<Vec<Value>> {
    pool(ctx, pool2d::avg_pool2d)
}

pub fn global_average_pool(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let dims = x.dims().to_vec();
    if dims.len() < 3 {
        return Err(ctx.err(&format!(
            "input of rank {}, expected at least 3",
            dims.len()
        )));
    }
    let spatial: usize = dims[2..].iter().product();
    let mut out = dims[..2].to_vec();
    out.extend(std::iter::repeat_n(1, dims.len() - 2));
    let y = x
        .reshape((dims[0], dims[1], spatial))?
        .mean_keepdim(2)?
        .reshape(out)?;
    Ok(vec![Value::new(y, xv.dtype)])
}

pub fn global_max_pool(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let dims = x.dims().to_vec();
    if dims.len() < 3 {
        return Err(ctx.err(&format!(
            "input of rank {}, expected at least 3",
            dims.len()
        )));
    }
    let spatial: usize = dims[2..].iter().product();
    let mut out = dims[..2].to_vec();
    out.extend(std::iter::repeat_n(1, dims.len() - 2));
    let y = x
        .reshape((dims[0], dims[1], spatial))?
        .max_keepdim(2)?
        .reshape(out)?;
    Ok(vec![Value::new(y, xv.dtype)])
}
