//! The inference state of one value — element type, shape, and the contents
//! of small tensors — plus the dim arithmetic and per-node context the op
//! rules share.
//!
//! Contents are tracked for small integer tensors (as [`Dim`]s, so a batch
//! size read by `Shape` stays symbolic through `Gather`/`Concat`) and for
//! small float tensors (Resize scales); that is the constant propagation
//! that makes `Reshape`/`Expand`/`Resize`/`Slice` targets known.

use crate::graph::{DType, Dim, GraphError, Node, Tensor};

/// Tensors with at most this many elements have their contents tracked.
pub(super) const MAX_TRACKED: usize = 256;
/// Ranks above this are treated as unknown (guards allocations on bad data).
pub(super) const MAX_RANK: i64 = 64;

/// What is known about one value.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Val {
    pub dtype: Option<DType>,
    pub shape: Option<Vec<Dim>>,
    /// Contents of a small integer/bool tensor, flattened row-major.
    pub ints: Option<Vec<Dim>>,
    /// Contents of a small float tensor, flattened row-major.
    pub floats: Option<Vec<f64>>,
}

pub(super) static UNKNOWN: Val = Val {
    dtype: None,
    shape: None,
    ints: None,
    floats: None,
};

impl Val {
    pub fn new(dtype: Option<DType>, shape: Option<Vec<Dim>>) -> Val {
        Val {
            dtype,
            shape,
            ints: None,
            floats: None,
        }
    }

    /// A value of the given type and fully known shape.
    pub fn known(dtype: Option<DType>, dims: &[i64]) -> Val {
        Val::new(dtype, Some(dims.iter().map(|&d| Dim::Known(d)).collect()))
    }

    /// A 1-D int64 tensor with known contents.
    pub fn int_list(values: Vec<Dim>) -> Val {
        let len = values.len() as i64;
        Val::known(Some(DType::I64), &[len]).with_ints(values)
    }

    /// Sets the tracked integer contents (dropped when too large).
    pub fn with_ints(mut self, values: Vec<Dim>) -> Val {
        if values.len() <= MAX_TRACKED {
            self.ints = Some(values);
        }
        self
    }

    pub fn with_floats(mut self, values: Vec<f64>) -> Val {
        if values.len() <= MAX_TRACKED {
            self.floats = Some(values);
        }
        self
    }

    pub fn from_tensor(t: &Tensor) -> Val {
        let mut v = Val::known(Some(t.dtype), &t.dims);
        if t.numel() <= MAX_TRACKED {
            if t.dtype.is_integer() {
                v.ints = t
                    .to_i64_vec()
                    .map(|xs| xs.into_iter().map(Dim::Known).collect());
            } else if t.dtype.is_float() {
                v.floats = t.to_f64_vec();
            }
        }
        v
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }

    /// Element count when the shape is fully known (and sane).
    pub fn numel(&self) -> Option<usize> {
        self.shape.as_ref()?.iter().try_fold(1usize, |acc, d| {
            let d = usize::try_from(d.known()?).ok()?;
            acc.checked_mul(d)
        })
    }

    pub fn known_shape(&self) -> Option<Vec<i64>> {
        self.shape.as_ref()?.iter().map(Dim::known).collect()
    }

    /// Integer contents if every element is a known number.
    pub fn known_ints(&self) -> Option<Vec<i64>> {
        self.ints.as_ref()?.iter().map(Dim::known).collect()
    }

    /// Float contents, also from integer contents that are all known.
    pub fn numbers(&self) -> Option<Vec<f64>> {
        match &self.floats {
            Some(f) => Some(f.clone()),
            None => Some(self.known_ints()?.into_iter().map(|v| v as f64).collect()),
        }
    }

    /// A copy with the same type and shape but no contents.
    pub fn like(&self) -> Val {
        Val::new(self.dtype, self.shape.clone())
    }
}

/// Product of dims: known if all are, the one non-trivial dim if the rest multiply to 1.
pub(super) fn product(dims: &[Dim]) -> Dim {
    let mut known = 1i64;
    let mut other: Option<&Dim> = None;
    for d in dims {
        match d {
            Dim::Known(v) => known = known.saturating_mul(*v),
            _ if other.is_some() => return Dim::Unknown,
            _ => other = Some(d),
        }
    }
    match other {
        None => Dim::Known(known),
        Some(d) if known == 1 => d.clone(),
        Some(_) => Dim::Unknown,
    }
}

