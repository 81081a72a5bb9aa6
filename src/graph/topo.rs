//! Topological ordering of a graph's nodes (Kahn's algorithm, stable).

use std::collections::{HashMap, VecDeque};

use super::{Graph, GraphError};

/// Returns node indices in an order where every node comes after the
/// producers of its inputs. Ties keep file order. A cycle is an error naming
/// the nodes on it (or blocked behind it).
pub fn topological_order(graph: &Graph) -> Result<Vec<usize>, GraphError> {
    let producers = graph.producers();
    let n = graph.nodes.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        for input in node.inputs.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producers.get(input.as_str()) {
                indegree[i] += 1;
                dependents.entry(p).or_default().push(i);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        if let Some(deps) = dependents.get(&i) {
            for &d in deps {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.push_back(d);
                }
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<String> = (0..n)
            .filter(|&i| indegree[i] > 0)
            .take(8)
            .map(|i| graph.nodes[i].label())
            .collect();
        return Err(GraphError::Cycle {
            nodes: stuck.join(", "),
        });
    }
    Ok(order)
}

/// Reorders `graph.nodes` topologically in place.
pub fn sort_topologically(graph: &mut Graph) -> Result<(), GraphError> {
    let order = topological_order(graph)?;
    if order.iter().enumerate().all(|(i, &j)| i == j) {
        return Ok(());
    }
    let mut nodes: Vec<Option<_>> = std::mem::take(&mut graph.nodes)
        .into_iter()
        .map(Some)
        .collect();
    graph.nodes = order.into_iter().filter_map(|i| nodes[i].take()).collect();
    Ok(())
}
