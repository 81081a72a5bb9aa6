//! Multiply-accumulate and parameter counts per node, from inferred shapes.
//!
//! Convention (shared with `scripts/count_macs.py`):
//! Conv `prod(output) * prod(W[1:])` (= N·Cout·spatial·Cin/group·kernel),
//! ConvTranspose `prod(input) * prod(W[1:])`, Gemm `M·N·K`, MatMul
//! `prod(broadcast batch dims)·M·N·K` with numpy's 1-D rules; every other op
//! counts 0. A node whose shapes are not fully known counts 0.

use crate::graph::shape_infer::InferredShapes;
use crate::graph::{Graph, Node};

fn prod(dims: &[i64]) -> u128 {
    dims.iter()
        .map(|&d| d.max(0) as u128)
        .fold(1, u128::saturating_mul)
}

/// MACs of one node; saturates instead of overflowing.
pub(super) fn node_macs(node: &Node, shapes: &InferredShapes) -> u64 {
    if !node.is_onnx_domain() {
        return 0;
    }
    let shape = |i: usize| node.input(i).and_then(|n| shapes.known_shape(n));
    let out0 = || node.outputs.first().and_then(|n| shapes.known_shape(n));
    let macs: Option<u128> = match node.op_type.as_str() {
        "Conv" => (|| Some(prod(&out0()?).saturating_mul(prod(shape(1)?.get(1..)?))))(),
        "ConvTranspose" => (|| Some(prod(&shape(0)?).saturating_mul(prod(shape(1)?.get(1..)?))))(),
        "Gemm" => (|| {
            let (a, b) = (shape(0)?, shape(1)?);
            let (&[a0, a1], &[b0, b1]) = (a.as_slice(), b.as_slice()) else {
                return None;
            };
            let (m, k) = if node.int_or("transA", 0) != 0 {
                (a1, a0)
            } else {
                (a0, a1)
            };
            let n = if node.int_or("transB", 0) != 0 {
                b0
            } else {
                b1
            };
            Some(prod(&[m, n, k]))
        })(),
        "MatMul" => (|| matmul_macs(&shape(0)?, &shape(1)?))(),
        _ => None,
    };
    macs.map_or(0, |m| u64::try_from(m).unwrap_or(u64::MAX))
}

fn matmul_macs(a: &[i64], b: &[i64]) -> Option<u128> {
    let k = *a.last()?;
    let m = if a.len() > 1 { a[a.len() - 2] } else { 1 };
    let n = if b.len() > 1 { *b.last()? } else { 1 };
    let (ba, bb) = (
        &a[..a.len().saturating_sub(2)],
        &b[..b.len().saturating_sub(2)],
    );
    let rank = ba.len().max(bb.len());
    let dim = |s: &[i64], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            1
        }
    };
    let batch: Vec<i64> = (0..rank).map(|i| dim(ba, i).max(dim(bb, i))).collect();
    Some(prod(&batch).saturating_mul(prod(&[m, n, k])))
}

/// Elements of the node's float initializer inputs (each name counted once).
pub(super) fn node_params(node: &Node, graph: &Graph) -> u64 {
    let mut seen: Vec<&str> = Vec::new();
    let mut total = 0u64;
    for name in node.inputs.iter().filter(|n| !n.is_empty()) {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        if let Some(t) = graph.initializers.get(name).filter(|t| t.dtype.is_float()) {
            total = total.saturating_add(t.numel() as u64);
        }
    }
    total
}
