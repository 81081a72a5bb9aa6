//! Typed deserialization of one part of the recipe, with serde's errors
//! mapped back to the file position of the key or value they concern.

use serde::de::DeserializeOwned;

use super::error::RecipeError;
use super::source::RecipeSource;

/// Deserializes `value` (found at `path` in the recipe) into `T`.
pub fn deserialize_at<T: DeserializeOwned>(
    source: &RecipeSource,
    path: &[&str],
    value: toml::Value,
) -> Result<T, RecipeError> {
    value.try_into::<T>().map_err(|e| {
        let message = e.message().to_string();
        // toml reports the key path of a nested error as a final "in `a.b`" line.
        let display = e.to_string();
        let inner: Vec<String> = display
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')))
            .map(|keys| keys.split('.').map(str::to_string).collect())
            .unwrap_or_default();
        let mut full: Vec<&str> = path.to_vec();
        full.extend(inner.iter().map(String::as_str));
        if let Some(field) = unknown_field(&message) {
            full.push(field);
            source.key_error(
                &full,
                format!("unknown key `{field}` in [{}]: {message}", path.join(".")),
            )
        } else if let Some(field) = missing_field(&message) {
            source.error(
                &full,
                format!("missing key `{field}` in [{}]", full.join(".")),
            )
        } else {
            source.error(&full, format!("`{}`: {message}", full.join(".")))
        }
    })
}

fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}
