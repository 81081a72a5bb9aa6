//! Static shape and type inference over the graph IR.
//!
//! [`infer_shapes`] walks the nodes in topological order and derives the
//! element type and shape of every value it can: graph inputs (declared, or
//! pinned by `input_overrides`), initializers and node outputs. Symbolic
//! dims such as a batch `N` flow through; what cannot be derived stays
//! [`Dim::Unknown`] or an unknown rank. Small integer tensors also carry
//! their contents, so shape-computation subgraphs (`Shape` → `Gather` →
//! `Unsqueeze` → `Concat` → `Reshape`, `ConstantOfShape`, `Cast`, `Slice`,
//! integer arithmetic) resolve `Reshape`/`Expand`/`Resize`/`Slice` targets.
//!
//! Unknown ops, custom domains and ops with subgraphs never fail: their
//! outputs fall back to the types declared in the file (`value_info`, graph
//! outputs). Errors are returned only for real inconsistencies, such as a
//! Conv whose input channels disagree with its weight, and name the node and
//! the values involved. [`annotate`] writes the results into
//! `graph.value_info` for export.

mod conv;
mod misc;
mod ops;
mod select;
mod shape_ops;
mod source;
mod val;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ops;
#[cfg(test)]
mod tests_values;

use std::collections::{HashMap, HashSet};

use super::{topological_order, DType, Dim, GraphError, Model, ValueInfo};
use val::{Cx, Val};

/// Inference results: a type and shape per value, plus the contents of
/// small integer tensors that could be computed statically.
#[derive(Clone, Debug, Default)]
pub struct InferredShapes {
    /// Every graph input, initializer and node output by name.
    pub values: HashMap<String, ValueInfo>,
    /// Contents (flattened) of small integer tensors known statically.
    pub int_values: HashMap<String, Vec<Dim>>,
}

impl InferredShapes {
    pub fn get(&self, name: &str) -> Option<&ValueInfo> {
        self.values.get(name)
    }

    /// The shape of `name` if at least its rank is known.
    pub fn shape(&self, name: &str) -> Option<&[Dim]> {
        self.values.get(name)?.shape.as_deref()
    }

    /// The shape of `name` if every dim is a number.
    pub fn known_shape(&self, name: &str) -> Option<Vec<i64>> {
        self.values.get(name)?.known_shape()
    }

    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.values.get(name)?.dtype
    }

    /// Statically known contents of a small integer tensor.
    pub fn int_value(&self, name: &str) -> Option<&[Dim]> {
        self.int_values.get(name).map(Vec::as_slice)
    }

    pub fn into_map(self) -> HashMap<String, ValueInfo> {
        self.values
    }
}

/// Infers the type and shape of every value of `model`'s main graph.
///
/// `input_overrides` pins the shapes of graph inputs (by name); a symbolic
/// dim it replaces is replaced by the same value wherever the name appears
/// (other inputs, declared value_info). Naming a value that is not a graph
/// input, or giving a different rank than declared, is an error.
pub fn infer_shapes(
    model: &Model,
    input_overrides: &HashMap<String, Vec<Dim>>,
) -> Result<InferredShapes, GraphError> {
    let graph = &model.graph;
    let opset = match model.onnx_opset() {
        0 => 22,
        v => v,
    };
    let symbols = symbol_bindings(model, input_overrides)?;
    let mut state: HashMap<String, Val> = HashMap::new();
    for input in &graph.inputs {
        let shape = match input_overrides.get(&input.name) {
            Some(s) => Some(s.clone()),
            None => input.shape.as_ref().map(|s| substitute(s, &symbols)),
        };
        state.insert(input.name.clone(), Val::new(input.dtype, shape));
    }
    for (name, tensor) in &graph.initializers {
        state.insert(name.clone(), Val::from_tensor(tensor));
    }
    for sparse in &graph.sparse_initializers {
        let Some(values) = &sparse.values else {
            continue;
        };
        let Some(name) = values.name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        state.insert(name, Val::known(values.data_type.map(DType), &sparse.dims));
    }
    let declared: HashMap<&str, &ValueInfo> = graph
        .value_info
        .iter()
        .chain(&graph.outputs)
        .map(|v| (v.name.as_str(), v))
        .collect();
    for i in topological_order(graph)? {
        let node = &graph.nodes[i];
        let outs = {
            let ins = node
                .inputs
                .iter()
                .map(|n| state.get(n.as_str()).unwrap_or(&val::UNKNOWN))
                .collect();
            let cx = Cx { node, opset, ins };
            ops::infer_node(&cx)?
        };
        let mut outs = outs.into_iter();
        for name in &node.outputs {
            let inferred = outs.next().unwrap_or_default();
            if name.is_empty() {
                continue;
            }
            let merged = match declared.get(name.as_str()) {
                Some(d) => merge_declared(inferred, d, &symbols),
                None => inferred,
            };
            state.insert(name.clone(), merged);
        }
    }
    let mut result = InferredShapes::default();
    for (name, v) in state {
        if let Some(ints) = v.ints {
            result.int_values.insert(name.clone(), ints);
        }
        let info = ValueInfo {
            name: name.clone(),
            dtype: v.dtype,
            shape: v.shape,
            ..Default::default()
        };
        result.values.insert(name, info);
    }
    Ok(result)
}

