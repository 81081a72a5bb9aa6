//! ONNX element types (`TensorProto.DataType`) with their byte sizes and names.
//!
//! The numeric values are ONNX's own, so a `DType` converts losslessly to and
//! from the protobuf field; types amct cannot compute with (strings, complex,
//! 8-bit and 4-bit floats) are still represented so they survive a round trip.

use std::fmt;

/// An ONNX tensor element type, stored as ONNX's numeric code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DType(pub i32);

impl DType {
    pub const UNDEFINED: DType = DType(0);
    pub const F32: DType = DType(1);
    pub const U8: DType = DType(2);
    pub const I8: DType = DType(3);
    pub const U16: DType = DType(4);
    pub const I16: DType = DType(5);
    pub const I32: DType = DType(6);
    pub const I64: DType = DType(7);
    pub const STRING: DType = DType(8);
    pub const BOOL: DType = DType(9);
    pub const F16: DType = DType(10);
    pub const F64: DType = DType(11);
    pub const U32: DType = DType(12);
    pub const U64: DType = DType(13);
    pub const COMPLEX64: DType = DType(14);
    pub const COMPLEX128: DType = DType(15);
    pub const BF16: DType = DType(16);
    pub const F8E4M3FN: DType = DType(17);
    pub const F8E4M3FNUZ: DType = DType(18);
    pub const F8E5M2: DType = DType(19);
    pub const F8E5M2FNUZ: DType = DType(20);
    pub const U4: DType = DType(21);
    pub const I4: DType = DType(22);
    pub const F4E2M1: DType = DType(23);
    pub const F8E8M0: DType = DType(24);

    /// Size in bits of one element, `None` for strings and unknown codes.
    pub fn bits(self) -> Option<usize> {
        Some(match self {
            DType::U4 | DType::I4 | DType::F4E2M1 => 4,
            DType::U8 | DType::I8 | DType::BOOL => 8,
            DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => 8,
            DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 | DType::COMPLEX64 => 64,
            DType::COMPLEX128 => 128,
            _ => return None,
        })
    }

    /// Number of bytes needed to store `numel` elements (4-bit types packed two per byte).
    pub fn byte_len(self, numel: usize) -> Option<usize> {
        self.bits().map(|b| (numel * b).div_ceil(8))
    }

    /// True for the floating-point types amct can compute and train with.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// True for the integer and boolean types.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::U8
                | DType::I8
                | DType::U16
                | DType::I16
                | DType::I32
                | DType::I64
                | DType::U32
                | DType::U64
                | DType::BOOL
        )
    }

    /// numpy-style name ("float32", "int8", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::STRING => "string",
            DType::BOOL => "bool",
            DType::F16 => "float16",
            DType::F64 => "float64",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::COMPLEX64 => "complex64",
            DType::COMPLEX128 => "complex128",
            DType::BF16 => "bfloat16",
            DType::F8E4M3FN => "float8e4m3fn",
            DType::F8E4M3FNUZ => "float8e4m3fnuz",
            DType::F8E5M2 => "float8e5m2",
            DType::F8E5M2FNUZ => "float8e5m2fnuz",
            DType::U4 => "uint4",
            DType::I4 => "int4",
            DType::F4E2M1 => "float4e2m1",
            DType::F8E8M0 => "float8e8m0",
            _ => "undefined",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name() == "undefined" && self.0 != 0 {
            write!(f, "dtype#{}", self.0)
        } else {
            f.write_str(self.name())
        }
    }
}
