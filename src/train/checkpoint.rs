//! Training checkpoints: one safetensors file holding the parameters, the
//! optimizer state, the best epoch's parameters, and (as JSON metadata) the
//! position in the run and the history so far. Written to a temporary file
//! and renamed, so a killed process leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::TrainError;

const FILE: &str = "checkpoint.safetensors";
const META_KEY: &str = "amct.training";

/// Where a run is and what it has recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of `epoch` already trained on.
    pub batches_done: usize,
    /// Per-epoch records so far.
    pub epochs: Vec<serde_json::Value>,
    /// `(step, mean loss)` points of the loss curve.
    pub curve: Vec<(usize, f64)>,
    /// Running sums of the epoch in progress: loss, correct, samples.
    pub epoch_loss: f64,
    pub epoch_correct: usize,
    pub epoch_samples: usize,
    /// The objective reported correct counts (it has labels).
    pub labelled: bool,
    /// The loss curve's current window: sum and count.
    pub window_loss: f64,
    pub window_steps: usize,
    /// Best validation value, its epoch, and epochs since it improved.
    pub best: Option<(f64, usize)>,
    pub stale_epochs: usize,
}

/// Everything a checkpoint holds.
pub struct Checkpoint {
    pub progress: Progress,
    /// Groups of named tensors: "param", "optim", "best".
    pub tensors: Vec<(String, Tensor)>,
    pub optimizer_steps: u64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    progress: Progress,
    optimizer_steps: u64,
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes `ckpt` into `dir` atomically.
pub fn save(dir: &Path, ckpt: &Checkpoint) -> Result<(), TrainError> {
    let io = |e: std::io::Error| TrainError::Checkpoint(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let meta = serde_json::to_string(&Meta {
        progress: ckpt.progress.clone(),
        optimizer_steps: ckpt.optimizer_steps,
    })
    .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let info = HashMap::from([(META_KEY.to_string(), meta)]);
    let mut contiguous = Vec::with_capacity(ckpt.tensors.len());
    for (name, t) in &ckpt.tensors {
        contiguous.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), Some(info))
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path_in(dir)).map_err(io)
}

/// Reads the checkpoint in `dir`, if there is one.
pub fn load(dir: &Path, device: &Device) -> Result<Option<Checkpoint>, TrainError> {
    let path = path_in(dir);
    if !path.exists() {
        return Ok(None);
    }
    let bad = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| bad("no training metadata".into()))?;
    let meta: Meta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(Checkpoint {
        progress: meta.progress,
        tensors,
        optimizer_steps: meta.optimizer_steps,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("amct-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir, &Device::Cpu).unwrap().is_none());
        let w = Tensor::new(&[[0.1f32, -3.25e-7], [1e30, 7.0]], &Device::Cpu).unwrap();
        let progress = Progress {
            step: 7,
            epoch: 1,
            batches_done: 3,
            curve: vec![(5, 0.123456789012345)],
            best: Some((0.9, 0)),
            ..Progress::default()
        };
        let ckpt = Checkpoint {
            progress: progress.clone(),
            tensors: vec![("param/w".into(), w.clone())],
            optimizer_steps: 7,
        };
        save(&dir, &ckpt).unwrap();
        let back = load(&dir, &Device::Cpu).unwrap().unwrap();
        assert_eq!(back.progress, progress);
        assert_eq!(back.optimizer_steps, 7);
        assert_eq!(back.tensors[0].0, "param/w");
        assert_eq!(
            back.tensors[0].1.to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(path_in(&dir), b"garbage").unwrap();
        assert!(matches!(
            load(&dir, &Device::Cpu),
            Err(TrainError::Checkpoint(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
