//! `content_hash`: a SHA-256 over a data set's contents and every setting that
//! changes what a consumer sees (format, arrays, preprocessing, batching,
//! limit, shuffle, augmentation), but not where the files live. Files are
//! streamed in 64 KiB blocks; for an image folder with `limit`, only the
//! first `limit` images count.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::config::{DataConfig, Format};
use super::error::{open_file, DataError};
use super::images;

fn hash_file(h: &mut Sha256, path: &Path) -> Result<(), DataError> {
    let mut f = open_file(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    // The length after the bytes keeps file boundaries unambiguous.
    h.update(total.to_le_bytes());
    Ok(())
}

/// The hex SHA-256 that identifies `cfg`'s data for the cache key.
pub fn content_hash(cfg: &DataConfig) -> Result<String, DataError> {
    let mut h = Sha256::new();
    h.update(b"amct-data-v1\0");
    let mut settings = cfg.clone();
    settings.path = "".into();
    settings.labels = settings.labels.map(|_| "labels".into());
    let json =
        serde_json::to_string(&settings).map_err(|e| DataError::config("", e.to_string()))?;
    h.update((json.len() as u64).to_le_bytes());
    h.update(json.as_bytes());
    match cfg.format {
        Format::Images => {
            let listing = images::list(&cfg.path)?;
            if let Some(classes) = &listing.classes {
                for c in classes {
                    h.update(c.as_bytes());
                    h.update([0]);
                }
            }
            let n = cfg.limit.unwrap_or(usize::MAX);
            for (path, y) in listing.files.iter().take(n) {
                let rel = path.strip_prefix(&cfg.path).unwrap_or(path);
                h.update(rel.to_string_lossy().as_bytes());
                h.update([0]);
                h.update(y.unwrap_or(-1).to_le_bytes());
                hash_file(&mut h, path)?;
            }
        }
        Format::Npz | Format::Npy | Format::Idx => hash_file(&mut h, &cfg.path)?,
    }
    if let Some(l) = &cfg.labels {
        hash_file(&mut h, l)?;
    }
    Ok(format!("{:x}", h.finalize()))
}