/// Runs [`infer_shapes`] and records the type of every intermediate value
/// (not graph inputs, outputs or initializers) in `graph.value_info`,
/// replacing earlier entries. Returns how many entries were written.
pub fn annotate(
    model: &mut Model,
    input_overrides: &HashMap<String, Vec<Dim>>,
) -> Result<usize, GraphError> {
    let inferred = infer_shapes(model, input_overrides)?;
    let graph = &mut model.graph;
    let skip: HashSet<String> = graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .map(|v| v.name.clone())
        .chain(graph.initializers.keys().cloned())
        .collect();
    let mut index: HashMap<String, usize> = graph
        .value_info
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.clone(), i))
        .collect();
    let mut written = 0;
    for node in &graph.nodes {
        for name in node
            .outputs
            .iter()
            .filter(|n| !n.is_empty() && !skip.contains(*n))
        {
            let Some(info) = inferred.get(name) else {
                continue;
            };
            if info.dtype.is_none() && info.shape.is_none() {
                continue;
            }
            match index.get(name).and_then(|&i| graph.value_info.get_mut(i)) {
                Some(existing) if existing.raw_type.is_some() => continue,
                Some(existing) => {
                    existing.dtype = info.dtype.or(existing.dtype);
                    existing.shape = info.shape.clone().or(existing.shape.take());
                }
                None => {
                    index.insert(name.clone(), graph.value_info.len());
                    graph.value_info.push(info.clone());
                }
            }
            written += 1;
        }
    }
    Ok(written)
}

/// Symbolic dim names bound to values by the overrides.
fn symbol_bindings(
    model: &Model,
    overrides: &HashMap<String, Vec<Dim>>,
) -> Result<HashMap<String, Dim>, GraphError> {
    let mut symbols = HashMap::new();
    for (name, shape) in overrides {
        let Some(input) = model.graph.inputs.iter().find(|v| &v.name == name) else {
            return Err(GraphError::ShapeMismatch {
                value: name.clone(),
                reason: "a shape override names a value that is not a graph input".into(),
            });
        };
        let Some(declared) = &input.shape else {
            continue;
        };
        if declared.len() != shape.len() {
            return Err(GraphError::ShapeMismatch {
                value: name.clone(),
                reason: format!(
                    "override {} has rank {} but the input is declared {} (rank {})",
                    super::shape_string(shape),
                    shape.len(),
                    super::shape_string(declared),
                    declared.len()
                ),
            });
        }
        for (d, o) in declared.iter().zip(shape) {
            if let Dim::Symbolic(s) = d {
                if !matches!(o, Dim::Symbolic(t) if t == s) {
                    symbols.insert(s.clone(), o.clone());
                }
            }
        }
    }
    Ok(symbols)
}

fn substitute(shape: &[Dim], symbols: &HashMap<String, Dim>) -> Vec<Dim> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Symbolic(s) => symbols.get(s).cloned().unwrap_or_else(|| d.clone()),
            _ => d.clone(),
        })
        .collect()
}

/// Completes an inferred value with what the file declares for it: the
/// declared type fills gaps, declared dims refine unknown ones. Inferred
/// numbers and symbols win over (possibly stale or traced) declarations.
fn merge_declared(mut v: Val, declared: &ValueInfo, symbols: &HashMap<String, Dim>) -> Val {
    v.dtype = v.dtype.or(declared.dtype);
    let Some(decl) = declared.shape.as_ref().map(|s| substitute(s, symbols)) else {
        return v;
    };
    match &mut v.shape {
        None => v.shape = Some(decl),
        Some(s) if s.len() == decl.len() => {
            for (d, e) in s.iter_mut().zip(decl) {
                let better = *d == Dim::Unknown && e != Dim::Unknown;
                if better {
                    *d = e;
                }
            }
        }
        Some(_) => {}
    }
    v
}
