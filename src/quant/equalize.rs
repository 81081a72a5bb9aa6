//! Cross-layer equalization (data-free, as in DFQ): for two linear layers
//! joined by positively homogeneous ops (Relu, MaxPool, AveragePool,
//! Flatten), output channel i of the first is divided by s_i and the
//! matching input channel of the second multiplied by it, with
//! s_i = sqrt(r1_i / r2_i) so both weight ranges become sqrt(r1_i * r2_i).
//! The function is unchanged; per-channel ranges even out, which helps
//! per-tensor weights and activations.

use std::collections::HashMap;

use crate::graph::{Graph, Model, Tensor};

/// Ops a channel scaling passes through unchanged.
const HOMOGENEOUS: &[&str] = &["Relu", "MaxPool", "AveragePool", "Flatten"];

/// A linear layer's weight layout.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Output channels, input channels (of the whole layer), and elements
    /// per (out, in) pair.
    outs: usize,
    ins: usize,
    inner: usize,
    /// Gemm with transB = 0 stores [in, out].
    transposed: bool,
}

impl Layout {
    fn index(&self, o: usize, i: usize, k: usize) -> usize {
        if self.transposed {
            (i * self.outs + o) * self.inner + k
        } else {
            (o * self.ins + i) * self.inner + k
        }
    }
}

fn layout(g: &Graph, node: usize) -> Option<Layout> {
    let n = &g.nodes[node];
    let w = g.initializers.get(n.inputs.get(1)?)?;
    let d: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
    match n.op_type.as_str() {
        "Conv" if d.len() >= 3 && n.int_or("group", 1) == 1 => Some(Layout {
            outs: d[0],
            ins: d[1],
            inner: d[2..].iter().product(),
            transposed: false,
        }),
        "Gemm" if d.len() == 2 && n.int_or("transA", 0) == 0 => {
            let transposed = n.int_or("transB", 0) == 0;
            let (outs, ins) = if transposed {
                (d[1], d[0])
            } else {
                (d[0], d[1])
            };
            Some(Layout {
                outs,
                ins,
                inner: 1,
                transposed,
            })
        }
        _ => None,
    }
}

/// A pair of layers to equalize: the first's output channel c feeds the
/// second's inputs `c * per_channel .. (c + 1) * per_channel`.
struct Pair {
    first: usize,
    second: usize,
    per_channel: usize,
}

fn pairs(g: &Graph) -> Vec<Pair> {
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for input in &n.inputs {
            consumers.entry(input.as_str()).or_default().push(i);
        }
    }
    let readers = |name: &str| consumers.get(name).map_or(0, Vec::len);
    let graph_output = |name: &str| g.outputs.iter().any(|o| o.name == name);
    let mut out = Vec::new();
    for (a, node) in g.nodes.iter().enumerate() {
        let Some(la) = layout(g, a) else { continue };
        // Weights (and bias) read only by this layer.
        if node
            .inputs
            .iter()
            .skip(1)
            .any(|t| !t.is_empty() && readers(t) != 1)
        {
            continue;
        }
        let mut tensor = node.outputs[0].as_str();
        let second = loop {
            if graph_output(tensor) {
                break None;
            }
            let Some([next]) = consumers.get(tensor).map(Vec::as_slice) else {
                break None;
            };
            let n = &g.nodes[*next];
            if HOMOGENEOUS.contains(&n.op_type.as_str()) && n.is_onnx_domain() {
                if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
                    break None;
                }
                tensor = n.outputs[0].as_str();
                continue;
            }
            break Some(*next);
        };
        let Some(b) = second else { continue };
        let nb = &g.nodes[b];
        let Some(lb) = layout(g, b) else { continue };
        if nb.inputs[0] != tensor || readers(&nb.inputs[1]) != 1 || lb.ins % la.outs != 0 {
            continue;
        }
        out.push(Pair {
            first: a,
            second: b,
            per_channel: lb.ins / la.outs,
        });
    }
    out
}

/// Equalizes every eligible pair `iterations` times; returns the pair count.
pub fn cross_layer_equalize(model: &mut Model, iterations: usize) -> usize {
    let g = &mut model.graph;
    let found = pairs(g);
    for _ in 0..iterations {
        for p in &found {
            equalize_pair(g, p);
        }
    }
    found.len()
}

