//! Calibration: runs batches through the float model and feeds each
//! watched tensor to its observer as it is produced (nothing is stored
//! beyond the observers' histograms).

use std::collections::{BTreeMap, HashMap};

use super::observer::{Histograms, Observer};
use crate::exec::{with_f32_slice, ExecError, Executor, Value};

/// What to record for one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub bins: usize,
    pub channel_means: bool,
    pub histograms: Histograms,
}

/// Observers of the watched tensors, filled batch by batch.
pub struct Calibrator {
    pub observers: BTreeMap<String, Observer>,
    pub batches: usize,
}

impl Calibrator {
    pub fn new(watch: &BTreeMap<String, Watch>) -> Self {
        Calibrator {
            observers: watch
                .iter()
                .map(|(name, w)| {
                    let obs = Observer::filling(w.bins, w.channel_means, w.histograms);
                    (name.clone(), obs)
                })
                .collect(),
            batches: 0,
        }
    }

    /// Runs one batch; returns the model's outputs.
    pub fn observe_batch(
        &mut self,
        exec: &Executor,
        feeds: &HashMap<String, Value>,
    ) -> Result<Vec<Value>, ExecError> {
        let names: std::collections::HashSet<String> = self.observers.keys().cloned().collect();
        let watched = |name: &str| names.contains(name);
        let observers = &mut self.observers;
        let outs = exec.run_observed(feeds, &watched, &mut |name, value| {
            if let Some(obs) = observers.get_mut(name) {
                if value.dtype.is_float() {
                    with_f32_slice(&value.tensor, |values| obs.observe(values, value.dims()))?;
                }
            }
            Ok(())
        })?;
        self.batches += 1;
        Ok(outs)
    }
}
