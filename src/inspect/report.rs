//! Human-readable rendering of an [`InspectReport`].

use std::fmt::Write;

use super::{InspectReport, IoEntry, ShapeDim};

/// How many layers the text summary lists.
const TOP_LAYERS: usize = 15;

fn shape_text(shape: &Option<Vec<ShapeDim>>) -> String {
    match shape {
        None => "(unknown rank)".into(),
        Some(dims) => {
            let parts: Vec<String> = dims
                .iter()
                .map(|d| match d {
                    ShapeDim::Known(v) => v.to_string(),
                    ShapeDim::Named(s) => s.clone(),
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn io_lines(out: &mut String, title: &str, entries: &[IoEntry]) {
    let _ = writeln!(out, "{title}:");
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for e in entries {
        let _ = writeln!(
            out,
            "  {:<width$}  {:<8} {}",
            e.name,
            e.dtype,
            shape_text(&e.shape)
        );
    }
}

impl InspectReport {
    /// A compact summary: I/O, opsets, op histogram, totals, the layers with
    /// the most MACs and the unsupported ops.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "model: {}",
            if self.path.is_empty() {
                "(in memory)"
            } else {
                &self.path
            }
        );
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    if o.domain.is_empty() {
                        "ai.onnx"
                    } else {
                        &o.domain
                    },
                    o.version
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "ir_version: {}   opsets: {}",
            self.ir_version,
            opsets.join(", ")
        );
        io_lines(&mut out, "inputs", &self.inputs);
        io_lines(&mut out, "outputs", &self.outputs);
        let mut ops: Vec<(&String, &u64)> = self.op_histogram.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let nodes: u64 = ops.iter().map(|(_, &n)| n).sum();
        let hist: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        let _ = writeln!(out, "ops ({nodes} nodes): {}", hist.join(", "));
        let _ = writeln!(
            out,
            "parameters: {:.3} M ({})   MACs: {:.3} G ({}, batch {})   size: {:.2} MB ({} bytes)",
            self.parameters as f64 / 1e6,
            grouped(self.parameters),
            self.macs as f64 / 1e9,
            grouped(self.macs),
            self.batch,
            self.size_bytes as f64 / 1e6,
            grouped(self.size_bytes)
        );
        let mut top: Vec<_> = self.layers.iter().filter(|l| l.macs > 0).collect();
        top.sort_by_key(|l| std::cmp::Reverse(l.macs));
        if !top.is_empty() {
            let shown = top.len().min(TOP_LAYERS);
            let _ = writeln!(out, "top {shown} of {} layers by MACs:", top.len());
            let _ = writeln!(
                out,
                "  {:>15}  {:>6}  {:>11}  {:<14} {:<24} output",
                "MACs", "share", "params", "op", "name"
            );
            for l in top.iter().take(TOP_LAYERS) {
                let share = if self.macs > 0 {
                    100.0 * l.macs as f64 / self.macs as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "  {:>15}  {:>5.1}%  {:>11}  {:<14} {:<24} {}",
                    grouped(l.macs),
                    share,
                    grouped(l.params),
                    l.op_type,
                    l.name,
                    shape_text(&l.output_shape)
                );
            }
        }
        if self.unsupported.is_empty() {
            let _ = writeln!(out, "executor: all ops supported");
        } else {
            let _ = writeln!(
                out,
                "unsupported by the executor ({}):",
                self.unsupported.len()
            );
            for u in &self.unsupported {
                let _ = writeln!(out, "  {} ({}): {}", u.node, u.op_type, u.reason);
            }
        }
        out
    }
}
