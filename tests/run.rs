//! `amct run` end to end through the binary: outputs, cache hits, rerunning
//! only what changed, concurrent runs on one cache, a SIGKILL and a SIGINT
//! mid-stage, a failing stage that does not stop an independent one,
//! independent stages running at once within `[recipe] jobs`, and eval
//! latency in onnxruntime (and its error when Python or onnxruntime is missing).

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
    // The recomputed result replaces the cache entry (the output is a link
    // to it): its files are newer than the first run's.
    let modified = |run: &str| {
        std::fs::metadata(dir.join(run).join("fuse").join("result.json"))
            .and_then(|m| m.modified())
            .expect("result.json")
    };
    assert!(modified("d") > modified("a"), "--force kept the old entry");
    entries_complete(&dir.join("cache"));
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

/// Writes DIR/recipe.toml: `[recipe] name` plus `recipe_extra` lines, the
/// bundled MNIST CNN as the model, then `stages`.
fn mnist_recipe(dir: &Path, recipe_extra: &str, stages: &str) -> PathBuf {
    let text = format!(
        "[recipe]\nname = \"t\"\n{recipe_extra}\n[model]\npath = \"{}\"\n\n{stages}",
        repo().join("models/mnist_cnn.onnx").display()
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The [start, end] interval of a stage in report.json.
fn interval(r: &Value, name: &str) -> (f64, f64) {
    let s = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {r}"));
    assert_eq!(s["status"], "ok", "{s}");
    let start = s["started_at"].as_f64().unwrap();
    (start, start + s["seconds"].as_f64().unwrap())
}

#[test]
fn independent_heavy_stages_overlap_only_within_the_jobs_budget() {
    let dir = scratch("jobs");
    // Two independent compute-heavy stages (different keys: top_k differs),
    // each about a second of latency runs in a debug build.
    let stage = |name: &str, k: usize| {
        format!("[stages.{name}]\nkind = \"eval\"\ninputs = [\"model\"]\ntop_k = [{k}]\nlatency_iters = 30\n\n")
    };
    let stages = stage("eval_a", 1) + &stage("eval_b", 5);
    let recipe = mnist_recipe(&dir, "", &stages);
    let runs = [("serial", None), ("parallel", Some("recipe.jobs=2"))];
    for (out, jobs) in runs {
        let mut extra = vec!["--no-cache"];
        if let Some(j) = jobs {
            extra.extend(["--set", j]);
        }
        ok(run_command(&recipe, &dir, out, &extra).output().unwrap());
        let r = report(&dir, out);
        let names: Vec<&str> = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["eval_a", "eval_b"], "report keeps file order");
        let (a, b) = (interval(&r, "eval_a"), interval(&r, "eval_b"));
        let overlap = a.0 < b.1 && b.0 < a.1;
        if jobs.is_some() {
            assert!(
                overlap,
                "jobs = 2: stages ran one after the other: {a:?} {b:?}"
            );
        } else {
            assert!(!overlap, "jobs = 1: stages overlapped: {a:?} {b:?}");
        }
    }
}

#[test]
fn jobs_must_be_at_least_one() {
    let dir = scratch("jobs-zero");
    let recipe = mnist_recipe(&dir, "jobs = 0", "[stages.fuse]\nkind = \"fuse\"\n");
    let o = run_command(&recipe, &dir, "out", &[]).output().unwrap();
    assert!(!o.status.success(), "jobs = 0 was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:3:8", recipe.display())) && err.contains("at least 1"),
        "{err}"
    );
    assert!(
        !dir.join("out").exists(),
        "nothing runs after a recipe error"
    );
}

