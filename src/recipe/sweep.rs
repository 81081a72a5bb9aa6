//! `[sweep]`: dotted recipe keys, each with a list of values; every
//! combination is one run. Checked now by applying each value and
//! validating the result; running sweeps comes later.

use serde::Serialize;

use super::error::RecipeError;
use super::source::RecipeSource;
use super::{from_table, overrides, Recipe};

/// One swept key and its values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepAxis {
    pub key: String,
    pub values: Vec<toml::Value>,
}

pub fn parse_sweep(
    source: &RecipeSource,
    table: &toml::Table,
) -> Result<Vec<SweepAxis>, RecipeError> {
    let Some(value) = table.get("sweep") else {
        return Ok(Vec::new());
    };
    let sweep = value
        .as_table()
        .ok_or_else(|| source.error(&["sweep"], "`sweep` must be a table"))?;
    let mut axes = Vec::new();
    for (key, values) in sweep {
        let values = values.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
            source.error(
                &["sweep", key],
                format!("sweep `{key}` must be a non-empty list of values"),
            )
        })?;
        axes.push(SweepAxis {
            key: key.clone(),
            values: values.clone(),
        });
    }
    Ok(axes)
}

/// Each swept value, applied alone, must give a valid recipe.
pub fn check_sweep(source: &RecipeSource, recipe: &Recipe) -> Result<(), RecipeError> {
    for axis in &recipe.sweep {
        if axis.key.starts_with("sweep") {
            return Err(source.key_error(&["sweep", &axis.key], "a sweep cannot sweep itself"));
        }
        let mut base = recipe.resolved.clone();
        base.remove("sweep");
        for value in &axis.values {
            let mut t = base.clone();
            overrides::apply_override(&mut t, &axis.key, value.clone())?;
            if let Err(e) = from_table(source, t) {
                return Err(source.error(
                    &["sweep", &axis.key],
                    format!(
                        "sweep value {value} for `{}` gives an invalid recipe: {}",
                        axis.key, e.message
                    ),
                ));
            }
        }
    }
    Ok(())
}
