//! Quantization parameters (scale, zero point, integer range) and the
//! arithmetic that maps a float range onto them, as ONNX's
//! QuantizeLinear/DequantizeLinear define it (round half to even, saturate).

use serde::Serialize;

/// An integer grid: `bits` wide, signed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IntGrid {
    pub bits: u32,
    pub signed: bool,
}

impl IntGrid {
    pub const INT8: IntGrid = IntGrid {
        bits: 8,
        signed: true,
    };
    pub const UINT8: IntGrid = IntGrid {
        bits: 8,
        signed: false,
    };

    /// Smallest and largest integer of the grid.
    pub fn range(self) -> (i32, i32) {
        if self.signed {
            (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1)
        } else {
            (0, (1 << self.bits) - 1)
        }
    }

    /// The symmetric range used for weights: -(2^(b-1)-1) ..= 2^(b-1)-1,
    /// which keeps products of two int8s away from the -128*-128 corner.
    pub fn symmetric_max(self) -> i32 {
        (1 << (self.bits - 1)) - 1
    }
}

/// Scale and zero point of one quantized tensor (or channel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// Whether an activation whose range starts at `lo` (observed minimum or
/// chosen range, both clamped to <= 0) is centred on zero. A symmetric
/// uint8 activation that is never negative (a ReLU output) keeps the
/// one-sided range `[0, max]` over the whole grid, zero point 0 (NNCF's
/// "unsigned symmetric"): a zero point of 128 would waste half the levels,
/// and onnxruntime drops a Relu or Clip before QuantizeLinear (and fuses
/// the integer conv) only when the zero point is the grid's lowest level.
/// Symmetric int8 stays centred everywhere (zero point 0), the form
/// TensorRT requires.
pub fn centred_on_zero(symmetric: bool, grid: IntGrid, lo: f64) -> bool {
    symmetric && (grid.signed || lo < 0.0)
}

/// Smallest scale used, so that constant tensors still quantize.
const MIN_SCALE: f32 = 1e-8;

impl QParams {
    /// Parameters covering `[lo, hi]` (widened to include 0) on `grid`.
    /// Symmetric: zero point at the grid's middle (0 for signed grids).
    pub fn from_range(lo: f64, hi: f64, grid: IntGrid, symmetric: bool) -> QParams {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let (qmin, qmax) = grid.range();
        if symmetric {
            let m = lo.abs().max(hi.abs());
            let levels = if grid.signed {
                grid.symmetric_max() as f64
            } else {
                (qmax - qmin) as f64 / 2.0
            };
            let scale = ((m / levels) as f32).max(MIN_SCALE);
            let zero_point = if grid.signed { 0 } else { (qmax + 1) / 2 };
            return QParams { scale, zero_point };
        }
        let scale = (((hi - lo) / (qmax - qmin) as f64) as f32).max(MIN_SCALE);
        let zp = (qmin as f64 - lo / scale as f64).round_ties_even();
        QParams {
            scale,
            zero_point: zp.clamp(qmin as f64, qmax as f64) as i32,
        }
    }

    /// An activation's parameters: like [`QParams::from_range`], with
    /// [`centred_on_zero`] deciding whether a symmetric setting centres it.
    pub fn for_activation(lo: f64, hi: f64, grid: IntGrid, symmetric: bool) -> QParams {
        QParams::from_range(lo, hi, grid, centred_on_zero(symmetric, grid, lo))
    }

    /// ONNX QuantizeLinear of one value.
    pub fn quantize(self, x: f32, grid: IntGrid) -> i32 {
        let (qmin, qmax) = grid.range();
        let q = (x / self.scale).round_ties_even() as i64 + self.zero_point as i64;
        q.clamp(qmin as i64, qmax as i64) as i32
    }

    pub fn dequantize(self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// Quantize then dequantize.
    pub fn fake(self, x: f32, grid: IntGrid) -> f32 {
        self.dequantize(self.quantize(x, grid))
    }

    /// The float range the grid represents.
    pub fn float_range(self, grid: IntGrid) -> (f32, f32) {
        let (qmin, qmax) = grid.range();
        (self.dequantize(qmin), self.dequantize(qmax))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_range_includes_zero_exactly() {
        let p = QParams::from_range(0.0, 6.0, IntGrid::INT8, false);
        assert_eq!(p.zero_point, -128);
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.fake(0.0, IntGrid::INT8), 0.0);
        let p = QParams::from_range(-1.0, 3.0, IntGrid::UINT8, false);
        assert_eq!(p.fake(0.0, IntGrid::UINT8), 0.0);
        assert_eq!(p.zero_point, 64);
    }

    #[test]
    fn symmetric_int8_uses_127_levels() {
        let p = QParams::from_range(-0.5, 1.27, IntGrid::INT8, true);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.01).abs() < 1e-7);
        assert_eq!(p.quantize(1.27, IntGrid::INT8), 127);
        assert_eq!(p.quantize(-5.0, IntGrid::INT8), -128);
        let p = QParams::from_range(-1.0, 1.0, IntGrid::UINT8, true);
        assert_eq!(p.zero_point, 128);
    }

    #[test]
    fn one_sided_symmetric_uint8_activations_use_the_whole_grid() {
        let g = IntGrid::UINT8;
        let p = QParams::for_activation(0.0, 2.55, g, true);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.01).abs() < 1e-7);
        assert_eq!(p.quantize(2.55, g), 255);
        let two_sided = QParams::for_activation(-1.0, 1.0, g, true);
        assert_eq!(two_sided.zero_point, 128);
        // int8 stays centred (TensorRT's form), one-sided or not
        let p = QParams::for_activation(0.0, 1.27, IntGrid::INT8, true);
        assert_eq!(p, QParams::from_range(-1.27, 1.27, IntGrid::INT8, true));
        assert_eq!(p.zero_point, 0);
    }

    #[test]
    fn rounding_is_half_to_even_and_saturates() {
        let p = QParams {
            scale: 1.0,
            zero_point: 0,
        };
        assert_eq!(p.quantize(2.5, IntGrid::INT8), 2);
        assert_eq!(p.quantize(3.5, IntGrid::INT8), 4);
        assert_eq!(p.quantize(300.0, IntGrid::INT8), 127);
        let g4 = IntGrid {
            bits: 4,
            signed: true,
        };
        assert_eq!(g4.range(), (-8, 7));
        assert_eq!(p.quantize(-9.0, g4), -8);
    }

    #[test]
    fn degenerate_range_gets_a_tiny_scale() {
        let p = QParams::from_range(0.0, 0.0, IntGrid::INT8, false);
        assert!(p.scale > 0.0);
        assert_eq!(p.fake(0.0, IntGrid::INT8), 0.0);
    }
}
