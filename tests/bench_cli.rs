//! `amct bench-forward` through the binary: the JSON figure on stdout and, with
//! `--profile`, the per-op and per-node tables on stderr.

use std::path::PathBuf;
use std::process::Command;

const AMCT: &str = env!("CARGO_BIN_EXE_amct");

#[test]
fn bench_forward_profile_names_the_fused_convolutions_and_their_share() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/mnist_cnn.onnx");
    let out = Command::new(AMCT)
        .args(["bench-forward", "--iters", "2", "--batch", "4", "--profile"])
        .arg(&model)
        .output()
        .expect("amct runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert!(
        json["images_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{json}"
    );
    assert!(
        stderr.contains("| op | ms per run | share | nodes |"),
        "{stderr}"
    );
    // The three convolutions run fused with their Relu: one op row for all of them.
    let conv = stderr
        .lines()
        .find(|l| l.starts_with("| Conv+Relu |"))
        .unwrap_or_else(|| panic!("no Conv+Relu row:\n{stderr}"));
    assert!(conv.trim_end().ends_with("| 3 |"), "{conv}");
    // The op shares add up to the whole run.
    let total: f64 = stderr
        .lines()
        .take_while(|l| !l.starts_with("| node |"))
        .filter_map(|l| {
            l.split('|')
                .nth(3)?
                .trim()
                .strip_suffix('%')?
                .parse::<f64>()
                .ok()
        })
        .sum();
    assert!(
        (total - 100.0).abs() < 0.5,
        "shares sum to {total}:\n{stderr}"
    );
    // Without the flag, nothing on stderr but the JSON on stdout.
    let plain = Command::new(AMCT)
        .args(["bench-forward", "--iters", "1", "--batch", "2"])
        .arg(&model)
        .output()
        .expect("amct runs");
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("| op |"));
}
