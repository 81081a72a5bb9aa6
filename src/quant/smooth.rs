//! SmoothQuant-style balancing: for an activation X read only by MatMul /
//! Gemm layers with constant weights, channel j of X is divided by
//! s_j = max|X_j|^α / max|W_j|^(1-α) and row j of every reader's weight is
//! multiplied by it, moving activation outliers into the weights. The 1/s
//! goes into a producing LayerNormalization's scale and bias when it can,
//! else into an inserted Mul.

use std::collections::{BTreeMap, HashMap};

use crate::graph::{Graph, Model, Node, Tensor};
use crate::passes::NameGen;

/// A reader of X: node index and whether its weight is stored [in, out]
/// (MatMul, Gemm transB = 0) or [out, in] (Gemm transB = 1).
#[derive(Debug, Clone, Copy)]
struct Reader {
    node: usize,
    in_major: bool,
}

/// Activations that can be smoothed, with their readers.
fn targets(g: &Graph) -> BTreeMap<String, Vec<Reader>> {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for input in &n.inputs {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let weight_readers = |w: &str| readers.get(w).map_or(0, Vec::len);
    let mut out = BTreeMap::new();
    for (x, nodes) in &readers {
        if g.initializers.contains_key(*x) || x.is_empty() {
            continue;
        }
        let mut list = Vec::new();
        for &i in nodes {
            let n = &g.nodes[i];
            let w = n.inputs.get(1).and_then(|w| g.initializers.get(w));
            let ok = n.inputs[0] == *x
                && w.is_some_and(|w| w.dims.len() == 2 && w.dtype.is_float())
                && weight_readers(&n.inputs[1]) == 1
                && match n.op_type.as_str() {
                    "MatMul" => true,
                    "Gemm" => n.int_or("transA", 0) == 0,
                    _ => false,
                };
            if !ok {
                list.clear();
                break;
            }
            list.push(Reader {
                node: i,
                in_major: !(n.op_type == "Gemm" && n.int_or("transB", 0) != 0),
            });
        }
        if !list.is_empty() {
            out.insert(x.to_string(), list);
        }
    }
    out
}

/// Tensors whose per-channel (last axis) maxima the balancing needs.
pub fn smoothable(model: &Model) -> Vec<String> {
    targets(&model.graph).into_keys().collect()
}

/// Balances every smoothable activation with its observed per-channel
/// maxima `act_max` (last axis) and migration strength `alpha`; returns how
/// many activations were balanced.
pub fn smooth(model: &mut Model, act_max: &BTreeMap<String, Vec<f32>>, alpha: f64) -> usize {
    let found = targets(&model.graph);
    let mut names = NameGen::new(&model.graph);
    let mut done = 0;
    for (x, readers) in found {
        let Some(xmax) = act_max.get(&x) else {
            continue;
        };
        let k = xmax.len();
        let g = &mut model.graph;
        let weights: Vec<(String, Vec<f32>, Vec<i64>)> = readers
            .iter()
            .filter_map(|r| {
                let name = g.nodes[r.node].inputs[1].clone();
                let t = &g.initializers[&name];
                Some((name, t.to_f32_vec()?, t.dims.clone()))
            })
            .collect();
        let fits = weights.iter().zip(&readers).all(|((_, _, d), r)| {
            let ins = if r.in_major { d[0] } else { d[1] };
            ins as usize == k
        });
        if weights.len() != readers.len() || !fits {
            continue;
        }
        let mut wmax = vec![0f32; k];
        for ((_, w, d), r) in weights.iter().zip(&readers) {
            let cols = d[1] as usize;
            for (idx, v) in w.iter().enumerate() {
                let j = if r.in_major { idx / cols } else { idx % cols };
                wmax[j] = wmax[j].max(v.abs());
            }
        }
        let s: Vec<f32> = (0..k)
            .map(|j| {
                let (a, w) = (xmax[j] as f64, wmax[j] as f64);
                if a <= 0.0 || w <= 0.0 {
                    1.0
                } else {
                    (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5) as f32
                }
            })
            .collect();
        for ((name, w, d), r) in weights.into_iter().zip(&readers) {
            let cols = d[1] as usize;
            let scaled: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(idx, v)| v * s[if r.in_major { idx / cols } else { idx % cols }])
                .collect();
            if let Ok(t) = Tensor::from_f32(&name, d, &scaled) {
                g.initializers.insert(name, t);
            }
        }
        let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
        if !absorb_into_layer_norm(g, &x, &inv) {
            let inv_name = names.fresh(&format!("{x}_smooth_scale"));
            let out = names.fresh(&format!("{x}_smoothed"));
            if let Ok(t) = Tensor::from_f32(&inv_name, vec![k as i64], &inv) {
                g.initializers.insert(inv_name.clone(), t);
            }
            for r in &readers {
                g.nodes[r.node].inputs[0] = out.clone();
            }
            let node = Node::new(
                &names.fresh(&format!("{x}_smooth")),
                "Mul",
                &[&x, &inv_name],
                &[&out],
            );
            g.nodes.push(node);
        }
        done += 1;
    }
    if done > 0 {
        let _ = crate::graph::sort_topologically(&mut model.graph);
    }
    done
}

