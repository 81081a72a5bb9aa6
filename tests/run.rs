//! `amct run` end to end through the binary: outputs, cache hits, rerunning
//! only what changed, concurrent runs on one cache, a SIGKILL mid-stage,
//! and a failing stage that does not stop an independent one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

const AMCT: &str = env!("CARGO_BIN_EXE_amct");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amct-run-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `amct run RECIPE --out DIR/OUT --cache DIR/cache EXTRA...`, not started.
fn run_command(recipe: &Path, dir: &Path, out: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(AMCT);
    cmd.arg("run")
        .arg(recipe)
        .arg("--out")
        .arg(dir.join(out))
        .arg("--cache")
        .arg(dir.join("cache"))
        .args(extra);
    cmd
}

fn quickstart() -> PathBuf {
    repo().join("recipes/quickstart.toml")
}

fn run(dir: &Path, out: &str, extra: &[&str]) -> Output {
    run_command(&quickstart(), dir, out, extra)
        .output()
        .expect("amct runs")
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "amct run failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn report(dir: &Path, out: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(out).join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("valid json")
}

fn executed(r: &Value) -> Vec<String> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cache_hit"] == false)
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

const FAST: &[&str] = &["--set", "stages.eval.latency=false"];

#[test]
fn quickstart_writes_every_output() {
    let dir = scratch("outputs");
    ok(run(&dir, "out", FAST));
    let out = dir.join("out");
    for f in [
        "report.json",
        "report.md",
        "recipe.lock",
        "fuse/model.onnx",
        "fuse/result.json",
        "eval/result.json",
    ] {
        assert!(out.join(f).is_file(), "missing output {f}");
    }
    let r = report(&dir, "out");
    let eval = &r["stages"][1]["metrics"];
    for model in ["model", "fuse"] {
        let top1 = eval[model]["top1"].as_f64().expect("top1");
        assert!(top1 > 0.95, "{model} top1 {top1}");
        assert_eq!(eval[model]["top1_agreement"], 1.0);
        assert_eq!(eval[model]["samples"], 500);
    }
    let lock = std::fs::read_to_string(out.join("recipe.lock")).unwrap();
    assert!(
        lock.contains("[stages.fuse]") && lock.contains("sha256"),
        "{lock}"
    );
}

#[test]
fn rerun_hits_cache_and_a_changed_last_stage_reruns_alone() {
    let dir = scratch("cache");
    let first = report(
        &{
            ok(run(&dir, "a", FAST));
            dir.clone()
        },
        "a",
    );
    assert_eq!(executed(&first), ["fuse", "eval"]);
    ok(run(&dir, "b", FAST));
    assert!(
        executed(&report(&dir, "b")).is_empty(),
        "unchanged rerun computed something"
    );
    ok(run(
        &dir,
        "c",
        &[
            "--set",
            "stages.eval.latency=false",
            "--set",
            "stages.eval.top_k=[1, 3]",
        ],
    ));
    let third = report(&dir, "c");
    assert_eq!(executed(&third), ["eval"], "only the changed stage reruns");
    assert!(third["stages"][1]["metrics"]["fuse"]["top3"].is_number());
    ok(run(
        &dir,
        "d",
        &["--set", "stages.eval.latency=false", "--force", "fuse"],
    ));
    assert_eq!(
        executed(&report(&dir, "d")),
        ["fuse"],
        "--force recomputes the stage; eval's key is unchanged"
    );
}

fn entries_complete(cache: &Path) {
    for e in std::fs::read_dir(cache.join("entries")).expect("entries") {
        let e = e.unwrap().path();
        assert!(
            e.join(".complete").is_file(),
            "incomplete cache entry {}",
            e.display()
        );
    }
}

#[test]
fn two_runs_on_one_cache_at_once() {
    let dir = scratch("concurrent");
    let spawn = |out: &str| {
        run_command(&quickstart(), &dir, out, FAST)
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn("a"), spawn("b"));
    ok(a.wait_with_output().unwrap());
    ok(b.wait_with_output().unwrap());
    let model = |o: &str| std::fs::read(dir.join(o).join("fuse/model.onnx")).unwrap();
    assert_eq!(model("a"), model("b"));
    assert_eq!(
        report(&dir, "a")["stages"][1]["metrics"]["fuse"]["top1"],
        report(&dir, "b")["stages"][1]["metrics"]["fuse"]["top1"]
    );
    entries_complete(&dir.join("cache"));
}

