//! The statistics pass of SmoothQuant-style balancing for `quantize`: the
//! per-channel maxima (last axis) of every smoothable activation over the
//! calibration batches, then the balancing itself.

use std::collections::BTreeMap;

use candle_core::DType as CDType;

use super::feed::{batch_feeds, sample_chunks, STATISTICS_CHUNK};
use super::{StageContext, StageError};
use crate::data::{open_dataset, BatchOptions, Batches, DataConfig};
use crate::exec::{ExecOptions, Executor};
use crate::graph::Model;
use crate::quant::smooth::{smooth, smoothable};

/// Balances `model` in place; returns how many activations were balanced.
pub fn run(
    ctx: &StageContext,
    model: &mut Model,
    alpha: f64,
    data: &DataConfig,
    batches: usize,
) -> Result<usize, StageError> {
    let wanted = smoothable(model);
    if wanted.is_empty() {
        return Ok(0);
    }
    let exec = Executor::new(model, ExecOptions::inference(ctx.device))?;
    let ds = open_dataset(data)?;
    let all = Batches::new(
        ds.as_ref(),
        BatchOptions::from_config(data, ctx.seed, 0),
        ctx.device,
    );
    let total = match batches {
        0 => all.num_batches(),
        n => n.min(all.num_batches()),
    };
    let bar = crate::progress::bar(total as u64, "batches", "smoothquant statistics");
    let mut maxima: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for batch in all.take(total) {
        let batch = batch?;
        for x in sample_chunks(&batch.x, STATISTICS_CHUNK)? {
            let watched = |name: &str| wanted.iter().any(|w| w == name);
            exec.run_observed(&batch_feeds(model, &x)?, &watched, &mut |name, value| {
                if value.rank() == 0 {
                    return Ok(());
                }
                let k = value.dims()[value.rank() - 1];
                let m = value
                    .tensor
                    .to_dtype(CDType::F32)?
                    .abs()?
                    .reshape(((), k))?
                    .max(0)?
                    .to_vec1::<f32>()?;
                let entry = maxima
                    .entry(name.to_string())
                    .or_insert_with(|| vec![0.0; k]);
                for (a, b) in entry.iter_mut().zip(m) {
                    *a = a.max(b);
                }
                Ok(())
            })?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(exec);
    Ok(smooth(model, &maxima, alpha))
}
