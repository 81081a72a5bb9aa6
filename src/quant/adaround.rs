//! AdaRound: instead of rounding every weight to nearest, learn for each
//! weight whether to round down or up so the layer's output on real inputs
//! stays closest to the float output. A rectified sigmoid h(V) in [0, 1] is
//! added to floor(W / s); the loss is the output MSE plus a regulariser
//! that pushes h to 0 or 1 (its exponent annealed from `beta[0]` to
//! `beta[1]` after a warm start); the result is floor + (h >= 0.5).

use std::collections::HashMap;

use candle_core::{DType as CDType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::weights::QuantWeight;
use crate::exec::{ExecError, ExecOptions, Executor, Value};
use crate::graph::{DType, Model, Node, ValueInfo};
use crate::recipe::AdaRoundConfig;

const ZETA: f64 = 1.1;
const GAMMA: f64 = -0.1;
/// Samples per optimisation step.
const MINI_BATCH: usize = 16;

/// One layer to optimise.
pub struct LayerProblem<'a> {
    /// The Conv / Gemm / MatMul node; its input 1 is the weight, 2 the bias.
    pub node: &'a Node,
    pub opset: i64,
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub quant: &'a QuantWeight,
    /// Captured float inputs of the layer, one tensor per batch.
    pub inputs: &'a [Tensor],
}

/// What the optimisation achieved: output MSE before and after.
#[derive(Debug, Clone, Copy)]
pub struct AdaRoundResult {
    pub nearest_mse: f64,
    pub learned_mse: f64,
}

