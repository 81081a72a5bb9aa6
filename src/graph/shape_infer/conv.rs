//! Rules for the compute-heavy ops: Conv/ConvTranspose (1-D, 2-D, 3-D with
//! pads, auto_pad, strides, dilations, output_padding, output_shape),
//! pooling (ceil_mode included), Gemm, MatMul (numpy rules) and the
//! normalizations. Channel and inner-dimension mismatches are errors.

use super::val::{broadcast, Cx, Val};
use crate::graph::{DType, Dim, GraphError};

/// Geometry attributes shared by Conv, ConvTranspose and pooling.
struct Window {
    kernel: Vec<Option<i64>>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
    auto_pad: String,
}

impl Window {
    fn read(cx: &Cx, n: usize, weight: Option<&[Dim]>) -> Result<Window, GraphError> {
        let kernel: Vec<Option<i64>> = match cx.node.attr_ints("kernel_shape") {
            Some(k) if !k.is_empty() => k.iter().map(|&v| Some(v)).collect(),
            _ => match weight {
                Some(w) if w.len() == n + 2 => w[2..].iter().map(Dim::known).collect(),
                _ => vec![None; n],
            },
        };
        let w = Window {
            kernel,
            strides: cx.attr_ints_or("strides", n, 1),
            dilations: cx.attr_ints_or("dilations", n, 1),
            pads: cx.attr_ints_or("pads", 2 * n, 0),
            auto_pad: cx
                .node
                .attr_string("auto_pad")
                .unwrap_or_else(|| "NOTSET".into()),
        };
        if w.kernel.len() != n
            || w.strides.len() != n
            || w.dilations.len() != n
            || w.pads.len() != 2 * n
        {
            return Err(cx.err(format!(
                "kernel_shape {:?}, strides {:?}, dilations {:?} or pads {:?} do not match {n} spatial dims of {}",
                w.kernel, w.strides, w.dilations, w.pads, cx.desc(0)
            )));
        }
        if w.strides.iter().chain(&w.dilations).any(|&v| v <= 0) {
            return Err(cx.err(format!(
                "strides {:?} and dilations {:?} must be positive",
                w.strides, w.dilations
            )));
        }
        Ok(w)
    }

    /// Output length of spatial axis `i` for an input of length `input`.
    fn out(&self, cx: &Cx, i: usize, input: &Dim, ceil: bool) -> Result<Dim, GraphError> {
        // i128 keeps hostile attribute values from overflowing.
        let Dim::Known(len) = *input else {
            return Ok(Dim::Unknown);
        };
        let (len, s) = (len as i128, self.strides[i] as i128);
        if self.auto_pad.starts_with("SAME") {
            return Ok(to_dim((len + s - 1) / s));
        }
        let Some(k) = self.kernel[i] else {
            return Ok(Dim::Unknown);
        };
        let (pb, pe) = if self.auto_pad == "VALID" {
            (0, 0)
        } else {
            (
                self.pads[i] as i128,
                self.pads[i + self.strides.len()] as i128,
            )
        };
        let eff = (k as i128 - 1) * self.dilations[i] as i128 + 1;
        let total = len + pb + pe - eff;
        if total < 0 {
            return Err(cx.err(format!(
                "window {eff} (kernel {k}, dilation {}) is larger than axis {} of {} padded by {pb}+{pe}",
                self.dilations[i],
                i + 2,
                cx.desc(0)
            )));
        }
        if !ceil {
            return Ok(to_dim(total / s + 1));
        }
        let mut out = (total + s - 1) / s + 1;
        if (out - 1) * s >= len + pb {
            out -= 1;
        }
        Ok(to_dim(out))
    }
}

fn to_dim(v: i128) -> Dim {
    i64::try_from(v).map_or(Dim::Unknown, Dim::Known)
}

