//! Learning rate per optimizer step: linear warm-up to the peak, then
//! constant, step decay by epoch, or half a cosine down to `min_lr`.

use crate::recipe::{ScheduleConfig, ScheduleKind};

/// A schedule over a known number of steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    cfg: ScheduleConfig,
    peak: f64,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Schedule {
    pub fn new(
        cfg: &ScheduleConfig,
        peak: f64,
        steps_per_epoch: usize,
        total_steps: usize,
    ) -> Self {
        Schedule {
            cfg: cfg.clone(),
            peak,
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps: total_steps.max(1),
        }
    }

    /// The rate of step `step` (0-based: the first update is step 0).
    pub fn lr(&self, step: usize) -> f64 {
        let c = &self.cfg;
        if step < c.warmup_steps {
            return self.peak * (step + 1) as f64 / c.warmup_steps as f64;
        }
        match c.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Step => {
                let epoch = step / self.steps_per_epoch;
                self.peak * c.gamma.powi((epoch / c.step_epochs) as i32)
            }
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(c.warmup_steps).max(1) as f64;
                let t = ((step - c.warmup_steps) as f64 / span).min(1.0);
                c.min_lr + (self.peak - c.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup: usize) -> Schedule {
        let cfg = ScheduleConfig {
            kind,
            warmup_steps: warmup,
            step_epochs: 2,
            gamma: 0.5,
            min_lr: 0.01,
        };
        Schedule::new(&cfg, 1.0, 10, 100)
    }

    #[test]
    fn warm_up_rises_linearly_to_the_peak() {
        let s = schedule(ScheduleKind::Constant, 4);
        let lrs: Vec<f64> = (0..6).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn step_decay_halves_every_two_epochs() {
        let s = schedule(ScheduleKind::Step, 0);
        assert_eq!(s.lr(19), 1.0);
        assert_eq!(s.lr(20), 0.5);
        assert_eq!(s.lr(45), 0.25);
    }

    #[test]
    fn cosine_runs_from_peak_to_min_lr() {
        let s = schedule(ScheduleKind::Cosine, 10);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(55) - (0.01 + 0.99 * 0.5)).abs() < 1e-12);
        assert!((s.lr(100) - 0.01).abs() < 1e-12);
        assert!(s.lr(30) > s.lr(31));
    }
}