/// Numpy broadcasting of two dims; `None` when two known dims conflict.
pub(super) fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    Some(match (a, b) {
        (Dim::Known(1), o) | (o, Dim::Known(1)) => o.clone(),
        (Dim::Known(x), Dim::Known(y)) if x != y => return None,
        (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
        (Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => a.clone(),
        _ => Dim::Unknown,
    })
}

/// Numpy broadcasting of shapes (right-aligned); the error names the conflicting dims.
pub(super) fn broadcast(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d).ok_or_else(|| {
                format!(
                    "dims {} and {d} at axis {} cannot be broadcast",
                    out[off + i],
                    off + i
                )
            })?;
        }
    }
    Ok(out)
}

/// Two descriptions of the same dim (Concat's other axes, Where branches):
/// the more specific one, `None` when two known values differ.
pub(super) fn merge_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    Some(match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => return None,
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Symbolic(_), _) => a.clone(),
        _ => b.clone(),
    })
}

/// `a + b` on dims (symbolic + 0 stays symbolic).
pub(super) fn add_dim(a: &Dim, b: i64) -> Dim {
    match a {
        Dim::Known(x) => Dim::Known(x.saturating_add(b)),
        _ if b == 0 => a.clone(),
        _ => Dim::Unknown,
    }
}

/// `a * b` on dims (symbolic * 1 stays symbolic).
pub(super) fn mul_dim(a: &Dim, b: i64) -> Dim {
    match a {
        Dim::Known(x) => Dim::Known(x.saturating_mul(b)),
        _ if b == 1 => a.clone(),
        _ => Dim::Unknown,
    }
}

/// Normalizes a possibly negative axis against `rank`.
pub(super) fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// An integer list given either as an attribute or as a (constant) input.
pub(super) enum Ints {
    Absent,
    Known(Vec<i64>),
    /// Given as an input whose contents are not known statically.
    Unknown,
}

/// One node being inferred: its inputs' states and helpers for errors.
pub(super) struct Cx<'a> {
    pub node: &'a Node,
    pub opset: i64,
    pub ins: Vec<&'a Val>,
}

impl<'a> Cx<'a> {
    /// Input `i` (an unknown value when absent or omitted).
    pub fn x(&self, i: usize) -> &'a Val {
        self.ins.get(i).copied().unwrap_or(&UNKNOWN)
    }

    /// Whether input `i` is given (not omitted).
    pub fn has(&self, i: usize) -> bool {
        self.node.input(i).is_some()
    }

    /// `'name' [shape]` for messages.
    pub fn desc(&self, i: usize) -> String {
        let name = self.node.input(i).unwrap_or("<omitted>");
        match &self.x(i).shape {
            Some(s) => format!("'{name}' {}", crate::graph::shape_string(s)),
            None => format!("'{name}' (shape unknown)"),
        }
    }

    pub fn err(&self, reason: impl Into<String>) -> GraphError {
        GraphError::BadNode {
            node: self.node.label(),
            reason: reason.into(),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.node.int_or(name, default)
    }

    /// Integer list from attribute `attr` if present, else from input `input`.
    pub fn ints(&self, attr: &str, input: usize) -> Ints {
        match self.node.attr(attr) {
            Some(a) => Ints::Known(a.ints.clone()),
            None => self.input_ints(input),
        }
    }

    /// Integer list from input `input` (its statically known contents).
    pub fn input_ints(&self, input: usize) -> Ints {
        if !self.has(input) {
            return Ints::Absent;
        }
        match self.x(input).known_ints() {
            Some(v) => Ints::Known(v),
            None => Ints::Unknown,
        }
    }

    /// Attribute list with a default of `n` copies of `fill`.
    pub fn attr_ints_or(&self, name: &str, n: usize, fill: i64) -> Vec<i64> {
        match self.node.attr_ints(name) {
            Some(v) if !v.is_empty() => v.to_vec(),
            _ => vec![fill; n],
        }
    }

    /// Normalizes `axis` against `rank` or fails naming the axis.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize, GraphError> {
        norm_axis(axis, rank).ok_or_else(|| {
            self.err(format!(
                "axis {axis} is out of range for rank {rank} ({})",
                self.desc(0)
            ))
        })
    }
}
