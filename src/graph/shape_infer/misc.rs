//! Rules for Expand, Tile, Pad, Resize/Upsample (scales or sizes), the
//! Reduce* family (axes as attribute or input, keepdims,
//! noop_with_empty_axes), ArgMax/ArgMin, TopK and DepthToSpace/SpaceToDepth.

use super::val::{add_dim, broadcast, mul_dim, norm_axis, Cx, Ints, Val};
use crate::graph::{DType, Dim, GraphError};

pub(super) fn expand(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let target: Option<Vec<Dim>> = cx.x(1).ints.clone().or_else(|| {
        let r = cx.x(1).known_shape()?.first().copied()?;
        (0..=super::val::MAX_RANK)
            .contains(&r)
            .then(|| vec![Dim::Unknown; r as usize])
    });
    let (Some(s), Some(t)) = (&x.shape, target) else {
        return Ok(Val::new(x.dtype, None));
    };
    let shape = broadcast(&[s, &t]).map_err(|e| {
        cx.err(format!(
            "cannot expand {} to {}: {e}",
            cx.desc(0),
            crate::graph::shape_string(&t)
        ))
    })?;
    let mut out = Val::new(x.dtype, Some(shape));
    if let (Some([v]), Some(n)) = (x.ints.as_deref(), out.numel()) {
        if n <= super::val::MAX_TRACKED {
            out = out.with_ints(vec![v.clone(); n]);
        }
    }
    Ok(out)
}

pub(super) fn tile(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let shape = match cx.x(1).known_ints() {
        Some(r) if r.len() == s.len() => s.iter().zip(&r).map(|(d, &k)| mul_dim(d, k)).collect(),
        Some(r) => {
            return Err(cx.err(format!(
                "repeats {r:?} do not match the rank of {}",
                cx.desc(0)
            )))
        }
        None => vec![Dim::Unknown; s.len()],
    };
    Ok(Val::new(x.dtype, Some(shape)))
}

/// Pad: pads as attribute (opset < 11) or input, optional `axes` input (opset 18).
pub(super) fn pad(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let r = s.len();
    let axes: Option<Vec<usize>> = match cx.input_ints(3) {
        Ints::Known(a) => a.iter().map(|&a| norm_axis(a, r)).collect(),
        Ints::Absent => Some((0..r).collect()),
        Ints::Unknown => None,
    };
    let (Ints::Known(pads), Some(axes)) = (cx.ints("pads", 1), axes) else {
        return Ok(Val::new(x.dtype, Some(vec![Dim::Unknown; r])));
    };
    if pads.len() != 2 * axes.len() {
        return Err(cx.err(format!(
            "pads {pads:?} do not match {} axes of {}",
            axes.len(),
            cx.desc(0)
        )));
    }
    let mut out = s.clone();
    for (i, &a) in axes.iter().enumerate() {
        out[a] = add_dim(&s[a], pads[i].saturating_add(pads[i + axes.len()]));
        if matches!(out[a], Dim::Known(v) if v < 0) {
            return Err(cx.err(format!(
                "pads {pads:?} remove more than axis {a} of {}",
                cx.desc(0)
            )));
        }
    }
    Ok(Val::new(x.dtype, Some(out)))
}

