//! Gemm (transA, transB, alpha, beta, broadcast C) and MatMul (numpy
//! semantics: 1-D operands, batched and broadcast batch dimensions).

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;

pub fn gemm(ctx: &OpCtx) -> Result<Vec<Value>> {
    let av = ctx.input(0)?;
    let mut a = ctx.float_tensor(0)?;
    let mut b = ctx.float_tensor(1)?;
    if a.rank() != 2 || b.rank() != 2 {
        return Err(ctx.err(&format!(
            "Gemm needs 2-D A and B, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    if ctx.node.int_or("transA", 0) != 0 {
        a = a.t()?;
    }
    if ctx.node.int_or("transB", 0) != 0 {
        b = b.t()?;
    }
    if a.dim(1)? != b.dim(0)? {
        return Err(ctx.err(&format!(
            "Gemm inner dimensions differ: A' {:?}, B' {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let alpha = ctx.node.float_or("alpha", 1.0) as f64;
    let beta = ctx.node.float_or("beta", 1.0) as f64;
    let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
    if alpha != 1.0 {
        y = (y * alpha)?;
    }
    if ctx.opt_input(2).is_some() {
        let c = ctx.float_tensor(2)?;
        let c = if beta != 1.0 { (c * beta)? } else { c };
        y = y.broadcast_add(&c)?;
    }
    Ok(vec![Value::new(y, av.dtype)])
}

pub fn matmul(ctx: &OpCtx) -> Result<Vec<Value>> {
    let av = ctx.input(0)?;
    let a = ctx.float_tensor(0)?;
    let b = ctx.float_tensor(1)?;
    let y = matmul_numpy(&a, &b)
        .map_err(|e| ctx.err(&format!("MatMul of {:?} and {:?}: {e}", a.dims(), b.dims())))?;
    Ok(vec![Value::new(y, av.dtype)])
}

/// numpy.matmul: promotes 1-D operands, broadcasts batch dimensions.
pub fn matmul_numpy(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let a_vec = a.rank() == 1;
    let b_vec = b.rank() == 1;
    let a2 = if a_vec { a.unsqueeze(0)? } else { a.clone() };
    let b2 = if b_vec { b.unsqueeze(1)? } else { b.clone() };
    let y = if a2.rank() == 2 && b2.rank() == 2 {
        a2.contiguous()?.matmul(&b2.contiguous()?)?
    } else if b2.rank() == 2 {
        // [.., M, K] x [K, N]: fold the batch into M for one large GEMM.
        let dims = a2.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = a2.elem_count() / k;
        let y = a2
            .contiguous()?
            .reshape((rows, k))?
            .matmul(&b2.contiguous()?)?;
        let mut out = dims.clone();
        out[dims.len() - 1] = b2.dim(1)?;
        y.reshape(out)?
    } else {
        a2.contiguous()?.broadcast_matmul(&b2.contiguous()?)?
    };
    let y = if a_vec { y.squeeze(y.rank() - 2)? } else { y };
    if b_vec {
        y.squeeze(y.rank() - 1)
    } else {
        Ok(y)
    }
}
