//! Progress bars shared by every long loop: one style (rate and ETA), drawn
//! on stderr through one [`MultiProgress`] so that concurrent stages' bars
//! and spinners stack instead of overwriting each other; hidden when stderr
//! is not a terminal. Log lines go through [`suspend`] so they print above
//! the bars.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The process-wide set of bars on stderr.
fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A bar over `len` steps of `unit` (e.g. "batches"), labelled `message`.
pub fn bar(len: u64, unit: &str, message: impl Into<String>) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(len).with_message(message.into()));
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A spinner with the elapsed time, for work of unknown length (a stage).
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let spinner = multi().add(ProgressBar::new_spinner().with_message(message.into()));
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if !multi().is_hidden() {
        spinner.enable_steady_tick(Duration::from_millis(120));
    }
    spinner
}

/// Runs `f` (e.g. writing a log line) with the bars cleared, then redraws them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}
