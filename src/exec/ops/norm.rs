//! BatchNormalization (running statistics, or the batch's own statistics in a
//! training executor) and LayerNormalization (over the trailing axes from `axis`).

use candle_core::{DType as CDType, Tensor};

use crate::exec::kernels::batch_norm::batch_norm_train;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::Node;

pub fn check_batch_norm(_node: &Node) -> std::result::Result<(), String> {
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
    let (scale, bias) = (per_channel(1)?, per_channel(2)?);
    // `training_mode = 1` (opset 14+) asks for batch statistics and the updated running ones.
    let training_mode = ctx.node.int_or("training_mode", 0) != 0;
    if !(ctx.train || training_mode) {
        let (mean, var) = (per_channel(3)?, per_channel(4)?);
        let inv_std = (var + eps)?.sqrt()?.recip()?;
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_mul(&inv_std.broadcast_mul(&scale)?)?
            .broadcast_add(&bias)?;
        return Ok(vec![Value::new(y, xv.dtype)]);
    }
    // Batch statistics over every axis but the channel one (biased variance).
    let (y, mean, var) = if x.device().is_cpu() && matches!(x.dtype(), CDType::F32 | CDType::F64) {
        batch_norm_train(
            &x,
            &scale.to_dtype(x.dtype())?,
            &bias.to_dtype(x.dtype())?,
            eps,
        )?
    } else {
        let axes: Vec<usize> = (0..rank).filter(|&a| a != 1).collect();
        let mean = x.mean_keepdim(axes.clone())?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(axes)?;
        let inv_std = (&var + eps)?.sqrt()?.recip()?;
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_mul(&inv_std.broadcast_mul(&scale)?)?
            .broadcast_add(&bias)?;
        (y, mean.flatten_all()?.detach(), var.flatten_all()?.detach())
    };
    let mut outs = vec![Value::new(y, xv.dtype)];
    if training_mode && ctx.node.outputs.len() > 1 {
        let momentum = ctx.node.float_or("momentum", 0.9) as f64;
        for (i, batch) in [(3, &mean), (4, &var)] {
            let running = (ctx.float_tensor(i)?.flatten_all()? * momentum)?;
            let current = (batch.to_dtype(running.dtype())? * (1.0 - momentum))?;
            outs.push(Value::new((running + current)?, xv.dtype));
        }
    }
    Ok(outs)
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

#[cfg(test)]
mod tests {
    use crate::exec::ops::op_test_util::{f32s, f32v, run_node};
    use crate::graph::Node;

    #[test]
    fn training_mode_normalizes_with_batch_statistics_and_updates_running_ones() {
        // Two channels, batch 2, 2 values each: channel 0 = [1, 3, 5, 7], channel 1 = [2, 4, 2, 4].
        let x = f32v(&[2, 2, 1, 2], &[1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 2.0, 4.0]);
        let (s, b) = (f32v(&[2], &[2.0, 1.0]), f32v(&[2], &[0.5, -1.0]));
        let (m, v) = (f32v(&[2], &[0.0, 10.0]), f32v(&[2], &[1.0, 1.0]));
        let mut node = Node::new(
            "bn",
            "BatchNormalization",
            &["x", "s", "b", "m", "v"],
            &["y", "rm", "rv"],
        );
        node.set_int("training_mode", 1);
        node.set_float("momentum", 0.75);
        node.set_float("epsilon", 0.0);
        let outs = run_node(
            &node,
            15,
            &[("x", &x), ("s", &s), ("b", &b), ("m", &m), ("v", &v)],
        )
        .unwrap();
        // Channel 0: mean 4, variance 5; channel 1: mean 3, variance 1.
        let y = f32s(&outs[0]);
        let z = |v: f32| 2.0 * (v - 4.0) / 5f32.sqrt() + 0.5;
        let want = [z(1.0), z(3.0), -2.0, 0.0, z(5.0), z(7.0), -2.0, 0.0];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
        assert_eq!(
            f32s(&outs[1]),
            vec![0.75 * 0.0 + 0.25 * 4.0, 0.75 * 10.0 + 0.25 * 3.0]
        );
        assert_eq!(f32s(&outs[2]), vec![0.75 + 0.25 * 5.0, 0.75 + 0.25 * 1.0]);
    }
}