fn equalize_pair(g: &mut Graph, p: &Pair) -> Option<()> {
    let (la, lb) = (layout(g, p.first)?, layout(g, p.second)?);
    let wa_name = g.nodes[p.first].inputs[1].clone();
    let wb_name = g.nodes[p.second].inputs[1].clone();
    let bias_name = g.nodes[p.first]
        .inputs
        .get(2)
        .filter(|b| !b.is_empty())
        .cloned();
    let mut wa = g.initializers.get(&wa_name)?.to_f32_vec()?;
    let mut wb = g.initializers.get(&wb_name)?.to_f32_vec()?;
    let mut bias = match &bias_name {
        Some(b) => Some(g.initializers.get(b)?.to_f32_vec()?),
        None => None,
    };
    for c in 0..la.outs {
        let r1 = (0..la.ins)
            .flat_map(|i| (0..la.inner).map(move |k| (i, k)))
            .map(|(i, k)| wa[la.index(c, i, k)].abs())
            .fold(0f32, f32::max) as f64;
        let ins = c * p.per_channel..(c + 1) * p.per_channel;
        let r2 = (0..lb.outs)
            .flat_map(|o| ins.clone().map(move |i| (o, i)))
            .flat_map(|(o, i)| (0..lb.inner).map(move |k| (o, i, k)))
            .map(|(o, i, k)| wb[lb.index(o, i, k)].abs())
            .fold(0f32, f32::max) as f64;
        if r1 <= 0.0 || r2 <= 0.0 {
            continue;
        }
        let s = (r1 / r2).sqrt();
        for i in 0..la.ins {
            for k in 0..la.inner {
                let idx = la.index(c, i, k);
                wa[idx] = (wa[idx] as f64 / s) as f32;
            }
        }
        if let Some(b) = bias.as_mut() {
            b[c] = (b[c] as f64 / s) as f32;
        }
        for o in 0..lb.outs {
            for i in ins.clone() {
                for k in 0..lb.inner {
                    let idx = lb.index(o, i, k);
                    wb[idx] = (wb[idx] as f64 * s) as f32;
                }
            }
        }
    }
    replace(g, &wa_name, &wa)?;
    replace(g, &wb_name, &wb)?;
    if let (Some(name), Some(b)) = (&bias_name, &bias) {
        replace(g, name, b)?;
    }
    Some(())
}

/// Writes new f32 values into an initializer (kept float32).
fn replace(g: &mut Graph, name: &str, values: &[f32]) -> Option<()> {
    let old = g.initializers.get(name)?;
    let t = Tensor::from_f32(name, old.dims.clone(), values).ok()?;
    g.initializers.insert(name.to_string(), t);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{ExecOptions, Executor, Value};
    use crate::graph::{DType, Node, ValueInfo};
    use std::collections::HashMap as Map;

    /// x -> Conv(4 -> 3) -> Relu -> MaxPool -> Conv(3 -> 2), channel ranges 1000x apart.
    fn model() -> Model {
        let mut m = Model::default();
        let w1: Vec<f32> = (0..3 * 4 * 9)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * if i < 36 { 100.0 } else { 0.1 })
            .collect();
        let w2: Vec<f32> = (0..2 * 3 * 9)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let g = &mut m.graph;
        for (name, dims, v) in [
            ("w1", vec![3, 4, 3, 3], w1),
            ("b1", vec![3], vec![1.0, -2.0, 0.5]),
            ("w2", vec![2, 3, 3, 3], w2),
        ] {
            g.initializers
                .insert(name.into(), Tensor::from_f32(name, dims, &v).unwrap());
        }
        g.nodes = vec![
            Node::new("c1", "Conv", &["x", "w1", "b1"], &["y1"]),
            Node::new("r", "Relu", &["y1"], &["y2"]),
            Node::new("p", "MaxPool", &["y2"], &["y3"]),
            Node::new("c2", "Conv", &["y3", "w2"], &["y"]),
        ];
        g.nodes[2].set_ints("kernel_shape", &[2, 2]);
        g.inputs = vec![ValueInfo::tensor("x", DType::F32, &[1, 4, 10, 10])];
        g.outputs = vec![ValueInfo::tensor("y", DType::F32, &[1, 2, 3, 3])];
        m.opsets = vec![crate::graph::OpsetId {
            domain: String::new(),
            version: 17,
        }];
        m
    }

    fn run(m: &Model) -> Vec<f32> {
        let x: Vec<f32> = (0..400)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let x =
            candle_core::Tensor::from_vec(x, (1, 4, 10, 10), &candle_core::Device::Cpu).unwrap();
        let exec = Executor::new(m, ExecOptions::default()).unwrap();
        let out = exec
            .run(&Map::from([("x".to_string(), Value::new(x, DType::F32))]))
            .unwrap();
        out[0].tensor.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn channel_ranges(m: &Model) -> Vec<f32> {
        let w = m.graph.initializers["w1"].to_f32_vec().unwrap();
        w.chunks(36)
            .map(|c| c.iter().fold(0f32, |a, v| a.max(v.abs())))
            .collect()
    }

    #[test]
    fn equalization_keeps_outputs_and_evens_ranges() {
        let before = model();
        let mut after = before.clone();
        assert_eq!(cross_layer_equalize(&mut after, 2), 1);
        let (a, b) = (run(&before), run(&after));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y}");
        }
        let spread = |r: Vec<f32>| {
            let max = r.iter().cloned().fold(0f32, f32::max);
            let min = r.iter().cloned().fold(f32::INFINITY, f32::min);
            max / min
        };
        let (s0, s1) = (
            spread(channel_ranges(&before)),
            spread(channel_ranges(&after)),
        );
        assert!(s1 < s0 / 10.0, "spread {s0} -> {s1}");
    }
}
