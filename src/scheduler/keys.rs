//! Cache keys: SHA-256 over a stage's kind, resolved parameters, the keys
//! of its inputs, the hashes of its data and the tool version.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::recipe::StageSpec;

/// Bumped by the crate version: a new amct never reuses an old entry.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// SHA-256 of a file's bytes, streamed.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The key of a stage given the keys of what it reads, by role
/// ("input", "inputs.0", "teacher", "reference").
pub fn stage_key(
    spec: &StageSpec,
    input_keys: &BTreeMap<String, String>,
    data_hash: Option<&str>,
    device: Option<&str>,
) -> String {
    let identity = json!({
        "tool": TOOL_VERSION,
        "kind": spec.kind,
        "params": spec.params,
        "inputs": input_keys,
        "data": data_hash,
        "device": device,
    });
    hex::encode(Sha256::digest(identity.to_string().as_bytes()))
}
