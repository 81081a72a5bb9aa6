//! The recipe text with a span-preserving parse, to locate any key or value
//! by its path (`["stages", "quantize", "data"]`) for error messages.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Document, Item, TableLike};

use super::error::{Origin, RecipeError};

/// A recipe file's text and its span-preserving parse.
pub struct RecipeSource {
    pub path: PathBuf,
    pub text: String,
    doc: Document<String>,
    /// Dotted keys set from the command line (errors there name the override).
    pub overridden: Vec<(String, String)>,
}

impl RecipeSource {
    /// Reads and parses the file; syntax errors are located.
    pub fn read(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            origin: Origin::Path(path.to_path_buf()),
            message: format!("cannot read the recipe: {e}"),
        })?;
        Self::from_text(path, text)
    }

    pub fn from_text(path: &Path, text: String) -> Result<Self, RecipeError> {
        match Document::parse(text.clone()) {
            Ok(doc) => Ok(RecipeSource {
                path: path.to_path_buf(),
                text,
                doc,
                overridden: Vec::new(),
            }),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let message = format!("invalid TOML: {}", e.message().trim());
                Err(Self::error_at_text(path, &text, span, message))
            }
        }
    }

    /// The directory relative paths are resolved against.
    pub fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// An error at a byte span of the file.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> RecipeError {
        Self::error_at_text(&self.path, &self.text, span, message.into())
    }

    fn error_at_text(path: &Path, text: &str, span: Range<usize>, message: String) -> RecipeError {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let line_end = text[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(text.len());
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        RecipeError {
            origin: Origin::File {
                path: path.to_path_buf(),
                line,
                column,
                source_line: text[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_string(),
                width: text[start..end].chars().count(),
            },
            message,
        }
    }

    /// An error about the key or value at `path`; overridden keys name the
    /// override, unknown paths fall back to the deepest existing parent.
    pub fn error(&self, path: &[&str], message: impl Into<String>) -> RecipeError {
        let message = message.into();
        let dotted = path.join(".");
        if let Some((k, v)) = self
            .overridden
            .iter()
            .find(|(k, _)| dotted == *k || dotted.starts_with(&format!("{k}.")))
        {
            return RecipeError {
                origin: Origin::Override(format!("{k}={v}")),
                message,
            };
        }
        for depth in (0..=path.len()).rev() {
            if let Some(span) = self.span_of(&path[..depth]) {
                return self.error_at(span, message);
            }
        }
        self.error_at(0..0, message)
    }

    /// An error pointing at the key itself (for unknown keys).
    pub fn key_error(&self, path: &[&str], message: impl Into<String>) -> RecipeError {
        match self.key_span(path) {
            Some(span) => self.error_at(span, message),
            None => self.error(path, message),
        }
    }

    /// Span of the value at `path` (or of the table header for tables).
    pub fn span_of(&self, path: &[&str]) -> Option<Range<usize>> {
        if path.is_empty() {
            return None;
        }
        let (parent, last) = path.split_at(path.len() - 1);
        let table = self.table_at(parent)?;
        let (key, item) = table.get_key_value(last[0])?;
        item.span()
            .or_else(|| match item {
                Item::Value(v) => v.span(),
                _ => None,
            })
            .or_else(|| key.span())
    }

    /// Span of the key at `path`.
    pub fn key_span(&self, path: &[&str]) -> Option<Range<usize>> {
        let (parent, last) = path.split_at(path.len().checked_sub(1)?);
        let table = self.table_at(parent)?;
        let (key, _) = table.get_key_value(last[0])?;
        key.span()
    }

    fn table_at(&self, path: &[&str]) -> Option<&dyn TableLike> {
        let mut table: &dyn TableLike = self.doc.as_table();
        for k in path {
            table = table.get(k)?.as_table_like()?;
        }
        Some(table)
    }
}
