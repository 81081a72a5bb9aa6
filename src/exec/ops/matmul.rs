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
    // In forward-only passes candle multiplies a transposed operand in place (gemm reads it
    // with swapped strides): copying the transposed weight on every call cost 2.7% of
    // MobileNetV2's forward pass. With gradients tracked, operands are made contiguous as
    // before: the gradients are the same, but the other summation order changed AdaRound's
    // optimisation enough to fail its unit test.
    let tracked = a.track_op() || b.track_op();
    let strided = if tracked { None } else { a.matmul(&b).ok() };
    let mut y = match strided {
        Some(y) => y,
        None => a.contiguous()?.matmul(&b.contiguous()?)?,
    };
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

#[cfg(test)]
mod tests {
    use crate::exec::ops::op_test_util::{assert_close, f32s, f32v, run1};
    use crate::graph::Node;

    /// Gemm with transposed operands (the strided, copy-free path of forward-only runs)
    /// against the product written out.
    #[test]
    fn gemm_with_transposed_operands() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..k * m).map(|i| (i as f32 * 0.37).sin()).collect(); // [k, m]
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect(); // [n, k]
        let mut node = Node::new("g", "Gemm", &["a", "b"], &["y"]);
        node.set_int("transA", 1);
        node.set_int("transB", 1);
        let y = run1(
            &node,
            13,
            &[("a", &f32v(&[k, m], &a)), ("b", &f32v(&[n, k], &b))],
        );
        let want: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k).map(|t| a[t * m + i] * b[j * k + t]).sum()
            })
            .collect();
        assert_close(&f32s(&y), &want, 1e-5);
    }
}
