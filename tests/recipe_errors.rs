//! One test per recipe error class: each error names file:line:col and
//! shows the offending line; a typo in a key never passes silently.

use std::path::PathBuf;

use amct::recipe::{load_recipe, RecipeError, StageKind};

/// Writes `text` as recipe.toml in a fresh directory with a model file and
/// a data folder next to it; returns the recipe path.
fn write_recipe(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amct-recipe-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(dir.join("calib")).expect("temp dir");
    std::fs::write(dir.join("m.onnx"), b"placeholder").expect("model file");
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).expect("recipe file");
    path
}

const GOOD: &str = r#"[recipe]
name = "demo"
seed = 3

[model]
path = "m.onnx"

[data.calib]
format = "images"
path = "calib"

[stages.fuse]
kind = "fuse"

[stages.eval]
kind = "eval"
inputs = ["fuse"]
reference = "model"
data = "calib"
"#;

fn load_err(tag: &str, text: &str, overrides: &[&str]) -> (RecipeError, PathBuf) {
    let path = write_recipe(tag, text);
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match load_recipe(&path, &overrides) {
        Ok(_) => panic!("{tag}: recipe unexpectedly valid"),
        Err(e) => (e, path),
    }
}

/// Asserts the error is at `line:col` of the recipe and mentions `needle`.
fn assert_at(tag: &str, text: &str, line: usize, col: usize, needle: &str) {
    let (e, path) = load_err(tag, text, &[]);
    let shown = e.to_string();
    assert_eq!(
        e.location(),
        format!("{}:{line}:{col}", path.display()),
        "{tag}: {shown}"
    );
    assert!(
        shown.contains(needle),
        "{tag}: message lacks `{needle}`: {shown}"
    );
    let source_line = text.lines().nth(line - 1).expect("line exists");
    assert!(
        shown.contains(source_line),
        "{tag}: the offending line is not shown: {shown}"
    );
}

#[test]
fn good_recipe_loads_with_defaults() {
    let path = write_recipe("good", GOOD);
    let r = load_recipe(&path, &[]).expect("valid");
    assert_eq!(r.meta.name, "demo");
    assert_eq!(r.stages.len(), 2);
    assert_eq!(r.stages[0].kind, StageKind::Fuse);
    assert_eq!(
        r.stages[0].input.as_deref(),
        Some("model"),
        "first stage defaults to the model"
    );
    assert!(r.model_path.ends_with("m.onnx"));
}

#[test]
fn toml_syntax_error() {
    assert_at(
        "syntax",
        &GOOD.replace("seed = 3", "seed = = 3"),
        3,
        8,
        "invalid TOML",
    );
}

#[test]
fn unknown_section() {
    let text = format!("{GOOD}\n[stagez.x]\nkind = \"fuse\"\n");
    assert_at("section", &text, 21, 2, "unknown section `stagez`");
}

#[test]
fn typo_in_recipe_key() {
    assert_at(
        "typo-recipe",
        &GOOD.replace("seed = 3", "seeed = 3"),
        3,
        1,
        "unknown key `seeed`",
    );
}

#[test]
fn typo_in_stage_key() {
    let text = GOOD.replace(
        "kind = \"fuse\"\n",
        "kind = \"fuse\"\nfold_batchnorm = false\n",
    );
    assert_at("typo-stage", &text, 14, 1, "unknown key `fold_batchnorm`");
}

#[test]
fn reference_key_not_allowed_for_kind() {
    let text = GOOD.replace(
        "kind = \"fuse\"\n",
        "kind = \"fuse\"\nteacher = \"model\"\n",
    );
    assert_at("teacher-on-fuse", &text, 14, 1, "has no `teacher` key");
}

#[test]
fn unknown_stage_kind() {
    assert_at(
        "kind",
        &GOOD.replace("kind = \"fuse\"", "kind = \"fusion\""),
        13,
        8,
        "unknown stage kind `fusion`",
    );
}

#[test]
fn stage_kind_not_available_yet() {
    assert_at(
        "kind-later",
        &GOOD.replace("kind = \"fuse\"", "kind = \"sparse\""),
        13,
        8,
        "not available",
    );
}

#[test]
fn unknown_stage_reference() {
    assert_at(
        "ref",
        &GOOD.replace("inputs = [\"fuse\"]", "inputs = [\"fused\"]"),
        17,
        10,
        "no stage named `fused`",
    );
}

#[test]
fn unknown_data_reference() {
    assert_at(
        "data-ref",
        &GOOD.replace("data = \"calib\"", "data = \"calibration\""),
        19,
        8,
        "no data set named",
    );
}

#[test]
fn cycle_between_stages() {
    let text = GOOD
        .replace("[stages.fuse]\nkind = \"fuse\"\n", "[stages.fuse]\nkind = \"fuse\"\ninput = \"fuse2\"\n\n[stages.fuse2]\nkind = \"fuse\"\ninput = \"fuse\"\n");
    assert_at("cycle", &text, 14, 9, "cycle");
}

#[test]
fn missing_model_file() {
    assert_at(
        "model-missing",
        &GOOD.replace("m.onnx", "absent.onnx"),
        6,
        8,
        "model file not found",
    );
}

#[test]
fn missing_data_path() {
    assert_at(
        "data-missing",
        &GOOD.replace("path = \"calib\"", "path = \"nowhere\""),
        10,
        8,
        "data not found",
    );
}

#[test]
fn value_out_of_range() {
    let text = GOOD.replace(
        "data = \"calib\"\n",
        "data = \"calib\"\nlatency_batch = 0\n",
    );
    assert_at("range", &text, 20, 17, "at least 1");
}

#[test]
fn wrong_value_type() {
    assert_at(
        "type",
        &GOOD.replace("seed = 3", "seed = \"three\""),
        3,
        8,
        "invalid type",
    );
}

#[test]
fn missing_required_key() {
    assert_at(
        "missing-name",
        &GOOD.replace("name = \"demo\"\n", ""),
        1,
        1,
        "missing key `name`",
    );
}

#[test]
fn bad_override_is_named() {
    let (e, _) = load_err("override", GOOD, &["stages.fuse.fold_batchnorm=false"]);
    assert_eq!(
        e.location(),
        "--set stages.fuse.fold_batchnorm=false",
        "{e}"
    );
    assert!(e.to_string().contains("unknown key"), "{e}");
}

#[test]
fn override_changes_a_value() {
    let path = write_recipe("override-ok", GOOD);
    let r = load_recipe(&path, &["recipe.seed=11".into()]).expect("valid override");
    assert_eq!(r.meta.seed, 11);
}

#[test]
fn invalid_sweep_value() {
    let text = format!("{GOOD}\n[sweep]\n\"stages.fuse.kind\" = [\"fuse\", \"fusion\"]\n");
    assert_at("sweep", &text, 22, 22, "sweep value");
}