/// Conv, ConvInteger and QLinearConv.
pub(super) fn conv(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let q = cx.node.op_type == "QLinearConv";
    let (wi, bi) = if q { (3, 8) } else { (1, 2) };
    let dtype = match cx.node.op_type.as_str() {
        "ConvInteger" => Some(DType::I32),
        "QLinearConv" => cx.x(7).dtype,
        _ => cx.x(0).dtype.or(cx.x(wi).dtype),
    };
    let (x, w) = (cx.x(0).shape.as_deref(), cx.x(wi).shape.as_deref());
    let Some(rank) = x.or(w).map(<[Dim]>::len) else {
        return Ok(vec![Val::new(dtype, None)]);
    };
    if rank < 3 {
        return Err(cx.err(format!(
            "Conv needs rank >= 3, got {} and weight {}",
            cx.desc(0),
            cx.desc(wi)
        )));
    }
    let group = cx.int("group", 1);
    if let (Some(xs), Some(ws)) = (x, w) {
        if xs.len() != ws.len() {
            return Err(cx.err(format!(
                "input {} and weight {} differ in rank",
                cx.desc(0),
                cx.desc(wi)
            )));
        }
        if let (Dim::Known(c), Dim::Known(wc)) = (&xs[1], &ws[1]) {
            if Some(*c) != wc.checked_mul(group) {
                return Err(cx.err(format!(
                    "input {} has {c} channels but weight {} expects {} (= {wc} x group {group})",
                    cx.desc(0),
                    cx.desc(wi),
                    wc.saturating_mul(group)
                )));
            }
        }
        if let Dim::Known(m) = ws[0] {
            if group <= 0 || m % group != 0 {
                return Err(cx.err(format!(
                    "weight {} has {m} filters, not divisible by group {group}",
                    cx.desc(wi)
                )));
            }
        }
    }
    let m = w.map_or(Dim::Unknown, |w| w[0].clone());
    if let (Some([Dim::Known(b)]), Dim::Known(m)) = (cx.x(bi).shape.as_deref(), &m) {
        if b != m {
            return Err(cx.err(format!(
                "bias {} does not match {m} filters of weight {}",
                cx.desc(bi),
                cx.desc(wi)
            )));
        }
    }
    let Some(xs) = x else {
        return Ok(vec![Val::new(dtype, Some(unknown_spatial(m, rank)))]);
    };
    let win = Window::read(cx, rank - 2, w)?;
    let mut out = vec![xs[0].clone(), m];
    for (i, d) in xs[2..].iter().enumerate() {
        out.push(win.out(cx, i, d, false)?);
    }
    Ok(vec![Val::new(dtype, Some(out))])
}

fn unknown_spatial(channels: Dim, rank: usize) -> Vec<Dim> {
    let mut v = vec![Dim::Unknown, channels];
    v.resize(rank, Dim::Unknown);
    v
}

pub(super) fn conv_transpose(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let dtype = cx.x(0).dtype.or(cx.x(1).dtype);
    let (x, w) = (cx.x(0).shape.as_deref(), cx.x(1).shape.as_deref());
    let Some(rank) = x.or(w).map(<[Dim]>::len).filter(|&r| r >= 3) else {
        return Ok(vec![Val::new(dtype, None)]);
    };
    let group = cx.int("group", 1);
    if let (Some(xs), Some(ws)) = (x, w) {
        if xs.len() != ws.len() {
            return Err(cx.err(format!(
                "input {} and weight {} differ in rank",
                cx.desc(0),
                cx.desc(1)
            )));
        }
        if let (Dim::Known(c), Dim::Known(wc)) = (&xs[1], &ws[0]) {
            if c != wc {
                return Err(cx.err(format!(
                    "input {} has {c} channels but weight {} expects {wc}",
                    cx.desc(0),
                    cx.desc(1)
                )));
            }
        }
    }
    let m = w.map_or(Dim::Unknown, |w| match &w[1] {
        Dim::Known(v) => Dim::Known(v.saturating_mul(group)),
        _ => Dim::Unknown,
    });
    let Some(xs) = x else {
        return Ok(vec![Val::new(dtype, Some(unknown_spatial(m, rank)))]);
    };
    let n = rank - 2;
    let mut out = vec![xs[0].clone(), m];
    if let Some(os) = cx.node.attr_ints("output_shape").filter(|v| !v.is_empty()) {
        let tail = &os[os.len().saturating_sub(n)..];
        out.extend(tail.iter().map(|&v| Dim::Known(v)));
        out.resize(rank, Dim::Unknown);
        return Ok(vec![Val::new(dtype, Some(out))]);
    }
    let win = Window::read(cx, n, w)?;
    let opad = cx.attr_ints_or("output_padding", n, 0);
    for (i, d) in xs[2..].iter().enumerate() {
        let s = win.strides[i];
        out.push(match (d, win.kernel[i]) {
            (Dim::Known(len), _) if win.auto_pad.starts_with("SAME") => {
                Dim::Known(len.saturating_mul(s))
            }
            (Dim::Known(len), Some(k)) => {
                let (pb, pe) = if win.auto_pad == "VALID" {
                    (0, 0)
                } else {
                    (win.pads[i], win.pads[i + n])
                };
                let eff = (k as i128 - 1) * win.dilations[i] as i128 + 1;
                let op = opad.get(i).copied().unwrap_or(0) as i128;
                to_dim(s as i128 * (*len as i128 - 1) + op + eff - pb as i128 - pe as i128)
            }
            _ => Dim::Unknown,
        });
    }
    Ok(vec![Val::new(dtype, Some(out))])
}

/// MaxPool, AveragePool, LpPool (MaxPool's optional indices are int64).
pub(super) fn pool(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let x = cx.x(0);
    let Some(xs) = x.shape.as_deref().filter(|s| s.len() >= 3) else {
        return Ok(vec![x.like(), Val::new(Some(DType::I64), None)]);
    };
    let win = Window::read(cx, xs.len() - 2, None)?;
    let ceil = cx.int("ceil_mode", 0) != 0;
    let mut out = xs[..2].to_vec();
    for (i, d) in xs[2..].iter().enumerate() {
        out.push(win.out(cx, i, d, ceil)?);
    }
    Ok(vec![
        Val::new(x.dtype, Some(out.clone())),
        Val::new(Some(DType::I64), Some(out)),
    ])
}

