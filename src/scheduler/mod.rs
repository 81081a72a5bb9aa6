//! The run loop: stage DAG from the recipe's references, content-addressed
//! cache, outputs per stage, report and lockfile.

pub mod cache;
mod keys;
mod lockfile;
mod outputs;
mod run;

pub use cache::{Cache, CacheError};
pub use keys::{file_hash, stage_key, TOOL_VERSION};
pub use run::{run_recipe, RunError, RunOptions, RunReport, StageRecord, StageStatus};
