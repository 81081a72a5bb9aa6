//! `fold_batch_norm`: inference BatchNormalization folded into a neighbouring
//! linear layer's constant weights.
//!
//! Matches, for a BN in the ONNX domain with `training_mode = 0`, spatial
//! statistics, only its first output read, and scale/bias/mean/var constant
//! float initializers:
//! - **after** a Conv, ConvTranspose or Gemm whose output only the BN reads
//!   and whose weight (and bias/C, if any) are constant float initializers:
//!   weights scaled per output channel, bias mapped to `s·b + t` (created
//!   when missing; Gemm gets `beta = 1`); the layer takes over the BN's
//!   output name;
//! - **before** a Conv that pads nothing (all pads 0, `auto_pad` NOTSET or
//!   VALID), any group count, when the conv is the BN output's only reader:
//!   weights scaled per input channel, `Σ W·t` added to the bias.
//!
//! Guarantees: graph output names are unchanged, arithmetic is done in f64
//! and written back in each tensor's own type, a weight read by another node
//! is left intact (the rewritten copy gets a fresh name), parameters nothing
//! reads any more are removed. Other BNs stay. Excluded nodes are not touched.

use std::collections::{HashMap, HashSet};

use super::bn_math::{self, Affine, Rewritten};
use super::util::{self, NameGen};
use super::{is_excluded, PassError, PassResult};
use crate::graph::{DType, Model, Node, Tensor};

const PASS: &str = "fold_batch_norm";

