//! IDX files as used by MNIST and Fashion-MNIST: magic `00 00 TYPE RANK`,
//! RANK big-endian u32 dimensions, then big-endian elements. Plain files are
//! read sample by sample; gzipped ones (detected by content, not name) are
//! inflated once into memory. Labels come from a second IDX file (or .npy).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::array::{labels_from, ArrayStore};
use super::config::DataConfig;
use super::error::{open_file, DataError};
use super::npy::{self, DType, Kind};
use super::npz::ArraySource;

fn dtype_of(code: u8) -> Option<DType> {
    let (kind, size) = match code {
        0x08 => (Kind::Uint, 1),
        0x09 => (Kind::Int, 1),
        0x0B => (Kind::Int, 2),
        0x0C => (Kind::Int, 4),
        0x0D => (Kind::Float, 4),
        0x0E => (Kind::Float, 8),
        _ => return None,
    };
    Some(DType {
        kind,
        size,
        big_endian: true,
    })
}

/// Parses the header at the start of `bytes`: element type, dims, data offset.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(DType, Vec<usize>, u64), DataError> {
    let not_idx = || DataError::NotIdx {
        path: path.to_path_buf(),
        magic: bytes[..bytes.len().min(4)].to_vec(),
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[3] == 0 {
        return Err(not_idx());
    }
    let dtype = dtype_of(bytes[2]).ok_or_else(not_idx)?;
    let rank = usize::from(bytes[3]);
    let offset = 4 + 4 * rank;
    let dims = bytes.get(4..offset).ok_or(DataError::Truncated {
        path: path.to_path_buf(),
        expected: offset as u64,
        found: bytes.len() as u64,
    })?;
    let dims = dims
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    Ok((dtype, dims, offset as u64))
}

/// An IDX file (plain or gzipped) as an array store; a `.npy` file is
/// accepted too (for labels).
fn idx_array(path: &Path) -> Result<ArrayStore, DataError> {
    let mut f = open_file(path)?;
    let mut head = Vec::with_capacity(4 + 4 * 255);
    (&mut f)
        .take(4 + 4 * 255)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(path, e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut bytes = Vec::new();
        GzDecoder::new(open_file(path)?)
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::io(path, e))?;
        let (dtype, dims, offset) = parse_header(path, &bytes)?;
        return ArrayStore::in_memory(path, bytes, offset, dtype, dims);
    }
    if head.starts_with(b"\x93NUMPY") {
        let h = npy::read_header(&mut head.as_slice()).map_err(|message| DataError::BadNpy {
            path: path.to_path_buf(),
            message,
        })?;
        return ArrayStore::in_file(path, h.data_offset, h.dtype, h.shape);
    }
    let (dtype, dims, offset) = parse_header(path, &head)?;
    ArrayStore::in_file(path, offset, dtype, dims)
}

/// `format = "idx"`: `path` the images (or any samples), `labels` the labels.
pub(crate) fn open(cfg: &DataConfig) -> Result<ArraySource, DataError> {
    let x = idx_array(&cfg.path)?;
    let y = match &cfg.labels {
        Some(l) => Some(labels_from(&idx_array(l)?, l, x.len())?),
        None => None,
    };
    Ok(ArraySource::new(&cfg.path, x, y, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        let p = Path::new("t.idx");
        let mut b = vec![0, 0, 0x08, 3];
        for d in [2u32, 3, 4] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        let (dt, dims, off) = parse_header(p, &b).unwrap();
        assert!(dt.is_u8());
        assert_eq!(dims, vec![2, 3, 4]);
        assert_eq!(off, 16);
        assert!(matches!(
            parse_header(p, b"PK\x03\x04"),
            Err(DataError::NotIdx { .. })
        ));
        assert!(matches!(
            parse_header(p, &b[..9]),
            Err(DataError::Truncated { .. })
        ));
        assert!(matches!(
            parse_header(p, &[0, 0, 0x42, 1]),
            Err(DataError::NotIdx { .. })
        ));
    }
}
