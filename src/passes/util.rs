//! Helpers the passes share: which initializers are true constants, fresh
//! value names, outer-scope references of subgraphs, reader counts, tensor
//! construction from computed numbers, and the tidy-up every pass ends with
//! (unused initializers and stale `value_info` entries removed).

use std::collections::{HashMap, HashSet};

use candle_core::DType as CDType;

use crate::exec::Value;
use crate::graph::LeBytes;
use crate::graph::{DType, Dim, Graph, Model, Node, Tensor};
use crate::onnx::proto::GraphProto;

/// An initializer that may be treated as a constant: for IR >= 4 an
/// initializer also listed as a graph input can be overridden by the caller,
/// so it is not one.
pub fn constant<'a>(model: &'a Model, name: &str) -> Option<&'a Tensor> {
    let tensor = model.graph.initializers.get(name)?;
    let overridable = model.ir_version >= 4
        && model
            .graph
            .overridable_initializers
            .iter()
            .any(|v| v.name == name);
    (!overridable).then_some(tensor)
}

/// Names read from inside subgraphs (If/Loop/Scan bodies), at any depth.
/// Values captured this way are never renamed or removed.
pub fn subgraph_refs(graph: &Graph) -> HashSet<String> {
    let mut out = HashSet::new();
    for node in &graph.nodes {
        node_captures(node, &mut out);
    }
    out
}

/// Adds the names read inside `node`'s subgraphs (a superset of its
/// outer-scope captures: names local to the subgraph are included).
pub fn node_captures(node: &Node, out: &mut HashSet<String>) {
    fn walk(g: &GraphProto, out: &mut HashSet<String>) {
        for node in &g.node {
            out.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
            for attr in &node.attribute {
                attr.g.iter().chain(&attr.graphs).for_each(|s| walk(s, out));
            }
        }
        out.extend(g.output.iter().filter_map(|o| o.name.clone()));
    }
    for attr in &node.attributes {
        attr.g.iter().chain(&attr.graphs).for_each(|s| walk(s, out));
    }
}

/// How many times each value is read: node inputs, graph outputs and
/// subgraph captures (the latter count as many reads, so they pin values).
pub fn reader_counts(graph: &Graph) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let names = graph
        .nodes
        .iter()
        .flat_map(|n| n.inputs.iter())
        .chain(graph.outputs.iter().map(|o| &o.name))
        .filter(|s| !s.is_empty());
    for name in names {
        *counts.entry(name.clone()).or_default() += 1;
    }
    for name in subgraph_refs(graph) {
        *counts.entry(name).or_default() += 2;
    }
    counts
}

/// Names of the graph outputs.
pub fn output_names(graph: &Graph) -> HashSet<String> {
    graph.outputs.iter().map(|o| o.name.clone()).collect()
}

/// Generates value names that collide with nothing in the graph.
pub struct NameGen {
    used: HashSet<String>,
    generated: HashSet<String>,
}

impl NameGen {
    pub fn new(graph: &Graph) -> Self {
        let mut used: HashSet<String> = graph.initializers.keys().cloned().collect();
        used.extend(graph.inputs.iter().map(|v| v.name.clone()));
        used.extend(graph.outputs.iter().map(|v| v.name.clone()));
        used.extend(graph.value_info.iter().map(|v| v.name.clone()));
        for node in &graph.nodes {
            used.extend(node.inputs.iter().chain(&node.outputs).cloned());
        }
        used.extend(subgraph_refs(graph));
        used.extend(
            graph
                .sparse_initializers
                .iter()
                .filter_map(|s| s.values.as_ref().and_then(|v| v.name.clone())),
        );
        NameGen {
            used,
            generated: HashSet::new(),
        }
    }

    /// `base` if unused, else `base_1`, `base_2`, ...; the name is then taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        self.generated.insert(name.clone());
        name
    }

    /// True for names this generator handed out.
    pub fn generated(&self, name: &str) -> bool {
        self.generated.contains(name)
    }
}

