//! Model size on disk: the model file plus every distinct external data
//! file its initializers reference (resolved next to the model).
//!
//! The file is decoded with minimal protobuf messages that skip weight
//! payloads, so this is cheap even for large models.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;

use super::InspectError;

#[derive(Clone, PartialEq, Message)]
struct LiteModel {
    #[prost(message, optional, tag = "7")]
    graph: Option<LiteGraph>,
}

#[derive(Clone, PartialEq, Message)]
struct LiteGraph {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<LiteTensor>,
}

#[derive(Clone, PartialEq, Message)]
struct LiteTensor {
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<LiteEntry>,
    #[prost(int32, optional, tag = "14")]
    data_location: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct LiteEntry {
    #[prost(bytes = "vec", optional, tag = "1")]
    key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
}

/// Size in bytes of `path` plus the external data files it references.
pub(super) fn size_on_disk(path: &Path) -> Result<u64, InspectError> {
    let mut size = std::fs::metadata(path)
        .map_err(|source| InspectError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    for file in external_data_files(path)? {
        let meta = std::fs::metadata(&file).map_err(|source| InspectError::Read {
            path: file.clone(),
            source,
        })?;
        size = size.saturating_add(meta.len());
    }
    Ok(size)
}

/// The distinct external data files a model file references, resolved next to it.
pub fn external_data_files(path: &Path) -> Result<Vec<PathBuf>, InspectError> {
    let bytes = std::fs::read(path).map_err(|source| InspectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let lite = LiteModel::decode(bytes.as_slice()).map_err(|source| InspectError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let graph = lite.graph.unwrap_or_default();
    let mut locations = BTreeSet::new();
    for t in graph
        .initializer
        .iter()
        .filter(|t| t.data_location == Some(1))
    {
        for e in t
            .external_data
            .iter()
            .filter(|e| e.key.as_deref() == Some(b"location".as_slice()))
        {
            locations.insert(
                String::from_utf8_lossy(e.value.as_deref().unwrap_or_default()).into_owned(),
            );
        }
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok(locations.into_iter().map(|loc| dir.join(loc)).collect())
}
