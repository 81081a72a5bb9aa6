//! Rules for the ops that rearrange a whole tensor: Flatten, Reshape (0 and
//! -1 targets, symbolic dims cancelled), Transpose and Concat. Each keeps
//! tracked integer contents flowing, which resolves shape computations.

use super::val::{merge_dim, norm_axis, product, Cx, Val, MAX_RANK};
use crate::graph::{shape_string, Dim, GraphError};

pub(super) fn flatten(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let shape = match &x.shape {
        Some(s) => {
            let axis = cx.int("axis", 1);
            let a = if axis < 0 {
                axis + s.len() as i64
            } else {
                axis
            };
            if a < 0 || a > s.len() as i64 {
                return Err(cx.err(format!("axis {axis} is out of range for {}", cx.desc(0))));
            }
            let (head, tail) = s.split_at(a as usize);
            vec![product(head), product(tail)]
        }
        None => vec![Dim::Unknown, Dim::Unknown],
    };
    let mut out = Val::new(x.dtype, Some(shape));
    out.ints = x.ints.clone();
    out.floats = x.floats.clone();
    Ok(out)
}

pub(super) fn reshape(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let target: Option<Vec<Dim>> = match cx.node.attr_ints("shape") {
        Some(s) => Some(s.iter().map(|&v| Dim::Known(v)).collect()),
        None => cx.x(1).ints.clone(),
    };
    let shape = match target {
        Some(t) => Some(resolve_reshape(cx, x.shape.as_deref(), &t)?),
        None => cx
            .x(1)
            .known_shape()
            .and_then(|s| s.first().copied())
            .filter(|&r| (0..=MAX_RANK).contains(&r))
            .map(|r| vec![Dim::Unknown; r as usize]),
    };
    let mut out = Val::new(x.dtype, shape);
    out.ints = x.ints.clone();
    out.floats = x.floats.clone();
    Ok(out)
}

/// Dims of a shape as (product of known dims, symbolic names, any unknown).
fn factors(dims: &[Dim]) -> (i64, Vec<&str>, bool) {
    let (mut p, mut syms, mut unknown) = (1i64, vec![], false);
    for d in dims {
        match d {
            Dim::Known(v) => p = p.saturating_mul(*v),
            Dim::Symbolic(s) => syms.push(s.as_str()),
            Dim::Unknown => unknown = true,
        }
    }
    syms.sort_unstable();
    (p, syms, unknown)
}

fn resolve_reshape(cx: &Cx, input: Option<&[Dim]>, target: &[Dim]) -> Result<Vec<Dim>, GraphError> {
    let allow_zero = cx.int("allowzero", 0) != 0;
    let bad = |why: String| {
        cx.err(format!(
            "cannot reshape {} to {} ('{}'): {why}",
            cx.desc(0),
            shape_string(target),
            cx.node.input(1).unwrap_or("shape attribute")
        ))
    };
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, d) in target.iter().enumerate() {
        out.push(match d {
            Dim::Known(0) if !allow_zero => match input {
                Some(s) => s
                    .get(i)
                    .cloned()
                    .ok_or_else(|| bad(format!("0 at position {i} is beyond the input rank")))?,
                None => Dim::Unknown,
            },
            Dim::Known(-1) if infer.is_none() => {
                infer = Some(i);
                Dim::Unknown
            }
            Dim::Known(-1) => return Err(bad("more than one -1".into())),
            Dim::Known(v) if *v < 0 => return Err(bad(format!("invalid dim {v}"))),
            other => other.clone(),
        });
    }
    let Some(input) = input else { return Ok(out) };
    let (p_in, s_in, u_in) = factors(input);
    let rest: Vec<Dim> = out
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != infer)
        .map(|(_, d)| d.clone())
        .collect();
    let (p_t, s_t, u_t) = factors(&rest);
    if u_in || u_t {
        return Ok(out);
    }
    let mut left = s_in.clone();
    for s in &s_t {
        match left.iter().position(|x| x == s) {
            Some(i) => {
                left.remove(i);
            }
            None => return Ok(out),
        }
    }
    match infer {
        Some(j) if left.is_empty() => {
            if p_t == 0 || p_in % p_t != 0 {
                return Err(bad(format!("{p_in} elements are not divisible by {p_t}")));
            }
            out[j] = Dim::Known(p_in / p_t);
        }
        Some(j) if left.len() == 1 && p_in == p_t => out[j] = Dim::Symbolic(left[0].to_string()),
        None if left.is_empty() && s_in.len() == s_t.len() && p_in != p_t => {
            return Err(bad(format!("element counts differ ({p_in} vs {p_t})")));
        }
        _ => {}
    }
    Ok(out)
}

