//! The raw TOML schema of the fixed sections ([recipe], [model]); kept
//! apart from their meaning (validation and resolution live elsewhere).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[recipe]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipeMeta {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    /// "cpu", "cuda" or "cuda:N"; `--device` overrides.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default)]
    pub description: String,
    /// Compute-heavy stages run at once on the device (at least 1).
    #[serde(default = "default_jobs", deserialize_with = "at_least_one")]
    pub jobs: usize,
}

fn default_jobs() -> usize {
    1
}

/// A count that must be 1 or more (serde's error is located by the caller).
fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1, got 0"));
    }
    Ok(n)
}

fn default_device() -> String {
    "cpu".into()
}

/// `[model]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The ONNX file, relative to the recipe file.
    pub path: String,
    /// Pins dynamic input dimensions: `inputs = { input = [1, 3, 224, 224] }`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Vec<i64>>,
}

/// Top-level sections a recipe may have.
pub const SECTIONS: &[&str] = &["recipe", "model", "data", "stages", "sweep"];
