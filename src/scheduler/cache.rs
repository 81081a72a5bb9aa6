//! Content-addressed cache of stage results.
//!
//! An entry is a directory `entries/<key>/` holding the stage's files
//! (`model.onnx`, `result.json`, ...). It is built in `tmp/` and renamed into
//! place in one step, so a killed run never leaves a half entry; a lock file
//! per key keeps two runs from computing the same entry at once. Once a run
//! is interrupted, [`Cache::close`] stops further commits and removes the
//! run's own staging folders.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cache at '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the run was interrupted; nothing more is committed to the cache")]
    Closed,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cache root and its layout.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    /// True once closed; held while staging folders are made or committed,
    /// so closing never races a commit.
    closed: Arc<Mutex<bool>>,
}

/// Held while an entry is computed; dropping it releases the lock.
pub struct EntryLock {
    _file: File,
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        for sub in ["entries", "tmp", "locks"] {
            fs::create_dir_all(root.join(sub)).map_err(io(root))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            closed: Arc::new(Mutex::new(false)),
        })
    }

    /// `--cache`, else `AMCT_CACHE`, else the user's cache directory.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("AMCT_CACHE") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("amct");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cache/amct"),
            None => std::env::temp_dir().join("amct-cache"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a finished entry, if present.
    pub fn get(&self, key: &str) -> Option<PathBuf> {
        let dir = self.root.join("entries").join(key);
        dir.join(".complete").is_file().then_some(dir)
    }

    /// Where a training stage with entry key `key` keeps its checkpoints
    /// until the entry is committed.
    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.root.join("checkpoints").join(key)
    }

    /// Takes the per-key lock (blocks while another process holds it).
    pub fn lock(&self, key: &str) -> Result<EntryLock, CacheError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = File::create(&path).map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(EntryLock { _file: file })
    }

    /// A fresh temporary directory to build an entry in.
    pub fn staging_dir(&self, key: &str) -> Result<PathBuf, CacheError> {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(CacheError::Closed);
        }
        let dir = self
            .root
            .join("tmp")
            .join(format!("{key}.{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Marks `staging` complete and moves it into place as entry `key`.
    /// With `replace`, a complete entry already there (a forced recompute)
    /// is swapped out for the new one; otherwise the first complete one wins.
    pub fn commit(&self, key: &str, staging: &Path, replace: bool) -> Result<PathBuf, CacheError> {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(CacheError::Closed);
        }
        let marker = staging.join(".complete");
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io(&marker))?;
        let dest = self.root.join("entries").join(key);
        if dest.exists() {
            // Another run finished first (or an incomplete leftover): keep a complete one.
            if dest.join(".complete").is_file() && !replace {
                fs::remove_dir_all(staging).map_err(io(staging))?;
                return Ok(dest);
            }
            // Move the old entry aside first so `dest` is never half there.
            let old = self
                .root
                .join("tmp")
                .join(format!("{key}.replaced.{}", std::process::id()));
            fs::rename(&dest, &old).map_err(io(&dest))?;
            fs::rename(staging, &dest).map_err(io(&dest))?;
            fs::remove_dir_all(&old).map_err(io(&old))?;
            return Ok(dest);
        }
        fs::rename(staging, &dest).map_err(io(&dest))?;
        Ok(dest)
    }

    /// Stops this process's commits for good and removes its staging
    /// folders (best effort: a stage still writing may fail, never commit).
    pub fn close(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        *closed = true;
        let suffix = format!(".{}", std::process::id());
        if let Ok(dir) = fs::read_dir(self.root.join("tmp")) {
            for entry in dir.flatten() {
                if entry.file_name().to_string_lossy().ends_with(&suffix) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Removes a staging folder left by a stage that failed after making it.
    pub fn discard(&self, staging: &Path) {
        let _ = fs::remove_dir_all(staging);
    }

    /// Every finished entry with its size in bytes and age in seconds.
    pub fn entries(&self) -> Result<Vec<(String, u64, u64)>, CacheError> {
        let dir = self.root.join("entries");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            if !path.join(".complete").is_file() {
                continue;
            }
            let size = dir_size(&path)?;
            let age = fs::metadata(path.join(".complete"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            out.push((entry.file_name().to_string_lossy().into_owned(), size, age));
        }
        out.sort();
        Ok(out)
    }

    /// Removes an entry.
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        let dir = self.root.join("entries").join(key);
        fs::remove_dir_all(&dir).map_err(io(&dir))
    }
}

fn dir_size(dir: &Path) -> Result<u64, CacheError> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let meta = entry.metadata().map_err(io(dir))?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
