//! Shape manipulation: Flatten, Reshape, Transpose, Concat, Split, Squeeze,
//! Unsqueeze, Shape, Cast, Identity/Dropout, Constant, ConstantOfShape,
//! Expand. Axes come from attributes or inputs depending on the opset.

use candle_core::{DType as CDType, Tensor};

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::value::storage_dtype;
use crate::exec::Value;
use crate::graph::{DType, Node};

pub fn identity(ctx: &OpCtx) -> Result<Vec<Value>> {
    let mut outs = vec![ctx.input(0)?.clone()];
    if ctx.node.op_type == "Dropout" && ctx.node.outputs.len() > 1 {
        let mask = Tensor::ones(ctx.input(0)?.dims(), CDType::I64, ctx.device)?;
        outs.push(Value::new(mask, DType::BOOL));
    }
    Ok(outs)
}

pub fn flatten(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let dims = v.dims();
    let axis = ctx.node.int_or("axis", 1);
    let axis = if axis < 0 {
        axis + dims.len() as i64
    } else {
        axis
    };
    if axis < 0 || axis as usize > dims.len() {
        return Err(ctx.err(&format!("axis {axis} out of range for rank {}", dims.len())));
    }
    let rows: usize = dims[..axis as usize].iter().product();
    let cols: usize = dims[axis as usize..].iter().product();
    Ok(vec![Value::new(v.tensor.reshape((rows, cols))?, v.dtype)])
}

