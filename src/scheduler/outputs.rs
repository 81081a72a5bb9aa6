//! Writes a run's outputs: `<out>/<stage>/` (every file of the stage's
//! cache entry, linked or copied), `report.json` and `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::run::{RunReport, StageStatus};

pub fn write_outputs(
    out: &Path,
    report: &RunReport,
    dirs: &BTreeMap<String, PathBuf>,
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating '{}': {e}", out.display()))?;
    for stage in &report.stages {
        let Some(src) = dirs
            .get(&stage.name)
            .filter(|_| stage.status == StageStatus::Ok)
        else {
            continue;
        };
        let dest = out.join(&stage.name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .map_err(|e| format!("clearing '{}': {e}", dest.display()))?;
        }
        std::fs::create_dir_all(&dest)
            .map_err(|e| format!("creating '{}': {e}", dest.display()))?;
        let entries = std::fs::read_dir(src)
            .map_err(|e| format!("reading cache entry '{}': {e}", src.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading '{}': {e}", src.display()))?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.path().is_file() && !hidden {
                link_or_copy(&entry.path(), &dest.join(entry.file_name()))?;
            }
        }
    }
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    write_atomic(&out.join("report.md"), markdown(report).as_bytes())
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), String> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying '{}' to '{}': {e}", from.display(), to.display()))
}

/// Writes through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing '{}': {e}", path.display()))
}

fn markdown(report: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", report.recipe);
    let _ = writeln!(
        s,
        "amct {} on {}, {:.2} s in all.\n",
        report.tool_version, report.device, report.seconds
    );
    let _ = writeln!(
        s,
        "| stage | kind | status | cache | seconds | size (MB) | params | GMACs |"
    );
    let _ = writeln!(s, "|---|---|---|---|---:|---:|---:|---:|");
    for st in &report.stages {
        let m = st.model.as_ref();
        let num = |k: &str| m.and_then(|m| m.get(k)).and_then(|v| v.as_f64());
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {} | {:.2} | {} | {} | {} |",
            st.name,
            st.kind.name(),
            st.status,
            if st.cache_hit { "hit" } else { "miss" },
            st.seconds,
            num("size_bytes")
                .map(|v| format!("{:.2}", v / 1e6))
                .unwrap_or_default(),
            num("parameters")
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
            num("macs")
                .map(|v| format!("{:.3}", v / 1e9))
                .unwrap_or_default(),
        );
    }
    let _ = writeln!(s, "\n## Timeline\n\n```");
    let total = report.seconds.max(1e-9);
    for st in &report.stages {
        let start = ((st.started_at / total) * 40.0).round() as usize;
        let width = (((st.seconds / total) * 40.0).round() as usize).max(1);
        let _ = writeln!(
            s,
            "{:<16} {}{} {:.2} s",
            st.name,
            " ".repeat(start.min(40)),
            "#".repeat(width.min(40)),
            st.seconds
        );
    }
    let _ = writeln!(s, "```");
    for st in &report.stages {
        if let Some(err) = &st.error {
            let _ = writeln!(s, "\n**{}** {:?}: {err}", st.name, st.status);
        }
        training_section(&mut s, &st.name, &st.metrics);
        if !st.metrics.is_null() {
            let pretty = serde_json::to_string_pretty(&st.metrics).unwrap_or_default();
            let _ = writeln!(s, "\n## {} metrics\n\n```json\n{pretty}\n```", st.name);
        }
    }
    s
}

/// Per-epoch table and loss plot of a training stage (metrics with `epochs`).
fn training_section(s: &mut String, stage: &str, metrics: &serde_json::Value) {
    let Some(epochs) = metrics.get("epochs").and_then(|e| e.as_array()) else {
        return;
    };
    let _ = writeln!(s, "\n## {stage} training\n");
    if metrics["loss_curve"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        let _ = writeln!(s, "![{stage} loss]({stage}/loss_curve.svg)\n");
    }
    let _ = writeln!(
        s,
        "| epoch | steps | lr | train loss | train acc | val loss | val acc | seconds |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let num = |e: &serde_json::Value, k: &str, f: &dyn Fn(f64) -> String| {
        e.get(k).and_then(|v| v.as_f64()).map(f).unwrap_or_default()
    };
    for e in epochs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            num(e, "epoch", &|v| format!("{v:.0}")),
            num(e, "step", &|v| format!("{v:.0}")),
            num(e, "lr", &|v| format!("{v:.2e}")),
            num(e, "train_loss", &|v| format!("{v:.4}")),
            num(e, "train_accuracy", &|v| format!("{:.2}%", 100.0 * v)),
            num(e, "val_loss", &|v| format!("{v:.4}")),
            num(e, "val_accuracy", &|v| format!("{:.2}%", 100.0 * v)),
            num(e, "seconds", &|v| format!("{v:.1}")),
        );
    }
}
