//! Rules for the ops that select parts of a tensor: Split (all opset
//! forms), Slice (attributes or inputs, negative steps), Squeeze/Unsqueeze
//! (attribute or input axes) and Gather. Tracked integer contents follow
//! the selection, so `Shape` → `Slice`/`Gather` chains stay known.

use super::val::{norm_axis, Cx, Ints, Val};
use crate::graph::{Dim, GraphError};

/// Split in all opset forms: `split` attribute, `split` input, `num_outputs`, equal parts.
pub(super) fn split(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    let x = cx.x(0);
    let n = cx.node.outputs.len();
    let Some(s) = &x.shape else {
        return Ok(vec![x.like(); n]);
    };
    let axis = cx.axis(cx.int("axis", 0), s.len())?;
    let sizes: Option<Vec<i64>> = match cx.ints("split", 1) {
        Ints::Known(v) if !v.is_empty() => Some(v),
        Ints::Unknown => None,
        _ => match s[axis] {
            Dim::Known(d) if cx.node.attr("num_outputs").is_some() => {
                let k = cx.int("num_outputs", n as i64);
                if k != n as i64 || k < 1 {
                    return Err(cx.err(format!("num_outputs {k} does not match {n} outputs")));
                }
                let chunk = d.saturating_add(k - 1) / k;
                Some(
                    (0..k)
                        .map(|i| chunk.min(d.saturating_sub(chunk.saturating_mul(i))).max(0))
                        .collect(),
                )
            }
            Dim::Known(d) if n > 0 && d % n as i64 == 0 => Some(vec![d / n as i64; n]),
            Dim::Known(d) => {
                return Err(cx.err(format!(
                    "axis {axis} of {} (size {d}) does not split evenly into {n} outputs",
                    cx.desc(0)
                )));
            }
            _ => None,
        },
    };
    let Some(sizes) = sizes else {
        let mut shape = s.clone();
        shape[axis] = Dim::Unknown;
        return Ok(vec![Val::new(x.dtype, Some(shape)); n]);
    };
    if sizes.len() != n {
        return Err(cx.err(format!("split sizes {sizes:?} do not match {n} outputs")));
    }
    let total = sizes.iter().try_fold(0i64, |a, &b| a.checked_add(b));
    if sizes.iter().any(|&v| v < 0) || total.is_none() {
        return Err(cx.err(format!("invalid split sizes {sizes:?}")));
    }
    if let Dim::Known(d) = s[axis] {
        if total != Some(d) {
            return Err(cx.err(format!(
                "split sizes {sizes:?} do not add up to axis {axis} of {}",
                cx.desc(0)
            )));
        }
    }
    let mut outs = Vec::with_capacity(n);
    let mut offset = 0usize;
    for &len in &sizes {
        let mut shape = s.clone();
        shape[axis] = Dim::Known(len);
        let mut v = Val::new(x.dtype, Some(shape));
        if let (Some(ints), 1) = (&x.ints, s.len()) {
            if let Some(part) = ints.get(offset..offset.saturating_add(len as usize)) {
                v = v.with_ints(part.to_vec());
            }
        }
        offset = offset.saturating_add(len as usize);
        outs.push(v);
    }
    Ok(outs)
}

/// Number of elements and first index a slice takes from an axis of length `d`.
fn slice_range(d: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let (d, step) = (d.max(0) as i128, step as i128);
    let fix = |v: i64| if v < 0 { v as i128 + d } else { v as i128 };
    let (len, first) = if step > 0 {
        let s = fix(start).clamp(0, d);
        let e = fix(end).clamp(0, d);
        (((e - s).max(0) + step - 1) / step, s)
    } else {
        let s = fix(start).clamp(0, (d - 1).max(0));
        let e = fix(end).clamp(-1, d - 1);
        (((s - e).max(0) + (-step) - 1) / (-step), s)
    };
    // Both are within [0, d], so they fit in i64.
    (len as i64, first as i64)
}