pub(super) fn global_pool(cx: &Cx) -> Vec<Val> {
    let x = cx.x(0);
    let shape = x.shape.as_ref().map(|s| {
        s.iter()
            .enumerate()
            .map(|(i, d)| if i < 2 { d.clone() } else { Dim::Known(1) })
            .collect()
    });
    vec![Val::new(x.dtype, shape)]
}

pub(super) fn gemm(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let dtype = cx.x(0).dtype.or(cx.x(1).dtype);
    let (Some(a), Some(b)) = (cx.x(0).shape.as_deref(), cx.x(1).shape.as_deref()) else {
        return Ok(vec![Val::new(
            dtype,
            Some(vec![Dim::Unknown, Dim::Unknown]),
        )]);
    };
    if a.len() != 2 || b.len() != 2 {
        return Err(cx.err(format!(
            "Gemm needs 2-D operands, got {} and {}",
            cx.desc(0),
            cx.desc(1)
        )));
    }
    let (ta, tb) = (cx.int("transA", 0) != 0, cx.int("transB", 0) != 0);
    let (m, ka) = if ta { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
    let (kb, n) = if tb { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(cx.err(format!(
                "inner dims disagree: A {} (transA={}) has K={x}, B {} (transB={}) has K={y}",
                cx.desc(0),
                ta as i32,
                cx.desc(1),
                tb as i32
            )));
        }
    }
    Ok(vec![Val::new(dtype, Some(vec![m.clone(), n.clone()]))])
}

/// MatMul (numpy semantics), MatMulInteger (int32) and QLinearMatMul.
pub(super) fn matmul(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let (ai, bi) = if cx.node.op_type == "QLinearMatMul" {
        (0, 3)
    } else {
        (0, 1)
    };
    let dtype = match cx.node.op_type.as_str() {
        "MatMulInteger" => Some(DType::I32),
        "QLinearMatMul" => cx.x(7).dtype,
        _ => cx.x(ai).dtype.or(cx.x(bi).dtype),
    };
    let (Some(a), Some(b)) = (cx.x(ai).shape.as_deref(), cx.x(bi).shape.as_deref()) else {
        return Ok(vec![Val::new(dtype, None)]);
    };
    if a.is_empty() || b.is_empty() {
        return Err(cx.err(format!(
            "MatMul operands must not be scalars: {} and {}",
            cx.desc(ai),
            cx.desc(bi)
        )));
    }
    let a2: Vec<Dim> = if a.len() == 1 {
        vec![Dim::Known(1), a[0].clone()]
    } else {
        a.to_vec()
    };
    let b2: Vec<Dim> = if b.len() == 1 {
        vec![b[0].clone(), Dim::Known(1)]
    } else {
        b.to_vec()
    };
    let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
    if let (Dim::Known(x), Dim::Known(y)) = (ka, kb) {
        if x != y {
            return Err(cx.err(format!(
                "inner dims disagree: {} has K={x} but {} has K={y}",
                cx.desc(ai),
                cx.desc(bi)
            )));
        }
    }
    let mut out = broadcast(&[&a2[..a2.len() - 2], &b2[..b2.len() - 2]]).map_err(|e| {
        cx.err(format!(
            "batch dims of {} and {} do not broadcast: {e}",
            cx.desc(ai),
            cx.desc(bi)
        ))
    })?;
    if a.len() > 1 {
        out.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        out.push(b2[b2.len() - 1].clone());
    }
    Ok(vec![Val::new(dtype, Some(out))])
}

pub(super) fn batch_norm(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let x = cx.x(0);
    let c = x.shape.as_ref().and_then(|s| s.get(1));
    for i in 1..5 {
        if let (Some(Dim::Known(c)), Some([Dim::Known(p)])) = (c, cx.x(i).shape.as_deref()) {
            if c != p {
                return Err(cx.err(format!(
                    "input {} has {c} channels but {} has {p}",
                    cx.desc(0),
                    cx.desc(i)
                )));
            }
        }
    }
    let stat = Val::new(cx.x(1).dtype, c.map(|c| vec![c.clone()]));
    Ok(vec![x.like(), stat.clone(), stat])
}

/// LayerNormalization: Y like X; Mean and InvStdDev keep the leading axes.
pub(super) fn layer_norm(cx: &Cx) -> Vec<Val> {
    let x = cx.x(0);
    let stat_type = Some(DType(cx.int("stash_type", 1) as i32));
    let stat_shape = x.shape.as_ref().and_then(|s| {
        let axis = super::val::norm_axis(cx.int("axis", -1), s.len())?;
        Some(
            s.iter()
                .enumerate()
                .map(|(i, d)| if i < axis { d.clone() } else { Dim::Known(1) })
                .collect(),
        )
    });
    vec![
        x.like(),
        Val::new(stat_type, stat_shape.clone()),
        Val::new(stat_type, stat_shape),
    ]
}
