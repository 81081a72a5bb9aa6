//! Recipes: the TOML file that says which stages compress which model.
//!
//! `load_recipe` reads the file, applies `--set` overrides, checks every
//! section (unknown keys are errors), resolves paths against the recipe's
//! directory and stage references against each other, and returns a
//! [`Recipe`] ready to schedule. Every error names file:line:col.

mod error;
mod located;
mod overrides;
mod quantize;
mod schema;
mod source;
mod stage;
mod sweep;
mod train;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::{Origin, RecipeError};
pub use overrides::parse_override;
pub use quantize::{
    ActivationAlgo, ActivationConfig, ActivationType, AdaRoundConfig, EqualizeConfig,
    EqualizeMethod, LayerConfig, QuantizeParams, RollbackConfig, RollbackMetric, Rounding,
    WeightAlgo, WeightConfig, WeightType, DEFAULT_OPS,
};
pub use schema::{ModelSection, RecipeMeta};
pub use source::RecipeSource;
pub use stage::{EvalParams, FuseParams, StageKind, StageParams, StageSpec};
pub use sweep::SweepAxis;
pub use train::{
    BatchNormMode, BlockLoss, DistillConfig, DistillParams, LossConfig, LossKind, OptimizerConfig,
    OptimizerKind, ScheduleConfig, ScheduleKind, TrainParams, ValidationMetric,
};
pub use validate::{dependencies, MODEL};

use crate::data::DataConfig;
use located::deserialize_at;

/// A validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub path: PathBuf,
    pub meta: RecipeMeta,
    pub model: ModelSection,
    /// The model file, resolved against the recipe's directory.
    pub model_path: PathBuf,
    /// `[data.NAME]` tables, paths resolved.
    pub data: BTreeMap<String, DataConfig>,
    /// Stages in file order, default inputs filled in.
    pub stages: Vec<StageSpec>,
    pub sweep: Vec<SweepAxis>,
    /// The whole recipe after overrides (for the lockfile).
    pub resolved: toml::Table,
}

/// Reads and validates a recipe; `overrides` are `KEY=VALUE` strings.
pub fn load_recipe(path: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
    let mut source = RecipeSource::read(path)?;
    let mut table: toml::Table = toml::from_str(&source.text).map_err(|e| {
        source.error_at(
            e.span().unwrap_or(0..0),
            format!("invalid TOML: {}", e.message()),
        )
    })?;
    for arg in overrides {
        let (key, value) = parse_override(arg)?;
        overrides::apply_override(&mut table, &key, value.clone())?;
        source.overridden.push((key, value.to_string()));
    }
    let recipe = from_table(&source, table)?;
    sweep::check_sweep(&source, &recipe)?;
    Ok(recipe)
}

/// Validates a recipe table (after overrides) read from `source`.
pub fn from_table(source: &RecipeSource, table: toml::Table) -> Result<Recipe, RecipeError> {
    for key in table.keys() {
        if !schema::SECTIONS.contains(&key.as_str()) {
            return Err(source.key_error(
                &[key.as_str()],
                format!(
                    "unknown section `{key}` (expected one of {})",
                    schema::SECTIONS.join(", ")
                ),
            ));
        }
    }
    let section = |name: &str| -> Result<toml::Value, RecipeError> {
        table
            .get(name)
            .cloned()
            .ok_or_else(|| source.error(&[], format!("the recipe has no [{name}] section")))
    };
    let meta: RecipeMeta = deserialize_at(source, &["recipe"], section("recipe")?)?;
    if meta.name.trim().is_empty() || meta.name.contains(['/', '\\']) {
        return Err(source.error(
            &["recipe", "name"],
            "`name` must be non-empty and contain no path separators",
        ));
    }
    let model: ModelSection = deserialize_at(source, &["model"], section("model")?)?;
    let model_path = source.dir().join(&model.path);
    if !model_path.is_file() {
        return Err(source.error(
            &["model", "path"],
            format!("model file not found: {}", model_path.display()),
        ));
    }
    let data = parse_data(source, &table)?;
    let stage_tables = match table.get("stages") {
        None => return Err(source.error(&[], "the recipe has no [stages.NAME] tables")),
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => {
            return Err(source.error(&["stages"], "`stages` must be a table of stage tables"))
        }
    };
    let mut stages = Vec::new();
    for (name, value) in &stage_tables {
        let t = value.as_table().ok_or_else(|| {
            source.error(
                &["stages", name],
                format!("`stages.{name}` must be a table"),
            )
        })?;
        stages.push(stage::parse_stage(source, name, t)?);
    }
    if stages.is_empty() {
        return Err(source.error(&["stages"], "the recipe has no stages"));
    }
    let data_names: Vec<String> = data.keys().cloned().collect();
    let stages = validate::resolve_references(source, stages, &data_names)?;
    let sweep = sweep::parse_sweep(source, &table)?;
    Ok(Recipe {
        path: source.path.clone(),
        meta,
        model,
        model_path,
        data,
        stages,
        sweep,
        resolved: table,
    })
}

/// `[data.NAME]`: typed data set configs, paths resolved against the
/// recipe's directory and checked to exist.
fn parse_data(
    source: &RecipeSource,
    table: &toml::Table,
) -> Result<BTreeMap<String, DataConfig>, RecipeError> {
    let mut out = BTreeMap::new();
    let Some(value) = table.get("data") else {
        return Ok(out);
    };
    let data = value
        .as_table()
        .ok_or_else(|| source.error(&["data"], "`data` must be a table of data sets"))?;
    for (name, entry) in data {
        let path = ["data", name.as_str()];
        let mut cfg: DataConfig = deserialize_at(source, &path, entry.clone())?;
        if let Err(errors) = cfg.validate() {
            let first = &errors[0];
            let key: Vec<&str> = path.iter().copied().chain(first.key.split('.')).collect();
            return Err(source.error(&key, format!("`{}`: {}", first.key, first.message)));
        }
        cfg.resolve(&source.dir());
        if !cfg.path.exists() {
            return Err(source.error(
                &["data", name, "path"],
                format!("data not found: {}", cfg.path.display()),
            ));
        }
        if let Some(labels) = cfg.labels.as_ref().filter(|l| !l.exists()) {
            return Err(source.error(
                &["data", name, "labels"],
                format!("labels not found: {}", labels.display()),
            ));
        }
        out.insert(name.clone(), cfg);
    }
    Ok(out)
}