pub(super) fn slice(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let (starts, ends) = (cx.ints("starts", 1), cx.ints("ends", 2));
    let axes = cx.ints("axes", 3);
    let (Ints::Known(starts), Ints::Known(ends)) = (starts, ends) else {
        let mut out = s.clone();
        match axes {
            Ints::Known(a) => a
                .iter()
                .filter_map(|&a| norm_axis(a, s.len()))
                .for_each(|a| out[a] = Dim::Unknown),
            _ => out.iter_mut().for_each(|d| *d = Dim::Unknown),
        }
        return Ok(Val::new(x.dtype, Some(out)));
    };
    let axes = match axes {
        Ints::Known(a) => a,
        Ints::Absent => (0..starts.len() as i64).collect(),
        Ints::Unknown => return Ok(Val::new(x.dtype, Some(vec![Dim::Unknown; s.len()]))),
    };
    let steps = match cx.ints("steps", 4) {
        Ints::Known(v) => v,
        Ints::Absent => vec![1; starts.len()],
        Ints::Unknown => return Ok(Val::new(x.dtype, Some(vec![Dim::Unknown; s.len()]))),
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(cx.err(format!(
            "starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?} differ in length"
        )));
    }
    let mut out = s.clone();
    let mut seen = vec![false; s.len()];
    let mut first = None;
    for i in 0..starts.len() {
        let a = cx.axis(axes[i], s.len())?;
        if std::mem::replace(&mut seen[a], true) || steps[i] == 0 {
            return Err(cx.err(format!(
                "axes {axes:?} repeat an axis or steps {steps:?} contain 0"
            )));
        }
        out[a] = match &s[a] {
            Dim::Known(d) => {
                let (len, from) = slice_range(*d, starts[i], ends[i], steps[i]);
                if a == 0 {
                    first = Some((from, steps[i], len));
                }
                Dim::Known(len)
            }
            d if starts[i] == 0 && ends[i] >= i64::MAX / 2 && steps[i] == 1 => d.clone(),
            _ => Dim::Unknown,
        };
    }
    let mut v = Val::new(x.dtype, Some(out));
    if let (Some(ints), [Dim::Known(_)]) = (&x.ints, s.as_slice()) {
        let (from, step, len) = first.unwrap_or((0, 1, ints.len() as i64));
        let picked: Option<Vec<Dim>> = (0..len)
            .map(|k| {
                let at = from as i128 + k as i128 * step as i128;
                ints.get(usize::try_from(at).ok()?).cloned()
            })
            .collect();
        if let Some(p) = picked {
            v = v.with_ints(p);
        }
    }
    Ok(v)
}

pub(super) fn squeeze(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let shape = match cx.ints("axes", 1) {
        Ints::Known(axes) if !axes.is_empty() => {
            let mut drop = vec![false; s.len()];
            for &a in &axes {
                let k = cx.axis(a, s.len())?;
                if matches!(s[k], Dim::Known(d) if d != 1) {
                    return Err(cx.err(format!(
                        "cannot squeeze axis {a} of {}: its size is not 1",
                        cx.desc(0)
                    )));
                }
                drop[k] = true;
            }
            Some(
                s.iter()
                    .zip(drop)
                    .filter(|(_, d)| !d)
                    .map(|(v, _)| v.clone())
                    .collect(),
            )
        }
        Ints::Unknown => None,
        _ if s.iter().all(|d| d.known().is_some()) => {
            Some(s.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
        }
        _ => None,
    };
    let mut v = Val::new(x.dtype, shape);
    v.ints = x.ints.clone();
    v.floats = x.floats.clone();
    Ok(v)
}

pub(super) fn unsqueeze(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let axes = match cx.ints("axes", 1) {
        Ints::Known(a) => a,
        _ => return Ok(Val::new(x.dtype, None)),
    };
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let rank = s.len() + axes.len();
    let mut ones = vec![false; rank];
    for &a in &axes {
        let k = norm_axis(a, rank)
            .ok_or_else(|| cx.err(format!("axis {a} is out of range for output rank {rank}")))?;
        if std::mem::replace(&mut ones[k], true) {
            return Err(cx.err(format!("axes {axes:?} repeat an axis")));
        }
    }
    let mut rest = s.iter();
    let shape = ones.iter().map(|&one| {
        if one {
            Dim::Known(1)
        } else {
            rest.next().cloned().unwrap_or(Dim::Unknown)
        }
    });
    let mut v = Val::new(x.dtype, Some(shape.collect()));
    v.ints = x.ints.clone();
    v.floats = x.floats.clone();
    Ok(v)
}

pub(super) fn gather(cx: &Cx) -> Result<Val, GraphError> {
    let (data, idx) = (cx.x(0), cx.x(1));
    let (Some(d), Some(i)) = (&data.shape, &idx.shape) else {
        return Ok(Val::new(data.dtype, None));
    };
    let axis = cx.axis(cx.int("axis", 0), d.len())?;
    let mut shape = d[..axis].to_vec();
    shape.extend(i.iter().cloned());
    shape.extend(d[axis + 1..].iter().cloned());
    let mut v = Val::new(data.dtype, Some(shape));
    if let Some(ids) = idx.known_ints() {
        if let Dim::Known(n) = d[axis] {
            if let Some(bad) = ids.iter().find(|&&k| k < -n || k >= n) {
                return Err(cx.err(format!(
                    "index {bad} in {} is out of range for axis {axis} of {}",
                    cx.desc(1),
                    cx.desc(0)
                )));
            }
            if let (Some(vals), 1) = (&data.ints, d.len()) {
                let picked: Option<Vec<Dim>> = ids
                    .iter()
                    .map(|&k| vals.get(if k < 0 { k + n } else { k } as usize).cloned())
                    .collect();
                if let Some(p) = picked {
                    v = v.with_ints(p);
                }
            }
        }
    }
    Ok(v)
}
