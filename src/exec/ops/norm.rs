//! BatchNormalization (inference form, running statistics) and
//! LayerNormalization (over the trailing axes from `axis`).

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::Node;

pub fn check_batch_norm(node: &Node) -> std::result::Result<(), String> {
    if node.int_or("training_mode", 0) != 0 {
        return Err("training_mode=1 (batch statistics) in an inference graph".into());
    }
    Ok(())
}

/// y = (x - mean) / sqrt(var + eps) * scale + bias, per channel (axis 1).
pub fn batch_norm(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let eps = ctx.node.float_or("epsilon", 1e-5) as f64;
    let rank = x.rank();
    if rank < 2 {
        return Err(ctx.err(&format!("input of rank {rank}, expected at least 2")));
    }
    let channels = x.dim(1)?;
    let mut shape = vec![1usize; rank];
    shape[1] = channels;
    let per_channel = |i: usize| -> Result<Tensor> {
        let t = ctx.float_tensor(i)?;
        if t.elem_count() != channels {
            return Err(ctx.err(&format!(
                "input #{i} has {} elements for {channels} channels",
                t.elem_count()
            )));
        }
        Ok(t.reshape(shape.as_slice())?)
    };
    let (scale, bias, mean, var) = (
        per_channel(1)?,
        per_channel(2)?,
        per_channel(3)?,
        per_channel(4)?,
    );
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_mul(&inv_std.broadcast_mul(&scale)?)?
        .broadcast_add(&bias)?;
    Ok(vec![Value::new(y, xv.dtype)])
}

pub fn layer_norm(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let rank = x.rank();
    let axis = ctx.axis(ctx.node.int_or("axis", -1), rank)?;
    let eps = ctx.node.float_or("epsilon", 1e-5) as f64;
    let dims = x.dims().to_vec();
    let rows: usize = dims[..axis].iter().product();
    let cols: usize = dims[axis..].iter().product();
    let flat = x.reshape((rows, cols))?;
    let mean = flat.mean_keepdim(1)?;
    let centered = flat.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(1)?;
    let inv_std = (var + eps)?.sqrt()?.recip()?;
    let normed = centered.broadcast_mul(&inv_std)?.reshape(dims.as_slice())?;
    let mut y = normed.broadcast_mul(&ctx.float_tensor(1)?)?;
    if ctx.opt_input(2).is_some() {
        y = y.broadcast_add(&ctx.float_tensor(2)?)?;
    }
    let mut stat_shape = dims.clone();
    for d in stat_shape.iter_mut().skip(axis) {
        *d = 1;
    }
    let mut outs = vec![Value::new(y, xv.dtype)];
    if ctx.node.outputs.len() > 1 {
        outs.push(Value::new(mean.reshape(stat_shape.as_slice())?, xv.dtype));
    }
    if ctx.node.outputs.len() > 2 {
        outs.push(Value::new(
            inv_std.reshape(stat_shape.as_slice())?,
            xv.dtype,
        ));
    }
    Ok(outs)
}

/// LRN: y = x / (bias + alpha / size * sum of x² over a window of channels)^beta.
pub fn lrn(ctx: &OpCtx) -> Result<Vec<Value>> {
    let xv = ctx.input(0)?;
    let x = ctx.float_tensor(0)?;
    let size = ctx
        .node
        .attr_int("size")
        .ok_or_else(|| ctx.err("missing 'size'"))?
        .max(1) as usize;
    let alpha = ctx.node.float_or("alpha", 1e-4) as f64;
    let beta = ctx.node.float_or("beta", 0.75) as f64;
    let bias = ctx.node.float_or("bias", 1.0) as f64;
    let channels = x.dim(1)?;
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let padded = x.sqr()?.pad_with_zeros(1, before, after)?;
    let mut window = padded.narrow(1, 0, channels)?;
    for offset in 1..size {
        window = (window + padded.narrow(1, offset, channels)?)?;
    }
    let denom = window.affine(alpha / size as f64, bias)?.powf(beta)?;
    Ok(vec![Value::new((x / denom)?, xv.dtype)])
}
