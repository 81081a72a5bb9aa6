//! The `.npy` format, parsed by hand so every numeric dtype works: the magic,
//! the header dict (`descr`, `fortran_order`, `shape`), and conversion of
//! little- or big-endian bool/int/uint/float elements to f32 or i64. Only C
//! order is accepted.

use std::io::Read;

/// Element kind of a numpy dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Uint,
    Float,
}

/// A numpy dtype such as `<f4` or `|u1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DType {
    pub kind: Kind,
    pub size: usize,
    pub big_endian: bool,
}

impl DType {
    /// Parses a `descr` string; `None` for unsupported ones (complex, strings, ...).
    pub fn parse(descr: &str) -> Option<DType> {
        let mut chars = descr.chars();
        let (big_endian, rest) = match chars.next()? {
            '<' | '|' | '=' => (false, chars.as_str()),
            '>' => (true, chars.as_str()),
            _ => (false, descr),
        };
        let mut rc = rest.chars();
        let kind = match rc.next()? {
            'b' => Kind::Bool,
            'i' => Kind::Int,
            'u' => Kind::Uint,
            'f' => Kind::Float,
            _ => return None,
        };
        let size: usize = rc.as_str().parse().ok()?;
        let ok = match kind {
            Kind::Bool => size == 1,
            Kind::Int | Kind::Uint => matches!(size, 1 | 2 | 4 | 8),
            Kind::Float => matches!(size, 2 | 4 | 8),
        };
        ok.then_some(DType {
            kind,
            size,
            big_endian,
        })
    }

    /// True for 8-bit unsigned data, whose default scale is 1/255.
    pub fn is_u8(self) -> bool {
        self.kind == Kind::Uint && self.size == 1
    }

    fn raw_bits(self, b: &[u8]) -> u64 {
        let mut v = 0u64;
        if self.big_endian {
            for &x in b {
                v = (v << 8) | u64::from(x);
            }
        } else {
            for &x in b.iter().rev() {
                v = (v << 8) | u64::from(x);
            }
        }
        v
    }

    /// One element as f64 (exact for all integers up to 2^53).
    pub fn to_f64(self, b: &[u8]) -> f64 {
        let bits = self.raw_bits(b);
        let shift = 64 - 8 * self.size as u32;
        match (self.kind, self.size) {
            (Kind::Bool | Kind::Uint, _) => bits as f64,
            (Kind::Int, _) => (((bits << shift) as i64) >> shift) as f64,
            (Kind::Float, 2) => f64::from(half::f16::from_bits(bits as u16)),
            (Kind::Float, 4) => f64::from(f32::from_bits(bits as u32)),
            (Kind::Float, _) => f64::from_bits(bits),
        }
    }

    /// Converts packed elements to f32.
    pub fn decode_f32(self, bytes: &[u8], out: &mut Vec<f32>) {
        out.extend(bytes.chunks_exact(self.size).map(|b| self.to_f64(b) as f32));
    }
}

/// The parsed header of a `.npy` stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Bytes from the start of the stream to the first element.
    pub data_offset: u64,
}

impl Header {
    /// Size of the data in bytes; `None` when it overflows.
    pub fn nbytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size as u64, |acc, &d| acc.checked_mul(d as u64))
    }
}

/// Reads and parses the header; errors are plain messages for the caller
/// to attach the file name to.
pub fn read_header(r: &mut impl Read) -> Result<Header, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|e| format!("too short for a header ({e})"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (len, fixed) = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l).map_err(|e| e.to_string())?;
            (usize::from(u16::from_le_bytes(l)), 10)
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            r.read_exact(&mut l).map_err(|e| e.to_string())?;
            (u32::from_le_bytes(l) as usize, 12)
        }
        v => return Err(format!("unsupported format version {v}")),
    };
    if len > 1 << 20 {
        return Err(format!("header of {len} bytes is implausibly long"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|e| format!("truncated header ({e})"))?;
    let text = String::from_utf8_lossy(&text);
    let descr = dict_value(&text, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let dtype = DType::parse(descr).ok_or_else(|| format!("unsupported dtype '{descr}'"))?;
    let fortran = dict_value(&text, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order arrays are not supported; save with C order".into());
    }
    let shape = dict_value(&text, "shape").ok_or("header has no 'shape'")?;
    let shape = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("bad shape {shape}"))?;
    Ok(Header {
        dtype,
        shape,
        data_offset: (fixed + len) as u64,
    })
}

/// The text of `'key': VALUE` in a Python dict literal, up to the `,` or `}`
/// that ends it (tuples are kept whole).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pos = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))?;
    let rest = &text[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_dtypes() {
        let dict = "{'descr': '|i1', 'fortran_order': False, 'shape': (3, 2), }";
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        let h = read_header(&mut v.as_slice()).unwrap();
        assert_eq!(h.shape, vec![3, 2]);
        assert_eq!(h.dtype.kind, Kind::Int);
        assert_eq!(h.data_offset, 10 + dict.len() as u64);
        assert_eq!(h.dtype.to_f64(&[0xff]), -1.0);
        let f2 = DType::parse("<f2").unwrap();
        assert_eq!(
            f2.to_f64(&half::f16::from_f32(1.5).to_bits().to_le_bytes()),
            1.5
        );
        let be = DType::parse(">i4").unwrap();
        assert_eq!(be.to_f64(&(-7i32).to_be_bytes()), -7.0);
        assert!(DType::parse("<c8").is_none());
        let scalar = "{'descr': '<f8', 'fortran_order': False, 'shape': (), }";
        assert_eq!(dict_value(scalar, "shape"), Some(" ()"));
    }
}