/// Resize (opset 10: X, scales; 11+: X, roi, scales, sizes) and Upsample.
pub(super) fn resize(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let r = s.len();
    let mut out = vec![Dim::Unknown; r];
    let (scales_at, sizes_at) = if cx.node.op_type == "Upsample" || cx.opset < 11 {
        (1, None)
    } else {
        (2, Some(3))
    };
    let axes: Vec<usize> = match cx.node.attr_ints("axes").filter(|a| !a.is_empty()) {
        Some(a) => a.iter().map(|&v| cx.axis(v, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    let sizes = sizes_at
        .and_then(|i| cx.x(i).ints.clone())
        .filter(|v| !v.is_empty());
    let scales = match cx.node.attr_floats("scales").filter(|v| !v.is_empty()) {
        Some(f) => Some(f.iter().map(|&v| v as f64).collect()),
        None => cx.x(scales_at).numbers().filter(|v| !v.is_empty()),
    };
    let given = sizes
        .as_ref()
        .map(Vec::len)
        .or(scales.as_ref().map(Vec::len));
    if given.is_some_and(|n| n != axes.len()) {
        return Err(cx.err(format!(
            "{} scales/sizes given for {} axes of {}",
            given.unwrap_or(0),
            axes.len(),
            cx.desc(0)
        )));
    }
    for (k, d) in s.iter().enumerate() {
        if !axes.contains(&k) {
            out[k] = d.clone();
        }
    }
    if let Some(sizes) = sizes {
        let policy = cx
            .node
            .attr_string("keep_aspect_ratio_policy")
            .unwrap_or_else(|| "stretch".into());
        if policy == "stretch" {
            axes.iter()
                .zip(&sizes)
                .for_each(|(&a, v)| out[a] = v.clone());
        } else if let (Some(ins), Some(sizes)) = (
            axes.iter()
                .map(|&a| s[a].known())
                .collect::<Option<Vec<i64>>>(),
            sizes.iter().map(Dim::known).collect::<Option<Vec<i64>>>(),
        ) {
            let ratios = ins
                .iter()
                .zip(&sizes)
                .map(|(&i, &o)| o as f64 / i.max(1) as f64);
            let scale = if policy == "not_smaller" {
                ratios.fold(0.0, f64::max)
            } else {
                ratios.fold(f64::MAX, f64::min)
            };
            axes.iter()
                .zip(&ins)
                .for_each(|(&a, &i)| out[a] = Dim::Known((scale * i as f64 + 0.5).floor() as i64));
        }
    } else if let Some(scales) = scales {
        for (&a, &f) in axes.iter().zip(&scales) {
            out[a] = match &s[a] {
                Dim::Known(v) => Dim::Known((*v as f32 * f as f32).floor() as i64),
                d if f == 1.0 => d.clone(),
                _ => Dim::Unknown,
            };
        }
    }
    Ok(Val::new(x.dtype, Some(out)))
}

/// Reduce*: axes from the attribute or (ReduceSum 13+, all 18+) the input.
pub(super) fn reduce(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let keep = cx.int("keepdims", 1) != 0;
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let axes = match cx.ints("axes", 1) {
        Ints::Known(a) => a,
        Ints::Absent => vec![],
        Ints::Unknown if keep => return Ok(Val::new(x.dtype, Some(vec![Dim::Unknown; s.len()]))),
        Ints::Unknown => return Ok(Val::new(x.dtype, None)),
    };
    if axes.is_empty() && cx.int("noop_with_empty_axes", 0) != 0 {
        return Ok(x.clone());
    }
    let mut reduced = vec![axes.is_empty(); s.len()];
    for &a in &axes {
        reduced[cx.axis(a, s.len())?] = true;
    }
    let shape = s
        .iter()
        .zip(&reduced)
        .filter(|(_, &red)| keep || !red)
        .map(|(d, &red)| if red { Dim::Known(1) } else { d.clone() })
        .collect();
    let mut out = Val::new(x.dtype, Some(shape));
    if let Some(v) = x.known_ints().filter(|v| !v.is_empty() && s.len() <= 1) {
        let r = match cx.node.op_type.as_str() {
            "ReduceSum" => v.iter().try_fold(0i64, |a, &b| a.checked_add(b)),
            "ReduceProd" => v.iter().try_fold(1i64, |a, &b| a.checked_mul(b)),
            "ReduceMax" => v.iter().copied().max(),
            "ReduceMin" => v.iter().copied().min(),
            _ => None,
        };
        if let Some(r) = r {
            out = out.with_ints(vec![Dim::Known(r)]);
        }
    }
    Ok(out)
}

pub(super) fn arg_reduce(cx: &Cx) -> Result<Val, GraphError> {
    let Some(s) = &cx.x(0).shape else {
        return Ok(Val::new(Some(DType::I64), None));
    };
    let axis = cx.axis(cx.int("axis", 0), s.len())?;
    let keep = cx.int("keepdims", 1) != 0;
    let mut shape = s.clone();
    if keep {
        shape[axis] = Dim::Known(1);
    } else {
        shape.remove(axis);
    }
    Ok(Val::new(Some(DType::I64), Some(shape)))
}

pub(super) fn top_k(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(vec![x.like(), Val::new(Some(DType::I64), None)]);
    };
    let axis = cx.axis(cx.int("axis", -1), s.len())?;
    let k = match cx.node.attr_int("k") {
        Some(k) => Some(k),
        None => cx.x(1).known_ints().and_then(|v| v.first().copied()),
    };
    let mut shape = s.clone();
    shape[axis] = k.map_or(Dim::Unknown, Dim::Known);
    Ok(vec![
        Val::new(x.dtype, Some(shape.clone())),
        Val::new(Some(DType::I64), Some(shape)),
    ])
}

pub(super) fn depth_space(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let b = cx.int("blocksize", 1);
    let Some(s) = x.shape.as_ref().filter(|s| s.len() == 4) else {
        return Ok(Val::new(x.dtype, None));
    };
    if b <= 0 {
        return Err(cx.err(format!("blocksize {b} must be positive")));
    }
    let div = |d: &Dim, k: i64| match d {
        Dim::Known(v) if v % k != 0 => Err(cx.err(format!(
            "{} is not divisible by {k} (blocksize {b})",
            cx.desc(0)
        ))),
        Dim::Known(v) => Ok(Dim::Known(v / k)),
        _ => Ok(Dim::Unknown),
    };
    let shape = if cx.node.op_type == "DepthToSpace" {
        vec![
            s[0].clone(),
            div(&s[1], b.saturating_mul(b))?,
            mul_dim(&s[2], b),
            mul_dim(&s[3], b),
        ]
    } else {
        vec![
            s[0].clone(),
            mul_dim(&s[1], b.saturating_mul(b)),
            div(&s[2], b)?,
            div(&s[3], b)?,
        ]
    };
    Ok(Val::new(x.dtype, Some(shape)))
}
