//! Recipe errors. Every error about the recipe's content carries the file,
//! line and column, and renders the offending line with a caret.

use std::fmt;
use std::path::PathBuf;

/// Where a problem is: a place in the recipe file, or a `--set` override.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        source_line: String,
        width: usize,
    },
    Override(String),
    /// The file as a whole (it could not be read).
    Path(PathBuf),
}

/// A problem in a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeError {
    pub origin: Origin,
    pub message: String,
}

impl RecipeError {
    /// `file:line:col` (or the override / path) for messages and tests.
    pub fn location(&self) -> String {
        match &self.origin {
            Origin::File {
                path, line, column, ..
            } => format!("{}:{line}:{column}", path.display()),
            Origin::Override(s) => format!("--set {s}"),
            Origin::Path(p) => p.display().to_string(),
        }
    }
}

impl fmt::Display for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)?;
        if let Origin::File {
            line,
            column,
            source_line,
            width,
            ..
        } = &self.origin
        {
            let gutter = line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{line} | {source_line}\n{:gutter$} | ",
                "", ""
            )?;
            write!(
                f,
                "{}{}",
                " ".repeat(column.saturating_sub(1)),
                "^".repeat((*width).max(1))
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeError {}