/// Folds every BatchNormalization it can; returns the count folded.
pub fn fold_batch_norm(model: &Model, exclude: &HashSet<String>) -> PassResult {
    let mut m = model.clone();
    let mut total = 0;
    // A fold can expose another (Conv → BN → BN), so repeat until none is left.
    loop {
        let n = fold_once(&mut m, exclude)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    util::tidy(&mut m);
    Ok((m, total))
}

/// A float constant read as f64 with its dims and type.
struct Param {
    name: String,
    values: Vec<f64>,
    dims: Vec<i64>,
    dtype: DType,
}

fn param(m: &Model, name: Option<&str>) -> Option<Param> {
    let t: &Tensor = util::constant(m, name?)?;
    if !t.dtype.is_float() {
        return None;
    }
    Some(Param {
        name: t.name.clone(),
        values: t.to_f64_vec()?,
        dims: t.dims.clone(),
        dtype: t.dtype,
    })
}

fn fold_once(m: &mut Model, exclude: &HashSet<String>) -> Result<usize, PassError> {
    let readers = util::reader_counts(&m.graph);
    let read = |name: &str| readers.get(name).copied().unwrap_or(0);
    let producers: HashMap<String, usize> = m
        .graph
        .producers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let consumers: HashMap<String, Vec<usize>> = m
        .graph
        .consumers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut names = NameGen::new(&m.graph);
    let mut removed = HashSet::new();
    for i in 0..m.graph.nodes.len() {
        let bn = &m.graph.nodes[i];
        if bn.op_type != "BatchNormalization" || !bn.is_onnx_domain() || is_excluded(exclude, bn) {
            continue;
        }
        let Some(affine) = bn_affine(m, bn, &read)? else {
            continue;
        };
        let (x, y) = (bn.inputs[0].clone(), bn.outputs[0].clone());
        let bn = bn.clone();
        // After a layer: the BN is the only reader of the layer's output.
        if let Some(&p) = producers.get(&x).filter(|_| read(&x) == 1) {
            let layer = &m.graph.nodes[p];
            if !removed.contains(&p) && layer.outputs.len() == 1 && !is_excluded(exclude, layer) {
                if let Some(folded) = fold_after(m, p, &affine, &bn)? {
                    apply(m, &mut names, &read, p, folded);
                    m.graph.nodes[p].outputs[0] = y;
                    removed.insert(i);
                    continue;
                }
            }
        }
        // Before a conv: the conv is the only reader of the BN's output.
        let Some(&[c]) = consumers.get(&y).map(Vec::as_slice) else {
            continue;
        };
        let conv = &m.graph.nodes[c];
        if read(&y) != 1 || removed.contains(&c) || is_excluded(exclude, conv) {
            continue;
        }
        if let Some(folded) = fold_before(m, c, &affine, &bn)? {
            apply(m, &mut names, &read, c, folded);
            m.graph.nodes[c].inputs[0] = x;
            removed.insert(i);
        }
    }
    let mut idx = 0;
    m.graph.nodes.retain(|_| {
        idx += 1;
        !removed.contains(&(idx - 1))
    });
    Ok(removed.len())
}

/// The BN's affine form, `None` when the BN is not a foldable inference BN.
fn bn_affine(
    m: &Model,
    bn: &Node,
    read: &dyn Fn(&str) -> usize,
) -> Result<Option<Affine>, PassError> {
    let extra_outputs_read = bn
        .outputs
        .iter()
        .skip(1)
        .any(|o| !o.is_empty() && read(o) > 0);
    if bn.inputs.len() < 5
        || bn.outputs.is_empty()
        || bn.outputs[0].is_empty()
        || bn.inputs[0].is_empty()
        || extra_outputs_read
        || bn.int_or("training_mode", 0) != 0
        || bn.int_or("spatial", 1) != 1
    {
        return Ok(None);
    }
    let p: Option<Vec<Param>> = (1..5).map(|k| param(m, bn.input(k))).collect();
    let Some(p) = p else {
        return Ok(None);
    };
    let eps = bn.float_or("epsilon", 1e-5) as f64;
    Affine::from_bn(&p[0].values, &p[1].values, &p[2].values, &p[3].values, eps)
        .map(Some)
        .map_err(|reason| PassError::node(PASS, bn, reason))
}

/// New weight (slot 1) and bias (slot 2) tensors for a node, each with the
/// name it replaces ("" for a bias to create), plus Gemm's beta reset.
struct Folded {
    tensors: [(String, Tensor); 2],
    set_beta_one: bool,
}

fn fold_after(
    m: &Model,
    p: usize,
    bn: &Affine,
    bn_node: &Node,
) -> Result<Option<Folded>, PassError> {
    let layer = &m.graph.nodes[p];
    if !layer.is_onnx_domain() || layer.input(0).is_none() {
        return Ok(None);
    }
    let Some((w, b)) = weight_and_bias(m, layer) else {
        return Ok(None);
    };
    let bias_vals = b.as_ref().map(|b| b.values.as_slice());
    let err = |reason: String| {
        PassError::node(PASS, bn_node, format!("with {}: {reason}", layer.label()))
    };
    let group = layer.int_or("group", 1).max(1) as usize;
    let rewritten = match layer.op_type.as_str() {
        "Conv" => bn_math::after_conv(&w.values, &w.dims, bias_vals, bn),
        "ConvTranspose" => bn_math::after_conv_transpose(&w.values, &w.dims, group, bias_vals, bn),
        "Gemm" => {
            let trans_b = layer.int_or("transB", 0) != 0;
            let beta = layer.float_or("beta", 1.0) as f64;
            let c = b.as_ref().map(|b| (b.values.as_slice(), b.dims.as_slice()));
            bn_math::after_gemm(&w.values, &w.dims, trans_b, c, beta, bn)
        }
        _ => return Ok(None),
    }
    .map_err(err)?;
    make_folded(w, b, rewritten, layer.op_type == "Gemm")
        .map(Some)
        .map_err(err)
}

fn fold_before(
    m: &Model,
    c: usize,
    bn: &Affine,
    bn_node: &Node,
) -> Result<Option<Folded>, PassError> {
    let conv = &m.graph.nodes[c];
    let auto_pad = conv.attr_string("auto_pad").unwrap_or_default();
    let unpadded = conv
        .attr_ints("pads")
        .unwrap_or(&[])
        .iter()
        .all(|&p| p == 0)
        && matches!(auto_pad.as_str(), "" | "NOTSET" | "VALID");
    if conv.op_type != "Conv" || !conv.is_onnx_domain() || !unpadded {
        return Ok(None);
    }
    let Some((w, b)) = weight_and_bias(m, conv) else {
        return Ok(None);
    };
    let err = |r: String| PassError::node(PASS, bn_node, format!("with {}: {r}", conv.label()));
    let group = conv.int_or("group", 1).max(1) as usize;
    let bias_vals = b.as_ref().map(|b| b.values.as_slice());
    let rewritten = bn_math::before_conv(&w.values, &w.dims, group, bias_vals, bn).map_err(err)?;
    make_folded(w, b, rewritten, false).map(Some).map_err(err)
}

/// The constant weight (input 1) and optional constant bias (input 2).
fn weight_and_bias(m: &Model, node: &Node) -> Option<(Param, Option<Param>)> {
    let w = param(m, node.input(1))?;
    let b = match node.input(2) {
        Some(name) => Some(param(m, Some(name))?),
        None => None,
    };
    Some((w, b))
}

fn make_folded(w: Param, b: Option<Param>, r: Rewritten, gemm: bool) -> Result<Folded, String> {
    let (wv, bv, bdims) = (r.weight, r.bias, r.bias_dims);
    let (bname, bdtype, bdims) = match b {
        Some(b) => (b.name, b.dtype, bdims.unwrap_or(b.dims)),
        None => (
            String::new(),
            w.dtype,
            bdims.unwrap_or_else(|| vec![bv.len() as i64]),
        ),
    };
    let tensor = |name: &str, dtype, dims, v: &[f64]| {
        util::float_tensor(name, dtype, dims, v)
            .ok_or_else(|| format!("cannot write folded '{name}'"))
    };
    let wt = tensor(&w.name, w.dtype, w.dims, &wv)?;
    let bt = tensor(&bname, bdtype, bdims, &bv)?;
    Ok(Folded {
        tensors: [(w.name, wt), (bname, bt)],
        set_beta_one: gemm,
    })
}

/// Writes the folded tensors: in place when this node is their only reader,
/// else under a fresh name; a missing bias gets a fresh name.
fn apply(m: &mut Model, names: &mut NameGen, read: &dyn Fn(&str) -> usize, node: usize, f: Folded) {
    let weight = m.graph.nodes[node].inputs[1].clone();
    for (slot, (old, mut t)) in (1usize..).zip(f.tensors) {
        // A tensor only this node reads (or one created by an earlier fold
        // in this sweep) is rewritten in place.
        let owned = read(&old) == 1 || names.generated(&old);
        let name = if !old.is_empty() && owned {
            old
        } else if old.is_empty() {
            names.fresh(&match weight.strip_suffix("weight") {
                Some(stem) => format!("{stem}bias"),
                None => format!("{weight}_bias"),
            })
        } else {
            names.fresh(&format!("{old}_bnfold"))
        };
        t.name = name.clone();
        util::put_initializer(&mut m.graph, t);
        let inputs = &mut m.graph.nodes[node].inputs;
        if inputs.len() <= slot {
            inputs.resize(slot + 1, String::new());
        }
        inputs[slot] = name;
    }
    if f.set_beta_one {
        m.graph.nodes[node].set_float("beta", 1.0);
    }
}