#[test]
fn sigkill_mid_stage_then_rerun_matches_an_uninterrupted_run() {
    let dir = scratch("kill");
    let slow = ["--set", "stages.eval.latency_iters=400"];
    let mut child = run_command(&quickstart(), &dir, "killed", &slow)
        .spawn()
        .expect("spawn");
    // Wait until fuse is committed (eval is then running), then kill -9.
    let entries = dir.join("cache/entries");
    let start = Instant::now();
    while std::fs::read_dir(&entries).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "fuse never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it was killed; make eval slower"
    );
    entries_complete(&dir.join("cache"));
    assert_eq!(
        std::fs::read_dir(&entries).unwrap().count(),
        1,
        "only fuse was committed"
    );
    // Resume: fuse is a hit, eval recomputed; results equal a clean run's.
    ok(run(&dir, "resumed", FAST));
    let resumed = report(&dir, "resumed");
    assert_eq!(executed(&resumed), ["eval"]);
    let clean = scratch("kill-clean");
    ok(run(&clean, "out", FAST));
    let fresh = report(&clean, "out");
    let bytes = |d: &Path, o: &str| std::fs::read(d.join(o).join("fuse/model.onnx")).unwrap();
    assert_eq!(bytes(&dir, "resumed"), bytes(&clean, "out"));
    assert_eq!(
        resumed["stages"][1]["metrics"],
        fresh["stages"][1]["metrics"]
    );
}

#[test]
fn a_failing_stage_does_not_stop_an_independent_one() {
    let dir = scratch("fail");
    // 10-dim vectors cannot feed an image model: that eval fails, the other finishes.
    let bad = dir.join("bad.npz");
    write_npz_f32(&bad, "x", &[4, 10], &[0.5; 40]);
    let text = std::fs::read_to_string(repo().join("recipes/quickstart.toml"))
        .unwrap()
        .replace("../models/", &format!("{}/models/", repo().display()))
        .replace("../data/", &format!("{}/data/", repo().display()))
        + &format!("\n[data.bad]\nformat = \"npz\"\npath = \"{}\"\n\n[stages.eval_bad]\nkind = \"eval\"\ninputs = [\"fuse\"]\ndata = \"bad\"\nlatency = false\n", bad.display());
    let recipe = dir.join("recipe.toml");
    std::fs::write(&recipe, text).unwrap();
    let o = run_command(&recipe, &dir, "out", FAST).output().unwrap();
    assert!(!o.status.success(), "a failed stage must fail the run");
    let r = report(&dir, "out");
    let by_name = |n: &str| {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("eval")["status"], "ok");
    assert_eq!(by_name("eval_bad")["status"], "failed");
    assert!(
        by_name("eval_bad")["error"]
            .as_str()
            .unwrap()
            .contains("shape"),
        "{}",
        by_name("eval_bad")
    );
}

/// Writes a one-array .npz (stored zip entry) of f32 data.
fn write_npz_f32(path: &Path, name: &str, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    for v in data {
        npy.extend(v.to_le_bytes());
    }
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("{name}.npy"), opts).unwrap();
    std::io::Write::write_all(&mut zip, &npy).unwrap();
    zip.finish().unwrap();
}

#[test]
fn resnet50_recipe_on_the_generated_model() {
    let dir = scratch("resnet50");
    let fixture = std::env::var("AMCT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("tests/fixtures/gen"))
        .join("resnet50/model.onnx");
    assert!(
        fixture.is_file(),
        "fixture missing: run scripts/test.sh (it generates {})",
        fixture.display()
    );
    let pin = format!("model.path=\"{}\"", fixture.display());
    let extra = ["--set", pin.as_str(), "--set", "stages.eval.latency=false"];
    let o = run_command(&repo().join("recipes/resnet50.toml"), &dir, "out", &extra)
        .output()
        .unwrap();
    ok(o);
    let fused =
        amct::onnx::load_model(&dir.join("out/fuse/model.onnx")).expect("fused model loads");
    let bn = fused
        .graph
        .nodes
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .count();
    assert_eq!(bn, 0, "BatchNormalization left after fuse");
    let r = report(&dir, "out");
    let m = &r["stages"][1]["metrics"];
    assert_eq!(
        m["fuse"]["macs"], m["model"]["macs"],
        "fusing BN changes no MACs"
    );
    assert!(
        m["fuse"]["parameters"].as_u64() < m["model"]["parameters"].as_u64(),
        "BN parameters folded away"
    );
}
