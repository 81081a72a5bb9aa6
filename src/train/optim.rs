//! Optimizers in PyTorch's formulation: SGD with momentum (optionally
//! Nesterov) and L2 weight decay, AdamW with decoupled decay; global-norm
//! gradient clipping; gradient masks that keep pruned weights at zero.
//! The state is a list of named tensors, so checkpoints restore it exactly.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::TrainError;
use crate::recipe::{OptimizerConfig, OptimizerKind};

/// One trained parameter.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Weight decay applies (weights of rank 2 and more).
    pub decay: bool,
    /// 1 where the weight may change, 0 where it stays zero (pruned).
    pub mask: Option<Tensor>,
    /// Values never fall below this after an update (quantization scales stay positive).
    pub floor: Option<f64>,
}

/// An optimizer and its per-parameter state.
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// Steps taken (AdamW's bias correction).
    steps: u64,
    /// SGD: "momentum"; AdamW: "m" and "v"; keyed by (slot, parameter).
    state: BTreeMap<(String, String), Tensor>,
}

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig) -> Self {
        Optimizer {
            cfg: cfg.clone(),
            steps: 0,
            state: BTreeMap::new(),
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every parameter that has a gradient, at learning rate
    /// `lr`, with every gradient first multiplied by `grad_scale` (clipping).
    pub fn step(
        &mut self,
        params: &[Param],
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<(), TrainError> {
        self.steps += 1;
        for p in params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: a gradient can still reference the forward graph, and the momentum
            // buffers built from it would keep every step's graph alive.
            let mut g = g.detach().to_dtype(p.var.dtype())?;
            if grad_scale != 1.0 {
                g = (g * grad_scale)?;
            }
            if let Some(mask) = &p.mask {
                g = (g * mask)?;
            }
            // Detached too: an op on the variable is tracked, and the state built from it
            // would chain every step's buffers to the previous ones.
            let w = p.var.as_tensor().detach();
            let updated = match self.cfg.kind {
                OptimizerKind::Sgd => self.sgd(p, &w, g, lr)?,
                OptimizerKind::Adamw => self.adamw(p, &w, g, lr)?,
            };
            let updated = match p.floor {
                Some(f) => updated.maximum(f)?,
                None => updated,
            };
            p.var.set(&updated)?;
        }
        Ok(())
    }

    /// `g += wd * w; v = mu * v + g; d = nesterov ? g + mu * v : v; w -= lr * d`
    /// (the first step sets `v = g`, as PyTorch does).
    fn sgd(&mut self, p: &Param, w: &Tensor, mut g: Tensor, lr: f64) -> Result<Tensor, TrainError> {
        let c = &self.cfg;
        if p.decay && c.weight_decay > 0.0 {
            g = (g + (w * c.weight_decay)?)?;
        }
        let direction = if c.momentum > 0.0 {
            let key = ("momentum".to_string(), p.name.clone());
            let v = match self.state.get(&key) {
                Some(v) => ((v * c.momentum)? + &g)?,
                None => g.clone(),
            };
            let d = if c.nesterov {
                (&g + (&v * c.momentum)?)?
            } else {
                v.clone()
            };
            self.state.insert(key, v);
            d
        } else {
            g
        };
        Ok((w - (direction * lr)?)?)
    }

    /// `w *= 1 - lr * wd; m, v = moving averages of g, g²;
    /// w -= lr * m̂ / (sqrt(v̂) + eps)` with bias-corrected m̂, v̂.
    fn adamw(&mut self, p: &Param, w: &Tensor, g: Tensor, lr: f64) -> Result<Tensor, TrainError> {
        let c = &self.cfg;
        let [b1, b2] = c.betas;
        let slot = |s: &str| (s.to_string(), p.name.clone());
        let m = match self.state.get(&slot("m")) {
            Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
            None => (&g * (1.0 - b1))?,
        };
        let v = match self.state.get(&slot("v")) {
            Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
            None => (g.sqr()? * (1.0 - b2))?,
        };
        let t = self.steps as i32;
        let m_hat = (&m / (1.0 - b1.powi(t)))?;
        let v_hat = (&v / (1.0 - b2.powi(t)))?;
        let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
        let mut w = w.clone();
        if p.decay && c.weight_decay > 0.0 {
            w = (w * (1.0 - lr * c.weight_decay))?;
        }
        self.state.insert(slot("m"), m);
        self.state.insert(slot("v"), v);
        Ok((w - (update * lr)?)?)
    }

    /// The state as named tensors ("SLOT/PARAM") and the step count.
    pub fn state(&self) -> (u64, Vec<(String, Tensor)>) {
        let named = self
            .state
            .iter()
            .map(|((slot, param), t)| (format!("{slot}/{param}"), t.clone()))
            .collect();
        (self.steps, named)
    }

    /// Restores what [`Optimizer::state`] returned.
    pub fn load_state(
        &mut self,
        steps: u64,
        named: Vec<(String, Tensor)>,
    ) -> Result<(), TrainError> {
        self.steps = steps;
        self.state.clear();
        for (key, t) in named {
            let (slot, param) = key
                .split_once('/')
                .ok_or_else(|| TrainError::Checkpoint(format!("bad optimizer entry '{key}'")))?;
            self.state.insert((slot.to_string(), param.to_string()), t);
        }
        Ok(())
    }
}

/// The global L2 norm of the parameters' gradients.
pub fn grad_norm(params: &[Param], grads: &GradStore) -> Result<f64, TrainError> {
    let mut total = 0f64;
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            let g = match &p.mask {
                Some(m) => (g * m)?,
                None => g.clone(),
            };
            total += g
                .to_dtype(candle_core::DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

/// The factor that brings a gradient of norm `norm` down to `max` (1 when already below).
pub fn clip_scale(norm: f64, max: Option<f64>) -> f64 {
    match max {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn param(values: &[f32], decay: bool) -> Param {
        let t = Tensor::new(values, &Device::Cpu).unwrap();
        Param {
            name: "w".into(),
            var: Var::from_tensor(&t).unwrap(),
            decay,
            mask: None,
            floor: None,
        }
    }

    /// Gradient of sum(c * w) is c: a fixed gradient to check update formulas by hand.
    fn grads_of(p: &Param, c: &[f32]) -> GradStore {
        let c = Tensor::new(c, &Device::Cpu).unwrap();
        (p.var.as_tensor() * c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    fn values(p: &Param) -> Vec<f32> {
        p.var.as_tensor().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_nesterov_with_weight_decay_matches_pytorch_formula() {
        let cfg = OptimizerConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..OptimizerConfig::default()
        };
        let mut opt = Optimizer::new(&cfg);
        let p = param(&[1.0, -2.0], true);
        // step 1: g = 0.5 + 0.01 w; v = g; d = g + 0.9 v; w -= 0.1 d
        let (mut w, mut v) = ([1.0f64, -2.0], [0.0f64; 2]);
        for step in 0..2 {
            let grads = grads_of(&p, &[0.5, 0.5]);
            opt.step(std::slice::from_ref(&p), &grads, 0.1, 1.0)
                .unwrap();
            for i in 0..2 {
                let g = 0.5 + 0.01 * w[i];
                v[i] = if step == 0 { g } else { 0.9 * v[i] + g };
                w[i] -= 0.1 * (g + 0.9 * v[i]);
            }
            close(&values(&p), &w);
        }
    }

    #[test]
    fn adamw_matches_the_decoupled_formula() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adamw,
            weight_decay: 0.1,
            ..OptimizerConfig::default()
        };
        let mut opt = Optimizer::new(&cfg);
        let p = param(&[0.3], true);
        let (lr, mut w, mut m, mut v) = (0.01f64, 0.3f64, 0.0f64, 0.0f64);
        for t in 1..=3 {
            let grads = grads_of(&p, &[-2.0]);
            opt.step(std::slice::from_ref(&p), &grads, lr, 1.0).unwrap();
            w *= 1.0 - lr * 0.1;
            m = 0.9 * m + 0.1 * -2.0;
            v = 0.999 * v + 0.001 * 4.0;
            let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
            w -= lr * mh / (vh.sqrt() + 1e-8);
            close(&values(&p), &[w]);
        }
    }

    #[test]
    fn masked_weights_stay_zero_and_state_round_trips() {
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Adamw,
            weight_decay: 0.1,
            ..OptimizerConfig::default()
        };
        let mut p = param(&[0.0, 1.0], true);
        p.mask = Some(Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap());
        let mut opt = Optimizer::new(&cfg);
        for _ in 0..3 {
            let grads = grads_of(&p, &[3.0, 3.0]);
            opt.step(std::slice::from_ref(&p), &grads, 0.1, 1.0)
                .unwrap();
        }
        let w = values(&p);
        assert_eq!(w[0], 0.0);
        assert!(w[1] < 1.0);
        let (steps, state) = opt.state();
        assert_eq!((steps, state.len()), (3, 2));
        let mut other = Optimizer::new(&cfg);
        other.load_state(steps, state).unwrap();
        let q = param(&w, true);
        let grads = grads_of(&p, &[1.0, 1.0]);
        opt.step(std::slice::from_ref(&p), &grads, 0.1, 1.0)
            .unwrap();
        let grads = grads_of(&q, &[1.0, 1.0]);
        other
            .step(std::slice::from_ref(&q), &grads, 0.1, 1.0)
            .unwrap();
        assert_eq!(values(&q)[1], values(&p)[1]);
    }

    #[test]
    fn a_floor_keeps_values_above_it() {
        let mut opt = Optimizer::new(&OptimizerConfig::default());
        let mut p = param(&[1e-3, 2.0], false);
        p.floor = Some(1e-4);
        let grads = grads_of(&p, &[100.0, 100.0]);
        opt.step(std::slice::from_ref(&p), &grads, 0.1, 1.0)
            .unwrap();
        assert_eq!(values(&p), vec![1e-4, 1e-4]);
    }

    #[test]
    fn clipping_scales_to_the_maximum_norm() {
        let p = param(&[0.0, 0.0], false);
        let grads = grads_of(&p, &[3.0, 4.0]);
        let norm = grad_norm(std::slice::from_ref(&p), &grads).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        assert!((clip_scale(norm, Some(1.0)) * norm - 1.0).abs() < 1e-5);
        assert_eq!(clip_scale(norm, Some(10.0)), 1.0);
        assert_eq!(clip_scale(norm, None), 1.0);
    }
}