/// Resolves an ONNX Reshape target (0 copies, -1 infers unless allowzero).
pub fn reshape_target(ctx: &OpCtx, input: &[usize], target: &[i64]) -> Result<Vec<usize>> {
    let allow_zero = ctx.node.int_or("allowzero", 0) != 0;
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *input
                    .get(i)
                    .ok_or_else(|| ctx.err("0 in shape beyond the input rank"))?,
            ),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(ctx.err(&format!("invalid target shape {target:?}"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(ctx.err(&format!("cannot reshape {input:?} to {target:?}")));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(ctx.err(&format!(
            "cannot reshape {input:?} ({total} elements) to {target:?}"
        )));
    }
    Ok(out)
}

pub fn reshape(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let target = match ctx.ints_input(1)? {
        Some(t) => t,
        None => ctx
            .node
            .attr_ints("shape")
            .map(<[i64]>::to_vec)
            .ok_or_else(|| ctx.err("no target shape"))?,
    };
    let shape = reshape_target(ctx, v.dims(), &target)?;
    Ok(vec![Value::new(v.tensor.reshape(shape)?, v.dtype)])
}

pub fn transpose(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let rank = v.rank();
    let perm: Vec<usize> = match ctx.node.attr_ints("perm") {
        Some(p) => p
            .iter()
            .map(|&a| ctx.axis(a, rank))
            .collect::<Result<_>>()?,
        None => (0..rank).rev().collect(),
    };
    Ok(vec![Value::new(
        v.tensor.permute(perm)?.contiguous()?,
        v.dtype,
    )])
}

pub fn concat(ctx: &OpCtx) -> Result<Vec<Value>> {
    let first = ctx.input(0)?;
    let axis = ctx.axis(ctx.node.int_or("axis", 0), first.rank())?;
    let float = ctx.inputs.iter().flatten().any(Value::is_float);
    let parts: Vec<Tensor> = ctx
        .inputs
        .iter()
        .flatten()
        .filter(|v| v.tensor.elem_count() > 0 || v.rank() == first.rank())
        .map(|v| {
            if float {
                v.tensor.to_dtype(ctx.float)
            } else {
                Ok(v.tensor.clone())
            }
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(vec![Value::new(Tensor::cat(&parts, axis)?, first.dtype)])
}

pub fn split(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let axis = ctx.axis(ctx.node.int_or("axis", 0), v.rank())?;
    let len = v.dims()[axis];
    let n_out = ctx.node.outputs.len();
    let sizes: Vec<usize> = match ctx.ints_attr_or_input("split", 1)? {
        Some(s) if !s.is_empty() => s.iter().map(|&x| x.max(0) as usize).collect(),
        _ => {
            let parts = ctx.node.int_or("num_outputs", n_out as i64).max(1) as usize;
            let chunk = len.div_ceil(parts);
            (0..parts)
                .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return Err(ctx.err(&format!("split sizes {sizes:?} do not add up to {len}")));
    }
    let mut outs = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for s in sizes {
        outs.push(Value::new(v.tensor.narrow(axis, start, s)?, v.dtype));
        start += s;
    }
    Ok(outs)
}

pub fn squeeze(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let dims = v.dims().to_vec();
    let axes: Vec<usize> = match ctx.ints_attr_or_input("axes", 1)? {
        Some(a) => a
            .iter()
            .map(|&a| ctx.axis(a, dims.len()))
            .collect::<Result<_>>()?,
        None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
    };
    if let Some(&a) = axes.iter().find(|&&a| dims[a] != 1) {
        return Err(ctx.err(&format!("cannot squeeze axis {a} of size {}", dims[a])));
    }
    let out: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    Ok(vec![Value::new(v.tensor.reshape(out)?, v.dtype)])
}

pub fn unsqueeze(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let axes = ctx
        .ints_attr_or_input("axes", 1)?
        .ok_or_else(|| ctx.err("no axes"))?;
    let rank = v.rank() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| ctx.axis(a, rank))
        .collect::<Result<_>>()?;
    axes.sort_unstable();
    let mut out = v.dims().to_vec();
    for a in axes {
        out.insert(a, 1);
    }
    Ok(vec![Value::new(v.tensor.reshape(out)?, v.dtype)])
}

pub fn shape(ctx: &OpCtx) -> Result<Vec<Value>> {
    let dims: Vec<i64> = ctx.input(0)?.dims().iter().map(|&d| d as i64).collect();
    let r = dims.len() as i64;
    let clampi = |x: i64| if x < 0 { (x + r).clamp(0, r) } else { x.clamp(0, r) } as usize;
    let start = clampi(ctx.node.int_or("start", 0));
    let end = clampi(ctx.node.int_or("end", r));
    let slice = if start < end {
        &dims[start..end]
    } else {
        &[][..]
    };
    Ok(vec![Value::new(
        Tensor::new(slice, ctx.device)?,
        DType::I64,
    )])
}

pub fn check_cast(node: &Node) -> std::result::Result<(), String> {
    let to = DType(node.int_or("to", 0) as i32);
    if storage_dtype(to, CDType::F32).is_none() {
        return Err(format!("cast to {to}"));
    }
    Ok(())
}

pub fn cast(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let to = DType(ctx.node.int_or("to", 1) as i32);
    let storage =
        storage_dtype(to, ctx.float).ok_or_else(|| ctx.unsupported(&format!("cast to {to}")))?;
    let t = if v.is_float() && !to.is_float() {
        // Float to integer truncates toward zero; bool is "non-zero".
        if to == DType::BOOL {
            v.tensor.ne(0.0)?.to_dtype(storage)?
        } else {
            truncate(&v.tensor)?.to_dtype(storage)?
        }
    } else if to == DType::BOOL {
        v.tensor.ne(0i64)?.to_dtype(storage)?
    } else {
        v.tensor.to_dtype(storage)?
    };
    let t = wrap_integer(t, to)?;
    Ok(vec![Value::new(t, to)])
}

fn truncate(t: &Tensor) -> candle_core::Result<Tensor> {
    let f = t.floor()?;
    let c = t.ceil()?;
    t.ge(0.0)?.where_cond(&f, &c)
}

/// Integer casts to narrow types wrap around as in C (e.g. int64 300 → uint8 44).
fn wrap_integer(t: Tensor, to: DType) -> candle_core::Result<Tensor> {
    let bits = match to {
        DType::I8 | DType::U8 => 8,
        DType::I16 | DType::U16 => 16,
        DType::I32 | DType::U32 => 32,
        _ => return Ok(t),
    };
    let vals = t.flatten_all()?.to_vec1::<i64>()?;
    let modulus = 1i64 << bits;
    let signed = matches!(to, DType::I8 | DType::I16 | DType::I32);
    let wrapped: Vec<i64> = vals
        .into_iter()
        .map(|v| {
            let m = v.rem_euclid(modulus);
            if signed && m >= modulus / 2 {
                m - modulus
            } else {
                m
            }
        })
        .collect();
    Tensor::from_vec(wrapped, t.shape(), t.device())
}

pub fn constant(ctx: &OpCtx) -> Result<Vec<Value>> {
    let t = ctx
        .node
        .attr_tensor("value")?
        .ok_or_else(|| ctx.unsupported("Constant without a dense 'value' tensor"))?;
    Ok(vec![Value::from_ir(&t, ctx.device, ctx.float)?])
}

pub fn constant_of_shape(ctx: &OpCtx) -> Result<Vec<Value>> {
    let shape: Vec<usize> = ctx
        .ints_input(0)?
        .unwrap_or_default()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let (value, dtype) = match ctx.node.attr_tensor("value")? {
        Some(t) => (
            t.to_f64_vec()
                .and_then(|v| v.first().copied())
                .unwrap_or(0.0),
            t.dtype,
        ),
        None => (0.0, DType::F32),
    };
    let storage = storage_dtype(dtype, ctx.float)
        .ok_or_else(|| ctx.unsupported(&format!("value of type {dtype}")))?;
    let t = if storage == CDType::I64 {
        Tensor::full(value as i64, shape, ctx.device)?
    } else {
        Tensor::full(value, shape, ctx.device)?.to_dtype(storage)?
    };
    Ok(vec![Value::new(t, dtype)])
}

pub fn expand(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let target: Vec<usize> = ctx
        .ints_input(1)?
        .unwrap_or_default()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let target_shape = candle_core::Shape::from(target);
    let shape = v
        .tensor
        .shape()
        .broadcast_shape_binary_op(&target_shape, "Expand")?;
    Ok(vec![Value::new(
        v.tensor.broadcast_as(shape)?.contiguous()?,
        v.dtype,
    )])
}
