//! `--set KEY=VALUE` overrides: dotted keys into the recipe table; the value
//! is read as a TOML value (`8`, `true`, `[1, 5]`, `"x"`) or else as a string.

use super::error::{Origin, RecipeError};

/// Splits `KEY=VALUE` and parses the value.
pub fn parse_override(arg: &str) -> Result<(String, toml::Value), RecipeError> {
    let err = |message: String| RecipeError {
        origin: Origin::Override(arg.to_string()),
        message,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE".into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err(format!(
            "`{key}` is not a dotted key such as stages.quantize.data"
        )));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    Ok((key.to_string(), value))
}

/// Sets `key` (dotted) in `table`, creating tables on the way.
pub fn apply_override(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
) -> Result<(), RecipeError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut current = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            current.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| RecipeError {
            origin: Origin::Override(key.to_string()),
            message: format!("`{}` is not a table", parts[..=i].join(".")),
        })?;
    }
    Ok(())
}