pub(super) fn transpose(cx: &Cx) -> Result<Val, GraphError> {
    let x = cx.x(0);
    let Some(s) = &x.shape else {
        return Ok(x.like());
    };
    let perm: Vec<i64> = match cx.node.attr_ints("perm") {
        Some(p) if !p.is_empty() => p.to_vec(),
        _ => (0..s.len() as i64).rev().collect(),
    };
    let mut seen = vec![false; s.len()];
    let mut out = Vec::with_capacity(s.len());
    for &p in &perm {
        match norm_axis(p, s.len()) {
            Some(a) if perm.len() == s.len() && !seen[a] => {
                seen[a] = true;
                out.push(s[a].clone());
            }
            _ => {
                return Err(cx.err(format!(
                    "perm {perm:?} is not a permutation of the axes of {}",
                    cx.desc(0)
                )))
            }
        }
    }
    let mut v = Val::new(x.dtype, Some(out));
    if s.len() <= 1 {
        v.ints = x.ints.clone();
    }
    Ok(v)
}

pub(super) fn concat(cx: &Cx) -> Result<Val, GraphError> {
    let idx: Vec<usize> = (0..cx.node.inputs.len()).filter(|&i| cx.has(i)).collect();
    let dtype = idx.iter().find_map(|&i| cx.x(i).dtype);
    let shapes: Vec<(usize, &Vec<Dim>)> = idx
        .iter()
        .filter_map(|&i| cx.x(i).shape.as_ref().map(|s| (i, s)))
        .collect();
    let Some(&(_, first)) = shapes.first() else {
        return Ok(Val::new(dtype, None));
    };
    let axis = cx.int("axis", 0);
    let a = norm_axis(axis, first.len()).ok_or_else(|| {
        cx.err(format!(
            "axis {axis} is out of range for {}",
            cx.desc(idx[0])
        ))
    })?;
    let mut out = first.clone();
    for &(i, s) in &shapes[1..] {
        if s.len() != out.len() {
            return Err(cx.err(format!(
                "inputs {} and {} differ in rank",
                cx.desc(shapes[0].0),
                cx.desc(i)
            )));
        }
        for (k, d) in s.iter().enumerate().filter(|(k, _)| *k != a) {
            out[k] = merge_dim(&out[k], d).ok_or_else(|| {
                cx.err(format!(
                    "inputs {} and {} differ at axis {k} (concat axis {a})",
                    cx.desc(shapes[0].0),
                    cx.desc(i)
                ))
            })?;
        }
    }
    out[a] = if shapes.len() == idx.len() {
        let dims: Option<Vec<i64>> = shapes.iter().map(|(_, s)| s[a].known()).collect();
        match dims {
            Some(d) => Dim::Known(d.iter().fold(0i64, |a, &b| a.saturating_add(b))),
            None => {
                let non_zero: Vec<&Dim> = shapes
                    .iter()
                    .map(|(_, s)| &s[a])
                    .filter(|d| **d != Dim::Known(0))
                    .collect();
                if non_zero.len() == 1 {
                    non_zero[0].clone()
                } else {
                    Dim::Unknown
                }
            }
        }
    } else {
        Dim::Unknown
    };
    let mut v = Val::new(dtype, Some(out));
    if a == 0 {
        let ints: Option<Vec<&Vec<Dim>>> = idx.iter().map(|&i| cx.x(i).ints.as_ref()).collect();
        if let Some(ints) = ints {
            v = v.with_ints(ints.into_iter().flatten().cloned().collect());
        } else if let Some(f) = idx
            .iter()
            .map(|&i| cx.x(i).floats.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            v = v.with_floats(f.into_iter().flatten().copied().collect());
        }
    }
    Ok(v)
}