#[test]
fn sigint_mid_stage_exits_130_and_a_rerun_resumes() {
    let dir = scratch("sigint");
    let slow = ["--set", "stages.eval.latency_iters=400"];
    let child = run_command(&quickstart(), &dir, "stopped", &slow)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until fuse is committed (eval is then running), then Ctrl-C.
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
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let waited = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(
        waited.elapsed() < Duration::from_secs(10),
        "amct took {:?} to stop after SIGINT",
        waited.elapsed()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "stderr: {err}");
    assert!(
        err.contains(
            "interrupted: stage eval was running; finished stages are cached, rerun to resume"
        ),
        "{err}"
    );
    entries_complete(&dir.join("cache"));
    assert_eq!(
        std::fs::read_dir(&entries).unwrap().count(),
        1,
        "only fuse was committed"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("cache/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // Resume: fuse is a hit, eval recomputed; results equal a clean run's.
    ok(run(&dir, "resumed", FAST));
    let resumed = report(&dir, "resumed");
    assert_eq!(executed(&resumed), ["eval"]);
    let clean = scratch("sigint-clean");
    ok(run(&clean, "out", FAST));
    let fresh = report(&clean, "out");
    let bytes = |d: &Path, o: &str| std::fs::read(d.join(o).join("fuse/model.onnx")).unwrap();
    assert_eq!(bytes(&dir, "resumed"), bytes(&clean, "out"));
    assert_eq!(
        resumed["stages"][1]["metrics"],
        fresh["stages"][1]["metrics"]
    );
}

/// The project's pinned Python (scripts/setup_venv.sh), which has onnxruntime.
fn venv_python() -> PathBuf {
    let python = std::env::var("AMCT_VENV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python at {}: run scripts/test.sh (it makes the .venv)",
        python.display()
    );
    python
}

const ORT_EVAL: &str = "[stages.fuse]\nkind = \"fuse\"\n\n[stages.eval]\nkind = \"eval\"\ninputs = [\"model\", \"fuse\"]\nlatency = false\nlatency_iters = 3\nlatency_batch = 4\nonnxruntime = true\n";

#[test]
fn eval_times_models_in_onnxruntime() {
    let dir = scratch("ort");
    let recipe = mnist_recipe(&dir, "", ORT_EVAL);
    let o = run_command(&recipe, &dir, "out", &[])
        .env("AMCT_PYTHON", venv_python())
        .output()
        .unwrap();
    ok(o);
    let r = report(&dir, "out");
    let m = &r["stages"][1]["metrics"];
    for model in ["model", "fuse"] {
        for key in ["ort_latency_ms_batch1", "ort_latency_ms_batch4"] {
            let ms = m[model][key].as_f64().unwrap_or(-1.0);
            assert!(ms > 0.0 && ms < 10_000.0, "{model} {key}: {}", m[model]);
        }
        assert!(
            m[model].get("latency_ms_batch1").is_none(),
            "latency = false still timed amct's executor: {}",
            m[model]
        );
    }
}

#[test]
fn eval_in_onnxruntime_without_python_or_onnxruntime_fails_clearly() {
    let dir = scratch("ort-missing");
    let recipe = mnist_recipe(&dir, "", ORT_EVAL);
    // A Python that cannot import numpy/onnxruntime: the venv's without site-packages.
    let bare = dir.join("bare-python");
    std::fs::write(
        &bare,
        format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", venv_python().display()),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&bare).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&bare, perms).unwrap();
    let cases = [
        (dir.join("no-such-python"), "could not be run"),
        (bare, "cannot import"),
    ];
    for (i, (python, needle)) in cases.iter().enumerate() {
        let out = format!("out{i}");
        let o = run_command(&recipe, &dir, &out, &["--no-cache"])
            .env("AMCT_PYTHON", python)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{} did not fail the run",
            python.display()
        );
        let r = report(&dir, &out);
        assert_eq!(r["stages"][0]["status"], "ok", "fuse does not need Python");
        let eval = &r["stages"][1];
        assert_eq!(eval["status"], "failed", "{eval}");
        let error = eval["error"].as_str().unwrap();
        for want in [
            *needle,
            "onnxruntime",
            "AMCT_PYTHON",
            &python.display().to_string(),
        ] {
            assert!(error.contains(want), "error lacks `{want}`: {error}");
        }
    }
}
