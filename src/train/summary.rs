//! What a training run did: its progress and history, as report metrics
//! and as a loss plot.

use serde_json::json;

use super::checkpoint::Progress;

/// What `fit` did.
#[derive(Debug, Clone)]
pub struct FitSummary {
    pub progress: Progress,
    /// The step a resumed run started from.
    pub resumed_at_step: Option<usize>,
    pub stopped_early: bool,
    /// The epoch (1-based) whose parameters the model holds.
    pub kept_epoch: usize,
    pub seconds: f64,
    pub samples_per_s: f64,
}

impl FitSummary {
    /// The history as report metrics: per-epoch records and the loss curve.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "steps": self.progress.step,
            "epochs": self.progress.epochs,
            "loss_curve": self.progress.curve,
            "kept_epoch": self.kept_epoch,
            "best_validation": self.progress.best.map(|b| b.0),
            "stopped_early": self.stopped_early,
            "resumed_at_step": self.resumed_at_step,
            "seconds": self.seconds,
            "samples_per_s": self.samples_per_s,
        })
    }
}

impl FitSummary {
    /// The loss curve (and each epoch's validation loss) as an SVG plot.
    pub fn loss_svg(&self, title: &str) -> Option<String> {
        use crate::report::plot::{line_plot, Series};
        let p = &self.progress;
        let train = p.curve.iter().map(|&(s, l)| (s as f64, l)).collect();
        let validation = p
            .epochs
            .iter()
            .filter_map(|e| Some((e["step"].as_f64()?, e["val_loss"].as_f64()?)))
            .collect();
        let series = [
            Series {
                name: "training loss",
                points: train,
                line: true,
            },
            Series {
                name: "validation loss",
                points: validation,
                line: false,
            },
        ];
        line_plot(title, "optimizer step", "loss", &series)
    }
}
