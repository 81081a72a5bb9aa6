//! Checks across sections: stage and data references, the stage DAG has no
//! cycle, referenced files exist. Each error points at the offending value.

use std::collections::{BTreeMap, HashMap};

use super::error::RecipeError;
use super::source::RecipeSource;
use super::stage::{StageKind, StageSpec};

/// The special input name for the unmodified source model.
pub const MODEL: &str = "model";

/// Resolves default inputs (previous stage in file order, "model" first)
/// and checks every reference. Returns the stages with `input` filled in.
pub fn resolve_references(
    source: &RecipeSource,
    mut stages: Vec<StageSpec>,
    data_names: &[String],
) -> Result<Vec<StageSpec>, RecipeError> {
    let kinds: HashMap<String, StageKind> =
        stages.iter().map(|s| (s.name.clone(), s.kind)).collect();
    let mut previous_model_stage = MODEL.to_string();
    for stage in &mut stages {
        let name = stage.name.clone();
        if name == MODEL {
            return Err(source.key_error(
                &["stages", MODEL],
                "`model` is reserved for the source model",
            ));
        }
        let check = |key: &str, target: &str| -> Result<(), RecipeError> {
            let at = ["stages", name.as_str(), key];
            if target == name {
                return Err(source.error(&at, format!("stage `{name}` refers to itself")));
            }
            match kinds.get(target) {
                _ if target == MODEL => Ok(()),
                Some(StageKind::Eval) => Err(source.error(
                    &at,
                    format!("`{target}` is an eval stage; it produces no model to use here"),
                )),
                Some(_) => Ok(()),
                None => {
                    let mut known: Vec<&str> = kinds.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    Err(source.error(
                        &at,
                        format!(
                            "no stage named `{target}` (stages: {}; or `model`)",
                            known.join(", ")
                        ),
                    ))
                }
            }
        };
        if stage.kind == StageKind::Eval && stage.inputs.is_empty() && stage.input.is_none() {
            stage.input = Some(previous_model_stage.clone());
        }
        if stage.kind != StageKind::Eval && stage.input.is_none() {
            stage.input = Some(previous_model_stage.clone());
        }
        if let Some(t) = &stage.input {
            check("input", t)?;
        }
        for t in &stage.inputs {
            check("inputs", t)?;
        }
        if let Some(t) = &stage.teacher {
            check("teacher", t)?;
        }
        if let Some(t) = &stage.reference {
            check("reference", t)?;
        }
        for (key, d) in [("data", &stage.data), ("validation", &stage.validation)] {
            let Some(d) = d else { continue };
            if !data_names.contains(d) {
                return Err(source.error(
                    &["stages", name.as_str(), key],
                    format!(
                        "no data set named `{d}` (declared: {})",
                        list_or_none(data_names)
                    ),
                ));
            }
        }
        if stage.kind != StageKind::Eval {
            previous_model_stage = name.clone();
        }
    }
    check_acyclic(source, &stages)?;
    Ok(stages)
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Names of the stages a stage depends on.
pub fn dependencies(stage: &StageSpec) -> Vec<&str> {
    let mut deps: Vec<&str> = Vec::new();
    deps.extend(stage.input.as_deref());
    deps.extend(stage.inputs.iter().map(String::as_str));
    deps.extend(stage.teacher.as_deref());
    deps.extend(stage.reference.as_deref());
    deps.retain(|d| *d != MODEL);
    deps.sort_unstable();
    deps.dedup();
    deps
}

/// The key through which `stage` refers to `target`.
fn role_of(stage: &StageSpec, target: &str) -> &'static str {
    if stage.input.as_deref() == Some(target) {
        "input"
    } else if stage.inputs.iter().any(|i| i == target) {
        "inputs"
    } else if stage.teacher.as_deref() == Some(target) {
        "teacher"
    } else {
        "reference"
    }
}

fn check_acyclic(source: &RecipeSource, stages: &[StageSpec]) -> Result<(), RecipeError> {
    let by_name: BTreeMap<&str, &StageSpec> = stages.iter().map(|s| (s.name.as_str(), s)).collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &BTreeMap<&'a str, &'a StageSpec>,
        state: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(name) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| *p == name).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(name);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(name, 1);
        path.push(name);
        if let Some(stage) = by_name.get(name) {
            for dep in dependencies(stage) {
                if let Some(c) = visit(dep, by_name, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state.insert(name, 2);
        None
    }
    for stage in stages {
        let mut path = Vec::new();
        if let Some(cycle) = visit(&stage.name, &by_name, &mut state, &mut path) {
            let (first, next) = (cycle[0], cycle.get(1).copied().unwrap_or(cycle[0]));
            let key = by_name
                .get(first)
                .map(|s| role_of(s, next))
                .unwrap_or("input");
            return Err(source.error(
                &["stages", first, key],
                format!("stages form a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}
