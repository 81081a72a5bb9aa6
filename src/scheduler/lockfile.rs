//! `recipe.lock`: the resolved recipe, content hashes of the model and the
//! data, the tool version and every stage's cache key, so a run can be
//! reproduced and compared.

use std::path::Path;

use super::outputs::write_atomic;
use super::run::RunReport;
use crate::recipe::Recipe;

pub fn write_lockfile(out: &Path, recipe: &Recipe, report: &RunReport) -> Result<(), String> {
    let mut lock = toml::Table::new();
    let mut tool = toml::Table::new();
    tool.insert("name".into(), "amct".into());
    tool.insert("version".into(), report.tool_version.clone().into());
    lock.insert("tool".into(), tool.into());
    let mut model = toml::Table::new();
    model.insert(
        "path".into(),
        recipe.model_path.display().to_string().into(),
    );
    model.insert("sha256".into(), report.model_key.clone().into());
    lock.insert("model".into(), model.into());
    let mut data = toml::Table::new();
    for (name, cfg) in &recipe.data {
        let hash = crate::data::content_hash(cfg).map_err(|e| e.to_string())?;
        data.insert(name.clone(), hash.into());
    }
    lock.insert("data".into(), data.into());
    let mut stages = toml::Table::new();
    for st in &report.stages {
        let mut t = toml::Table::new();
        t.insert("kind".into(), st.kind.name().into());
        t.insert(
            "status".into(),
            format!("{:?}", st.status).to_lowercase().into(),
        );
        if let Some(k) = &st.key {
            t.insert("key".into(), k.clone().into());
        }
        stages.insert(st.name.clone(), t.into());
    }
    lock.insert("stages".into(), stages.into());
    lock.insert("recipe".into(), recipe.resolved.clone().into());
    let text = toml::to_string_pretty(&lock).map_err(|e| e.to_string())?;
    write_atomic(
        &out.join("recipe.lock"),
        format!("# Written by amct run; do not edit.\n{text}").as_bytes(),
    )
}