/// Learns the rounding of `p.quant`; returns the new integer values
/// (unchanged when learning does not beat rounding to nearest).
pub fn adaround(
    p: &LayerProblem,
    cfg: &AdaRoundConfig,
    device: &Device,
) -> Result<(Vec<i32>, AdaRoundResult), ExecError> {
    let dims = p.quant.dims.clone();
    let exec = Executor::new(&single_node(p), ExecOptions::default())?;
    let scale = Tensor::from_vec(per_element_scales(p.quant), dims.as_slice(), device)?;
    let w = Tensor::from_vec(p.weight.to_vec(), dims.as_slice(), device)?;
    let (qmin, qmax) = p.quant.grid.range();
    let w_over_s = (&w / &scale)?;
    let floor = w_over_s.floor()?;
    let rest = (&w_over_s - &floor)?;
    // h(V) = rest at the start: sigmoid(V) = (rest - γ) / (ζ - γ).
    let sig = ((rest - GAMMA)? / (ZETA - GAMMA))?.clamp(1e-4, 1.0 - 1e-4)?;
    let v0 = (sig.log()? - (1.0 - &sig)?.log()?)?;
    let v = Var::from_tensor(&v0)?;
    let bias = match p.bias {
        Some(b) => Some(Tensor::from_vec(b.to_vec(), b.len(), device)?),
        None => None,
    };
    let run = |weights: &Tensor, x: &Tensor| -> Result<Tensor, ExecError> {
        let mut feeds = HashMap::from([
            ("x".to_string(), Value::new(x.clone(), DType::F32)),
            ("w".to_string(), Value::new(weights.clone(), DType::F32)),
        ]);
        if let Some(b) = &bias {
            feeds.insert("b".to_string(), Value::new(b.clone(), DType::F32));
        }
        Ok(exec.run(&feeds)?.remove(0).tensor)
    };
    let targets: Vec<Tensor> = p
        .inputs
        .iter()
        .map(|x| run(&w, x).map(|t| t.detach()))
        .collect::<Result<_, _>>()?;
    let dequant = |ints: &Tensor| -> Result<Tensor, ExecError> {
        Ok((ints.clamp(qmin as f64, qmax as f64)? * &scale)?)
    };
    let mse = |weights: &Tensor| -> Result<f64, ExecError> {
        let mut total = 0.0;
        for (x, y) in p.inputs.iter().zip(&targets) {
            total += (run(weights, x)? - y)?
                .sqr()?
                .mean_all()?
                .to_scalar::<f32>()? as f64;
        }
        Ok(total / p.inputs.len().max(1) as f64)
    };
    let nearest_ints = w_over_s.round()?;
    let nearest_mse = mse(&dequant(&nearest_ints)?)?;
    let mut opt = AdamW::new(
        vec![v.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let warm = (cfg.warm_start * cfg.iterations as f64) as usize;
    let numel = p.quant.values.len() as f64;
    for step in 0..cfg.iterations {
        let h = rectified_sigmoid(v.as_tensor())?;
        let soft = dequant(&(&floor + &h)?)?;
        // A mini-batch of up to MINI_BATCH consecutive samples of one batch.
        let i = step % p.inputs.len();
        let n = p.inputs[i].dim(0)?;
        let take = n.min(MINI_BATCH);
        let start = (step * 7919) % (n - take + 1);
        let x = p.inputs[i].narrow(0, start, take)?;
        let y = targets[i].narrow(0, start, take)?;
        let recon = (run(&soft, &x)? - y)?.sqr()?.mean_all()?;
        let loss = if step < warm {
            recon
        } else {
            let t = (step - warm) as f64 / (cfg.iterations - warm).max(1) as f64;
            let beta = cfg.beta[0] + (cfg.beta[1] - cfg.beta[0]) * t;
            let centred = ((h * 2.0)? - 1.0)?.abs()?.clamp(1e-12, 1.0)?;
            let reg = (1.0 - centred.powf(beta)?)?.sum_all()?;
            (recon + (reg * (cfg.reg / numel))?)?
        };
        opt.backward_step(&loss)?;
    }
    let hard = rectified_sigmoid(v.as_tensor())?
        .ge(0.5)?
        .to_dtype(CDType::F32)?;
    let learned_ints = (&floor + hard)?.clamp(qmin as f64, qmax as f64)?;
    let learned_mse = mse(&dequant(&learned_ints)?)?;
    let result = AdaRoundResult {
        nearest_mse,
        learned_mse,
    };
    let ints = if learned_mse < nearest_mse {
        learned_ints
    } else {
        nearest_ints.clamp(qmin as f64, qmax as f64)?
    };
    let values = ints
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as i32)
        .collect();
    Ok((values, result))
}

fn rectified_sigmoid(v: &Tensor) -> candle_core::Result<Tensor> {
    ((candle_nn::ops::sigmoid(v)? * (ZETA - GAMMA))? + GAMMA)?.clamp(0.0, 1.0)
}

/// The scale of every weight element (per channel along the axis, or one).
fn per_element_scales(q: &QuantWeight) -> Vec<f32> {
    let n = q.values.len();
    match q.axis {
        None => vec![q.params[0].scale; n],
        Some(a) => {
            let inner: usize = q.dims[a + 1..].iter().product();
            let ch = q.dims[a];
            (0..n).map(|i| q.params[(i / inner) % ch].scale).collect()
        }
    }
}

/// The layer alone, with its weight and bias as graph inputs `w` and `b`.
fn single_node(p: &LayerProblem) -> Model {
    let mut node = p.node.clone();
    node.inputs = vec!["x".into(), "w".into()];
    if p.bias.is_some() {
        node.inputs.push("b".into());
    }
    node.outputs = vec!["y".into()];
    let mut m = Model {
        opsets: vec![crate::graph::OpsetId {
            domain: String::new(),
            version: p.opset,
        }],
        ..Model::default()
    };
    m.graph.inputs = node
        .inputs
        .iter()
        .map(|n| ValueInfo {
            name: n.clone(),
            dtype: Some(DType::F32),
            ..ValueInfo::default()
        })
        .collect();
    m.graph.outputs = vec![ValueInfo {
        name: "y".into(),
        dtype: Some(DType::F32),
        ..ValueInfo::default()
    }];
    m.graph.nodes = vec![node];
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{WeightAlgo, WeightConfig};

    #[test]
    fn learned_rounding_beats_nearest_at_4_bits() {
        let dev = Device::Cpu;
        let (k, n, rows) = (24usize, 8usize, 64usize);
        let w: Vec<f32> = (0..n * k)
            .map(|i| (((i * 37) % 29) as f32 - 14.0) / 9.0)
            .collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| (((i * 13) % 23) as f32 - 11.0) / 5.0)
            .collect();
        let x = Tensor::from_vec(x, (rows, k), &dev).unwrap();
        let cfg = WeightConfig {
            algo: WeightAlgo::Minmax,
            bits: 4,
            dtype: crate::recipe::WeightType::Int8,
            per_channel: true,
            bias_correction: false,
            rounding: crate::recipe::Rounding::Adaround,
            adaround: AdaRoundConfig::default(),
        };
        let quant = super::super::weights::quantize_weight(&w, &[n, k], Some(0), &cfg);
        let mut node = Node::new("fc", "Gemm", &["x", "w"], &["y"]);
        node.set_int("transB", 1);
        let problem = LayerProblem {
            node: &node,
            opset: 17,
            weight: &w,
            bias: None,
            quant: &quant,
            inputs: &[x],
        };
        let ada = AdaRoundConfig {
            iterations: 300,
            ..AdaRoundConfig::default()
        };
        let (values, r) = adaround(&problem, &ada, &dev).unwrap();
        assert!(
            r.learned_mse < 0.9 * r.nearest_mse,
            "learned {} vs nearest {}",
            r.learned_mse,
            r.nearest_mse
        );
        assert!(values.iter().all(|&v| (-8..=7).contains(&v)));
        // Every learned value is the floor or the ceiling of W / s.
        for (i, (&v, &wf)) in values.iter().zip(&w).enumerate() {
            let s = quant.params[i / k].scale;
            let t = wf / s;
            assert!(v == t.floor() as i32 || v == t.ceil() as i32 || v == 7 || v == -8);
        }
    }
}
