//! Accuracy-based rollback for `quantize`: scores each layer quantized
//! alone against the float model (mean cosine similarity of the outputs,
//! and top-1 with labels), then binary-searches the fewest most-sensitive
//! layers to keep in float so the whole model meets the tolerance.

use std::collections::BTreeSet;

use candle_core::Tensor;
use serde_json::{json, Value as Json};

use super::compare::{argmax, cosine_similarity};
use super::feed::first_output;
use super::{StageContext, StageError};
use crate::data::{open_dataset, BatchOptions, Batches, DataConfig};
use crate::exec::{ExecOptions, Executor};
use crate::graph::Model;
use crate::quant::{QdqForm, Quantizer};
use crate::recipe::{RollbackConfig, RollbackMetric};

/// How close a model is to the float one on the rollback batches.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub cosine: f64,
    /// Top-1 accuracy (0..1) when the data has labels.
    pub top1: Option<f64>,
}

/// The rollback decision.
pub struct Rollback {
    pub metric: RollbackMetric,
    pub tolerance: f64,
    pub float: Score,
    /// Each candidate layer quantized alone, most sensitive first.
    pub sensitivity: Vec<(String, Score)>,
    pub float_layers: Vec<String>,
    pub result: Score,
    pub met: bool,
    pub evaluations: usize,
}

impl Rollback {
    pub fn to_json(&self) -> Json {
        let score = |s: &Score| json!({ "cosine": s.cosine, "top1": s.top1 });
        json!({
            "metric": self.metric,
            "tolerance": self.tolerance,
            "float": score(&self.float),
            "result": score(&self.result),
            "met": self.met,
            "float_layers": self.float_layers,
            "evaluations": self.evaluations,
            "sensitivity": self.sensitivity.iter().map(|(n, s)| json!({
                "layer": n, "cosine": s.cosine, "top1": s.top1,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Float outputs and labels of the rollback batches, kept to compare against.
struct Reference<'a> {
    ctx: &'a StageContext<'a>,
    data: &'a DataConfig,
    batches: usize,
    outputs: Vec<Tensor>,
    labels: Vec<Option<Vec<i64>>>,
}

impl Reference<'_> {
    fn score(&self, model: &Model) -> Result<Score, StageError> {
        let exec = Executor::new(model, ExecOptions::inference(self.ctx.device))?;
        let ds = open_dataset(self.data)?;
        let batches = Batches::new(
            ds.as_ref(),
            BatchOptions::from_config(self.data, self.ctx.seed, 0),
            self.ctx.device,
        );
        let (mut cosine, mut n, mut correct, mut labelled) = (0.0, 0usize, 0usize, 0usize);
        for (i, batch) in batches.take(self.batches).enumerate() {
            let batch = batch?;
            let y = first_output(&exec, model, &batch.x)?;
            let ys: Vec<Vec<f32>> = y.to_vec2()?;
            let rs: Vec<Vec<f32>> = self.outputs[i].to_vec2()?;
            for (row, (a, b)) in ys.iter().zip(&rs).enumerate() {
                cosine += cosine_similarity(a, b);
                n += 1;
                if let Some(labels) = &self.labels[i] {
                    labelled += 1;
                    correct += usize::from(argmax(a) as i64 == labels[row]);
                }
            }
        }
        Ok(Score {
            cosine: cosine / n.max(1) as f64,
            top1: (labelled > 0).then(|| correct as f64 / labelled as f64),
        })
    }
}

pub fn run(
    ctx: &StageContext,
    q: &Quantizer,
    rb: &RollbackConfig,
    data: &DataConfig,
) -> Result<Rollback, StageError> {
    let mut reference = Reference {
        ctx,
        data,
        batches: 0,
        outputs: Vec::new(),
        labels: Vec::new(),
    };
    {
        let exec = Executor::new(&q.float, ExecOptions::inference(ctx.device))?;
        let ds = open_dataset(data)?;
        let batches = Batches::new(
            ds.as_ref(),
            BatchOptions::from_config(data, ctx.seed, 0),
            ctx.device,
        );
        let limit = match rb.batches {
            0 => batches.num_batches(),
            n => n,
        };
        for batch in batches.take(limit) {
            let batch = batch?;
            let y = first_output(&exec, &q.float, &batch.x)?;
            reference.outputs.push(y);
            reference.labels.push(match &batch.y {
                Some(t) => Some(t.to_vec1::<i64>()?),
                None => None,
            });
        }
        reference.batches = reference.outputs.len();
    }
    if rb.metric == RollbackMetric::Top1 && reference.labels.iter().any(Option::is_none) {
        return Err(StageError::Invalid(
            "rollback with metric = \"top1\" needs a labelled data set; use metric = \"cosine\" for unlabelled data".into(),
        ));
    }
    let float = reference.score(&q.float)?;
    let meets = |s: &Score| match rb.metric {
        RollbackMetric::Top1 => {
            (float.top1.unwrap_or(0.0) - s.top1.unwrap_or(0.0)) * 100.0 <= rb.tolerance + 1e-9
        }
        RollbackMetric::Cosine => s.cosine >= rb.tolerance,
    };
    let candidates = q.candidates();
    let all: BTreeSet<String> = candidates.iter().cloned().collect();
    let mut evaluations = 0usize;
    let mut evaluate = |skips: &BTreeSet<String>| -> Result<Score, StageError> {
        evaluations += 1;
        let built = q
            .build(skips, QdqForm::FakeQuant)
            .map_err(|e| StageError::Exec(e.into()))?;
        reference.score(&built.model)
    };
    let bar = crate::progress::bar(candidates.len() as u64, "layers", "rollback: sensitivity");
    let mut sensitivity = Vec::new();
    for name in &candidates {
        let mut skips = all.clone();
        skips.remove(name);
        sensitivity.push((name.clone(), evaluate(&skips)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    sensitivity.sort_by(|a, b| {
        let key = |s: &Score| (s.top1.unwrap_or(1.0), s.cosine);
        key(&a.1)
            .partial_cmp(&key(&b.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let worst = |k: usize| -> BTreeSet<String> {
        sensitivity[..k].iter().map(|(n, _)| n.clone()).collect()
    };
    // Binary search the fewest worst layers in float that meet the tolerance.
    let mut tried: Vec<(usize, Score)> = vec![(0, evaluate(&BTreeSet::new())?)];
    let mut hi = sensitivity.len();
    if meets(&tried[0].1) {
        hi = 0;
    } else {
        let mut lo = 1;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let s = evaluate(&worst(mid))?;
            tried.push((mid, s));
            if meets(&s) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
    }
    let k = hi;
    let result = match tried.iter().find(|(t, _)| *t == k) {
        Some((_, s)) => *s,
        None => evaluate(&worst(k))?,
    };
    let met = meets(&result);
    // Nothing met the tolerance: keep the configuration that came closest.
    let (k, result) = if met {
        (k, result)
    } else {
        let better = |a: &Score, b: &Score| match rb.metric {
            RollbackMetric::Top1 => a.top1 > b.top1,
            RollbackMetric::Cosine => a.cosine > b.cosine,
        };
        tried.iter().fold((k, result), |best, (t, s)| {
            if better(s, &best.1) {
                (*t, *s)
            } else {
                best
            }
        })
    };
    Ok(Rollback {
        metric: rb.metric,
        tolerance: rb.tolerance,
        float,
        float_layers: worst(k).into_iter().collect(),
        sensitivity,
        result,
        met,
        evaluations,
    })
}
