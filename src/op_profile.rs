//! Where a forward pass spends its time: per-op-type and per-node tables built from the
//! node times that `Executor::run_timed` records (`amct bench-forward --profile`).

use std::collections::HashMap;
use std::fmt::Write;

use crate::exec::NodeTime;

/// A Markdown report of `times` (recorded over `runs` runs): the op types by total time,
/// then every node that took at least `min_share` of the time, slowest first.
pub fn report(times: &[NodeTime], runs: usize, min_share: f64) -> String {
    let runs = runs.max(1) as f64;
    let total: f64 = times.iter().map(|t| t.seconds).sum();
    let mut by_op: HashMap<&str, (f64, usize)> = HashMap::new();
    let mut by_node: HashMap<(&str, &str), f64> = HashMap::new();
    for t in times {
        let e = by_op.entry(&t.op).or_default();
        e.0 += t.seconds;
        e.1 += 1;
        *by_node.entry((&t.node, &t.op)).or_default() += t.seconds;
    }
    let share = |s: f64| 100.0 * s / total.max(f64::MIN_POSITIVE);
    let mut out = format!(
        "{:.2} ms per run over {} nodes\n\n| op | ms per run | share | nodes |\n|---|---:|---:|---:|\n",
        1e3 * total / runs,
        by_node.len()
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.0.cmp(b.0)));
    for (op, (secs, count)) in ops {
        let per_run = count as f64 / runs;
        let _ = writeln!(
            out,
            "| {op} | {:.2} | {:.1}% | {per_run:.0} |",
            1e3 * secs / runs,
            share(secs)
        );
    }
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.push_str("\n| node | op | ms per run | share |\n|---|---|---:|---:|\n");
    for ((node, op), secs) in nodes
        .into_iter()
        .filter(|n| share(n.1) >= 100.0 * min_share)
    {
        let _ = writeln!(
            out,
            "| {node} | {op} | {:.2} | {:.1}% |",
            1e3 * secs / runs,
            share(secs)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(node: &str, op: &str, seconds: f64) -> NodeTime {
        NodeTime {
            node: node.into(),
            op: op.into(),
            seconds,
        }
    }

    #[test]
    fn report_sums_by_op_and_by_node_per_run() {
        let times = [
            time("a", "Conv+Relu", 0.004),
            time("b", "Add", 0.001),
            time("a", "Conv+Relu", 0.002),
            time("b", "Add", 0.003),
        ];
        let r = report(&times, 2, 0.5);
        assert!(r.starts_with("5.00 ms per run over 2 nodes"), "{r}");
        assert!(r.contains("| Conv+Relu | 3.00 | 60.0% | 1 |"), "{r}");
        assert!(r.contains("| Add | 2.00 | 40.0% | 1 |"), "{r}");
        assert!(r.contains("| a | Conv+Relu | 3.00 | 60.0% |"), "{r}");
        assert!(
            !r.contains("| b | Add |"),
            "only nodes with half the time are listed: {r}"
        );
    }
}
