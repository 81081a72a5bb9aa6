//! Consistency check run after import and after every rewrite.
//!
//! Guarantees on success: every value is defined once (input, initializer or
//! node output), every node input and graph output is defined, the graph has
//! no cycle, and every initializer's data matches its shape and type.
//! Recorded shapes of initializers must agree with their data.

use std::collections::HashMap;

use super::{topological_order, Dim, Graph, GraphError};

/// Checks a whole model: the graph's consistency, then that the shapes and
/// types of every op agree (static shape inference finds no contradiction).
pub fn verify_model(model: &super::Model) -> Result<(), GraphError> {
    verify(&model.graph)?;
    super::shape_infer::infer_shapes(model, &Default::default())?;
    Ok(())
}

/// Checks the graph's consistency; returns the first problem found.
pub fn verify(graph: &Graph) -> Result<(), GraphError> {
    let mut defined: HashMap<&str, String> = HashMap::new();
    fn define<'a>(
        defined: &mut HashMap<&'a str, String>,
        name: &'a str,
        by: String,
    ) -> Result<(), GraphError> {
        if name.is_empty() {
            return Ok(());
        }
        if let Some(first) = defined.insert(name, by.clone()) {
            return Err(GraphError::DuplicateDefinition {
                value: name.to_string(),
                first,
                second: by,
            });
        }
        Ok(())
    }
    for input in &graph.inputs {
        define(&mut defined, &input.name, "graph input".into())?;
    }
    for (name, tensor) in &graph.initializers {
        check_tensor_data(tensor)?;
        define(&mut defined, name, "initializer".into())?;
    }
    for sparse in &graph.sparse_initializers {
        if let Some(name) = sparse.values.as_ref().and_then(|v| v.name.as_deref()) {
            define(&mut defined, name, "sparse initializer".into())?;
        }
    }
    for node in &graph.nodes {
        for out in &node.outputs {
            define(&mut defined, out, format!("node {}", node.label()))?;
        }
    }
    for node in &graph.nodes {
        for input in node.inputs.iter().filter(|s| !s.is_empty()) {
            if !defined.contains_key(input.as_str()) {
                return Err(GraphError::DanglingInput {
                    node: node.label(),
                    value: input.clone(),
                });
            }
        }
    }
    for output in &graph.outputs {
        if !defined.contains_key(output.name.as_str()) {
            return Err(GraphError::MissingOutput(output.name.clone()));
        }
    }
    topological_order(graph)?;
    check_recorded_shapes(graph)
}

fn check_tensor_data(tensor: &super::Tensor) -> Result<(), GraphError> {
    let Some(raw) = tensor.raw() else {
        return Ok(());
    };
    let numel = super::tensor::numel_of(&tensor.dims);
    let expected = numel.and_then(|n| tensor.dtype.byte_len(n));
    match expected {
        Some(e) if e == raw.len() => Ok(()),
        Some(e) => Err(GraphError::BadTensor {
            name: tensor.name.clone(),
            reason: format!(
                "data is {} bytes, shape {:?} needs {e}",
                raw.len(),
                tensor.dims
            ),
        }),
        None => Err(GraphError::BadTensor {
            name: tensor.name.clone(),
            reason: format!("invalid dims {:?} for {}", tensor.dims, tensor.dtype),
        }),
    }
}

/// A value_info entry recorded for an initializer must match the data.
fn check_recorded_shapes(graph: &Graph) -> Result<(), GraphError> {
    for info in graph
        .value_info
        .iter()
        .chain(&graph.overridable_initializers)
    {
        let (Some(tensor), Some(shape)) = (graph.initializers.get(&info.name), &info.shape) else {
            continue;
        };
        let agrees = shape.len() == tensor.dims.len()
            && shape.iter().zip(&tensor.dims).all(|(d, &t)| match d {
                Dim::Known(v) => *v == t,
                _ => true,
            });
        if !agrees {
            return Err(GraphError::ShapeMismatch {
                value: info.name.clone(),
                reason: format!(
                    "declared {} but the initializer has {:?}",
                    super::shape_string(shape),
                    tensor.dims
                ),
            });
        }
    }
    Ok(())
}
