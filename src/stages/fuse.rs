//! `fuse`: the exact rewrites (BatchNorm folding, constant folding,
//! Identity/Dropout and dead-node removal); outputs equal the input model's
//! within float rounding.

use super::{StageContext, StageError, StageOutput};
use crate::passes::{fuse_pipeline, FuseOptions};
use crate::recipe::FuseParams;

pub fn run(ctx: &StageContext, params: &FuseParams) -> Result<StageOutput, StageError> {
    let input = ctx.spec.input.as_deref().unwrap_or(crate::recipe::MODEL);
    let model = ctx.model(input)?;
    let options = FuseOptions {
        fold_batch_norm: params.fold_batch_norm,
        fold_constants: params.fold_constants,
        exclude: params.exclude.clone(),
    };
    let (fused, report) = fuse_pipeline(model, &options)?;
    let metrics = serde_json::to_value(&report).map_err(|e| StageError::Internal(e.to_string()))?;
    Ok(StageOutput::new(Some(fused), metrics))
}