/// Removes initializers nothing reads (overridable ones of IR >= 4 models
/// are graph inputs and stay) and `value_info` entries of values that no
/// longer exist. Returns the number of initializers removed.
pub fn tidy(model: &mut Model) -> usize {
    let ir = model.ir_version;
    let graph = &mut model.graph;
    let read = reader_counts(graph);
    let interface: HashSet<String> = if ir >= 4 {
        graph
            .overridable_initializers
            .iter()
            .map(|v| v.name.clone())
            .collect()
    } else {
        HashSet::new()
    };
    let before = graph.initializers.len();
    graph
        .initializers
        .retain(|name, _| read.contains_key(name) || interface.contains(name));
    let removed = before - graph.initializers.len();
    let inits = &graph.initializers;
    graph
        .overridable_initializers
        .retain(|v| inits.contains_key(&v.name));
    let mut defined: HashSet<&str> = inits.keys().map(String::as_str).collect();
    defined.extend(graph.inputs.iter().map(|v| v.name.as_str()));
    for node in &graph.nodes {
        defined.extend(node.outputs.iter().map(String::as_str));
    }
    let keep: Vec<bool> = graph
        .value_info
        .iter()
        .map(|v| defined.contains(v.name.as_str()))
        .collect();
    let mut flags = keep.into_iter();
    graph.value_info.retain(|_| flags.next().unwrap_or(true));
    removed
}

/// A tensor of float type `dtype` holding `values` (rounded to the type).
/// `None` for non-float types.
pub fn float_tensor(name: &str, dtype: DType, dims: Vec<i64>, values: &[f64]) -> Option<Tensor> {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => values.iter().map(|&v| (v as f32).to_le_bytes()).le_bytes(),
        DType::F64 => values.iter().map(|v| v.to_le_bytes()).le_bytes(),
        DType::F16 => values
            .iter()
            .map(|&v| half::f16::from_f64(v).to_le_bytes())
            .le_bytes(),
        DType::BF16 => values
            .iter()
            .map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .le_bytes(),
        _ => return None,
    };
    Tensor::from_raw(name, dtype, dims, bytes).ok()
}

/// A tensor of integer or boolean type `dtype` holding `values`.
pub fn int_tensor(name: &str, dtype: DType, dims: Vec<i64>, values: &[i64]) -> Option<Tensor> {
    let bytes: Vec<u8> = match dtype {
        DType::I64 | DType::U64 => values.iter().map(|v| v.to_le_bytes()).le_bytes(),
        DType::I32 | DType::U32 => values.iter().map(|&v| (v as i32).to_le_bytes()).le_bytes(),
        DType::I16 | DType::U16 => values.iter().map(|&v| (v as i16).to_le_bytes()).le_bytes(),
        DType::I8 | DType::U8 => values.iter().map(|&v| v as u8).collect(),
        DType::BOOL => values.iter().map(|&v| u8::from(v != 0)).collect(),
        _ => return None,
    };
    Tensor::from_raw(name, dtype, dims, bytes).ok()
}

/// Converts a computed value to an IR tensor of its ONNX type; `None` when
/// the type cannot be written back.
pub fn value_to_tensor(name: &str, value: &Value) -> Option<Tensor> {
    let dims: Vec<i64> = value.dims().iter().map(|&d| d as i64).collect();
    let flat = value.tensor.flatten_all().ok()?;
    if value.dtype.is_float() {
        let v = flat.to_dtype(CDType::F64).ok()?.to_vec1::<f64>().ok()?;
        float_tensor(name, value.dtype, dims, &v)
    } else if value.dtype.is_integer() {
        let v = flat.to_dtype(CDType::I64).ok()?.to_vec1::<i64>().ok()?;
        int_tensor(name, value.dtype, dims, &v)
    } else {
        None
    }
}

/// Inserts (or replaces) an initializer and keeps recorded shapes of the
/// same name (value_info, overridable-input entries) in agreement with it.
pub fn put_initializer(graph: &mut Graph, tensor: Tensor) {
    let name = tensor.name.clone();
    let dims: Vec<Dim> = tensor.dims.iter().map(|&d| Dim::Known(d)).collect();
    graph.value_info.retain(|v| v.name != name);
    for v in graph
        .overridable_initializers
        .iter_mut()
        .filter(|v| v.name == name)
    {
        v.shape = Some(dims.clone());
        v.dtype = Some(tensor.dtype);
    }
    graph.initializers.insert(name, tensor);
}
