//! Feeding data-set batches to a model: the single input's name, a shape
//! check against the model's declared input, and the first output as f32.

use std::collections::HashMap;

use candle_core::{DType as CDType, Tensor};

use super::StageError;
use crate::exec::{Executor, Value};
use crate::graph::{DType, Dim, Model};

/// The single graph input name, or an error naming the inputs.
pub fn input_name(model: &Model) -> Result<String, StageError> {
    match model.graph.inputs.as_slice() {
        [one] => Ok(one.name.clone()),
        many => Err(StageError::Invalid(format!(
            "a data set feeds one input, but the model has {} inputs ({})",
            many.len(),
            many.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A batch must match the model input's rank and known dimensions.
pub fn check_input_shape(model: &Model, dims: &[usize]) -> Result<(), StageError> {
    let Some(input) = model.graph.inputs.first() else {
        return Ok(());
    };
    let Some(shape) = &input.shape else {
        return Ok(());
    };
    let fits = shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .skip(1)
            .all(|(d, &n)| !matches!(d, Dim::Known(k) if *k != n as i64));
    if fits {
        return Ok(());
    }
    Err(StageError::Invalid(format!(
        "data batches have shape {dims:?} but model input '{}' expects {}",
        input.name,
        crate::graph::shape_string(shape)
    )))
}

/// The feeds of one batch `x` for `model`, shape checked.
pub fn batch_feeds(model: &Model, x: &Tensor) -> Result<HashMap<String, Value>, StageError> {
    check_input_shape(model, x.dims())?;
    Ok(HashMap::from([(
        input_name(model)?,
        Value::new(x.clone(), DType::F32),
    )]))
}

/// Runs `x` through the model; the first output flattened to `[B, rest]` f32.
pub fn first_output(exec: &Executor, model: &Model, x: &Tensor) -> Result<Tensor, StageError> {
    let outs = exec.run(&batch_feeds(model, x)?)?;
    flat_first(outs)
}

/// The first of a run's outputs flattened to `[B, rest]` f32.
fn flat_first(outs: Vec<Value>) -> Result<Tensor, StageError> {
    let y = outs
        .into_iter()
        .next()
        .ok_or_else(|| StageError::Invalid("the model has no output".into()))?;
    Ok(y.tensor.to_dtype(CDType::F32)?.flatten_from(1)?)
}

/// Samples per forward pass in statistics passes (calibration): activation
/// memory grows with it. ResNet-50's MinMax quantize stage (64 images in batches
/// of 16, 2 cores) calibrated in 5.1-6.2 s with 16 against 6.0-6.5 s with 4 in
/// six alternating pairs, at the same peak memory (the model copies dominate it):
/// fewer, larger passes, and Winograd's cost model takes the 7x7 stage at 16.
pub const STATISTICS_CHUNK: usize = 16;

/// `x` split along its first axis into pieces of at most `max` samples.
pub fn sample_chunks(x: &Tensor, max: usize) -> Result<Vec<Tensor>, StageError> {
    let n = x.dim(0)?;
    let max = max.max(1);
    Ok((0..n)
        .step_by(max)
        .map(|start| x.narrow(0, start, max.min(n - start)))
        .collect::<candle_core::Result<_>>()?)
}
