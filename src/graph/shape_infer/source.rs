//! Rules for ops that create values from attributes or shapes: Shape, Size,
//! Constant, ConstantOfShape and Range. Their outputs carry contents, which
//! start the constant propagation of shape computations.

use super::val::{product, Cx, Val, MAX_RANK, MAX_TRACKED};
use crate::graph::{DType, Dim, GraphError};

/// Shape (with opset-15 `start`/`end`): int64 contents are the input's dims.
pub(super) fn shape(cx: &Cx) -> Val {
    let Some(s) = &cx.x(0).shape else {
        return Val::new(Some(DType::I64), Some(vec![Dim::Unknown]));
    };
    let r = s.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(cx.int("start", 0));
    let end = clamp(cx.int("end", r)).max(start);
    Val::int_list(s[start..end].to_vec())
}

pub(super) fn size(cx: &Cx) -> Val {
    let v = Val::known(Some(DType::I64), &[]);
    match &cx.x(0).shape {
        Some(s) => v.with_ints(vec![product(s)]),
        None => v,
    }
}

pub(super) fn constant(cx: &Cx) -> Result<Val, GraphError> {
    let node = cx.node;
    if let Some(t) = node.attr_tensor("value")? {
        return Ok(Val::from_tensor(&t));
    }
    if let Some(v) = node.attr_float("value_float") {
        return Ok(Val::known(Some(DType::F32), &[]).with_floats(vec![v as f64]));
    }
    if let Some(v) = node.attr_floats("value_floats") {
        return Ok(Val::known(Some(DType::F32), &[v.len() as i64])
            .with_floats(v.iter().map(|&f| f as f64).collect()));
    }
    if let Some(v) = node.attr_int("value_int") {
        return Ok(Val::known(Some(DType::I64), &[]).with_ints(vec![Dim::Known(v)]));
    }
    if let Some(v) = node.attr_ints("value_ints") {
        return Ok(Val::int_list(v.iter().map(|&i| Dim::Known(i)).collect()));
    }
    if node.attr("value_string").is_some() {
        return Ok(Val::known(Some(DType::STRING), &[]));
    }
    if let Some(a) = node.attr("value_strings") {
        return Ok(Val::known(Some(DType::STRING), &[a.strings.len() as i64]));
    }
    if let Some(sp) = node
        .attr("sparse_value")
        .and_then(|a| a.sparse_tensor.as_ref())
    {
        let dtype = sp.values.as_ref().and_then(|v| v.data_type).map(DType);
        return Ok(Val::known(dtype, &sp.dims));
    }
    Ok(Val::default())
}

/// ConstantOfShape: the shape comes from the input's contents, the type
/// and fill value from the `value` attribute (float32 0 by default).
pub(super) fn constant_of_shape(cx: &Cx) -> Result<Val, GraphError> {
    let fill = cx.node.attr_tensor("value")?;
    let dtype = fill.as_ref().map_or(DType::F32, |t| t.dtype);
    let input = cx.x(0);
    let shape: Option<Vec<Dim>> = match &input.ints {
        Some(dims) => {
            if let Some(bad) = dims.iter().find(|d| matches!(d, Dim::Known(v) if *v < 0)) {
                return Err(cx.err(format!("negative dim {bad} in shape {}", cx.desc(0))));
            }
            Some(dims.clone())
        }
        None => input
            .known_shape()
            .and_then(|s| s.first().copied())
            .filter(|&r| (0..=MAX_RANK).contains(&r))
            .map(|r| vec![Dim::Unknown; r as usize]),
    };
    let mut out = Val::new(Some(dtype), shape);
    if let Some(n) = out.numel().filter(|&n| n <= MAX_TRACKED) {
        if dtype.is_integer() {
            let v = fill
                .as_ref()
                .and_then(|t| t.to_i64_vec())
                .and_then(|v| v.first().copied())
                .unwrap_or(0);
            out = out.with_ints(vec![Dim::Known(v); n]);
        } else if dtype.is_float() {
            let v = fill
                .as_ref()
                .and_then(|t| t.to_f64_vec())
                .and_then(|v| v.first().copied())
                .unwrap_or(0.0);
            out = out.with_floats(vec![v; n]);
        }
    }
    Ok(out)
}

/// Range: length max(ceil((limit - start) / delta), 0) when the scalars are known.
pub(super) fn range(cx: &Cx) -> Val {
    let dtype = cx.x(0).dtype;
    let unknown = Val::new(dtype, Some(vec![Dim::Unknown]));
    if let (Some([s]), Some([l]), Some([d])) = (
        cx.x(0).known_ints().as_deref(),
        cx.x(1).known_ints().as_deref(),
        cx.x(2).known_ints().as_deref(),
    ) {
        let (s, l, d) = (*s, *l, *d);
        if d == 0 {
            return unknown;
        }
        let n = ((l as i128 - s as i128) as f64 / d as f64).ceil().max(0.0) as i64;
        let out = Val::known(dtype, &[n]);
        if n as usize <= MAX_TRACKED {
            let at = |k: i64| k.checked_mul(d).and_then(|v| v.checked_add(s));
            if let Some(v) = (0..n).map(|k| at(k).map(Dim::Known)).collect() {
                return out.with_ints(v);
            }
        }
        return out;
    }
    match (cx.x(0).numbers(), cx.x(1).numbers(), cx.x(2).numbers()) {
        (Some(s), Some(l), Some(d))
            if s.len() == 1 && l.len() == 1 && d.len() == 1 && d[0] != 0.0 =>
        {
            let n = ((l[0] - s[0]) / d[0]).ceil().max(0.0) as i64;
            Val::known(dtype, &[n])
        }
        _ => unknown,
    }
}