/// Scales the LayerNormalization producing `x` (scale and bias, last axis)
/// when nothing else reads `x` and its parameters; true if done.
fn absorb_into_layer_norm(g: &mut Graph, x: &str, inv: &[f32]) -> bool {
    let Some(p) = g
        .nodes
        .iter()
        .position(|n| n.outputs.first().is_some_and(|o| o == x))
    else {
        return false;
    };
    let n = &g.nodes[p];
    let axis_last = n.int_or("axis", -1) == -1;
    if n.op_type != "LayerNormalization" || !axis_last || g.outputs.iter().any(|o| o.name == x) {
        return false;
    }
    let params: Vec<String> = n
        .inputs
        .iter()
        .skip(1)
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    let private = params.iter().all(|t| {
        g.nodes.iter().filter(|m| m.inputs.contains(t)).count() == 1
            && g.initializers
                .get(t)
                .is_some_and(|i| i.numel() == inv.len())
    });
    if !private || params.is_empty() {
        return false;
    }
    for t in params {
        let old = g.initializers[&t].clone();
        let Some(v) = old.to_f32_vec() else {
            return false;
        };
        let scaled: Vec<f32> = v.iter().zip(inv).map(|(a, b)| a * b).collect();
        if let Ok(new) = Tensor::from_f32(&t, old.dims.clone(), &scaled) {
            g.initializers.insert(t, new);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{ExecOptions, Executor, Value};
    use crate::graph::{DType, OpsetId, ValueInfo};

    /// x -> LayerNormalization -> {MatMul w1, Gemm(transB) w2}; z -> MatMul w3.
    fn model() -> Model {
        let mut m = Model::default();
        let k = 6;
        let init = |name: &str, dims: Vec<i64>, f: &dyn Fn(usize) -> f32| {
            let n: i64 = dims.iter().product();
            let v: Vec<f32> = (0..n as usize).map(f).collect();
            Tensor::from_f32(name, dims, &v).unwrap()
        };
        let g = &mut m.graph;
        for t in [
            init("gamma", vec![k], &|i| {
                if i == 2 {
                    40.0
                } else {
                    1.0 + i as f32 * 0.1
                }
            }),
            init("beta", vec![k], &|i| i as f32 * 0.05),
            init("w1", vec![k, 4], &|i| ((i * 7 % 11) as f32 - 5.0) * 0.1),
            init("w2", vec![3, k], &|i| ((i * 5 % 9) as f32 - 4.0) * 0.2),
            init("w3", vec![k, 2], &|i| ((i * 3 % 7) as f32 - 3.0) * 0.3),
        ] {
            g.initializers.insert(t.name.clone(), t);
        }
        let mut gemm = Node::new("fc2", "Gemm", &["ln", "w2"], &["y2"]);
        gemm.set_int("transB", 1);
        g.nodes = vec![
            Node::new("ln", "LayerNormalization", &["x", "gamma", "beta"], &["ln"]),
            Node::new("fc1", "MatMul", &["ln", "w1"], &["y1"]),
            gemm,
            Node::new("fc3", "MatMul", &["z", "w3"], &["y3"]),
        ];
        g.inputs = vec![
            ValueInfo::tensor("x", DType::F32, &[5, k]),
            ValueInfo::tensor("z", DType::F32, &[5, k]),
        ];
        g.outputs = ["y1", "y2", "y3"]
            .iter()
            .map(|n| ValueInfo::tensor(n, DType::F32, &[5, -1]))
            .collect();
        m.opsets = vec![OpsetId {
            domain: String::new(),
            version: 17,
        }];
        m
    }

    fn run(m: &Model) -> Vec<Vec<f32>> {
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
            .collect();
        let x = candle_core::Tensor::from_vec(x, (5, 6), &candle_core::Device::Cpu).unwrap();
        let z = (x.clone() * 0.5).unwrap();
        let exec = Executor::new(m, ExecOptions::default()).unwrap();
        let feeds = HashMap::from([
            ("x".to_string(), Value::new(x, DType::F32)),
            ("z".to_string(), Value::new(z, DType::F32)),
        ]);
        exec.run(&feeds)
            .unwrap()
            .iter()
            .map(|v| v.tensor.flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn smoothing_is_exact_and_moves_the_outlier_channel() {
        let before = model();
        assert_eq!(smoothable(&before), vec!["ln".to_string(), "z".to_string()]);
        let mut after = before.clone();
        let maxima = BTreeMap::from([
            ("ln".to_string(), vec![1.0, 1.0, 80.0, 1.0, 1.0, 1.0]),
            ("z".to_string(), vec![2.0; 6]),
        ]);
        assert_eq!(smooth(&mut after, &maxima, 0.5), 2);
        // LN absorbed the scale; z (a graph input) got a Mul.
        let gamma = after.graph.initializers["gamma"].to_f32_vec().unwrap();
        assert!(
            gamma[2] < 40.0 / 2.0,
            "outlier channel scaled down: {gamma:?}"
        );
        assert_eq!(
            after
                .graph
                .nodes
                .iter()
                .filter(|n| n.op_type == "Mul")
                .count(),
            1
        );
        for (a, b) in run(&before).iter().zip(run(&after)) {
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
    }
}
