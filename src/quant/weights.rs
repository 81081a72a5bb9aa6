//! Weight quantization, done offline: symmetric scales per output channel
//! (or per tensor), by the largest magnitude or by a clip search for the
//! least squared error, and bias correction from input channel means.
//! The integers are stored as int8, or as uint8 shifted by 128.

use super::qparams::{IntGrid, QParams};
use crate::recipe::{WeightAlgo, WeightConfig, WeightType};

/// A quantized weight tensor.
#[derive(Debug, Clone)]
pub struct QuantWeight {
    pub dims: Vec<usize>,
    /// Channel axis of the scales, `None` for one scale.
    pub axis: Option<usize>,
    /// Scales, zero point 0: the symmetric integers of `grid`.
    pub params: Vec<QParams>,
    pub values: Vec<i32>,
    /// The grid the integers are chosen on (signed, `bits` wide).
    pub grid: IntGrid,
    /// The 8-bit type the integers are stored as: int8 as they are, or
    /// uint8 shifted by 128 (zero point 128), which represents the same
    /// real values.
    pub storage: IntGrid,
}

impl QuantWeight {
    /// The weights as the dequantized floats inference will see.
    pub fn dequantized(&self) -> Vec<f32> {
        let (outer, ch, inner) = split(&self.dims, self.axis);
        let mut out = vec![0.0; self.values.len()];
        for o in 0..outer {
            for c in 0..ch {
                let p = self.params[if self.axis.is_some() { c } else { 0 }];
                let base = (o * ch + c) * inner;
                for (dst, &q) in out[base..base + inner]
                    .iter_mut()
                    .zip(&self.values[base..base + inner])
                {
                    *dst = p.dequantize(q);
                }
            }
        }
        out
    }

    pub fn scales(&self) -> Vec<f32> {
        self.params.iter().map(|p| p.scale).collect()
    }

    /// Zero point of the stored integers: 0 for int8, 128 for uint8.
    pub fn stored_zero_point(&self) -> i32 {
        if self.storage.signed {
            0
        } else {
            128
        }
    }

    /// The integers as stored (`values` plus the stored zero point).
    pub fn stored_values(&self) -> Vec<i32> {
        let z = self.stored_zero_point();
        self.values.iter().map(|&q| q + z).collect()
    }
}

/// (outer, channels, inner) sizes around `axis` (all in one channel when `None`).
fn split(dims: &[usize], axis: Option<usize>) -> (usize, usize, usize) {
    match axis {
        Some(a) => (
            dims[..a].iter().product(),
            dims[a],
            dims[a + 1..].iter().product(),
        ),
        None => (1, 1, dims.iter().product()),
    }
}

/// Quantizes `values` (shape `dims`) per channel along `axis` when the
/// config asks for it and an axis is given.
pub fn quantize_weight(
    values: &[f32],
    dims: &[usize],
    axis: Option<usize>,
    cfg: &WeightConfig,
) -> QuantWeight {
    let axis = axis.filter(|_| cfg.per_channel);
    let grid = IntGrid {
        bits: cfg.bits,
        signed: true,
    };
    let (outer, ch, inner) = split(dims, axis);
    let channel = |c: usize| -> Vec<f32> {
        (0..outer)
            .flat_map(|o| {
                let base = (o * ch + c) * inner;
                values[base..base + inner].iter().copied()
            })
            .collect()
    };
    let params: Vec<QParams> = (0..ch)
        .map(|c| {
            let w = channel(c);
            let amax = w.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let clip = match cfg.algo {
                WeightAlgo::Minmax => amax,
                WeightAlgo::Mse => mse_clip(&w, amax, grid),
            };
            QParams::from_range(-clip, clip, grid, true)
        })
        .collect();
    let mut q = vec![0; values.len()];
    for o in 0..outer {
        for (c, p) in params.iter().enumerate() {
            let base = (o * ch + c) * inner;
            for i in base..base + inner {
                q[i] = p.quantize(values[i], grid);
            }
        }
    }
    QuantWeight {
        dims: dims.to_vec(),
        axis,
        params,
        values: q,
        grid,
        storage: match cfg.dtype {
            WeightType::Int8 => IntGrid::INT8,
            WeightType::Uint8 => IntGrid::UINT8,
        },
    }
}

/// The clip (a fraction of the largest magnitude) with the least squared error.
fn mse_clip(w: &[f32], amax: f64, grid: IntGrid) -> f64 {
    if amax == 0.0 {
        return 0.0;
    }
    let mut best = (f64::INFINITY, amax);
    for k in 0..=80 {
        let clip = amax * (1.0 - k as f64 * 0.01);
        let p = QParams::from_range(-clip, clip, grid, true);
        let err: f64 = w
            .iter()
            .map(|&v| {
                let d = (v - p.fake(v, grid)) as f64;
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, clip);
        }
    }
    best.1
}

/// The expected output shift per output channel caused by quantizing a
/// weight, `E[(W - Wq) x]`, from the mean of each input channel:
/// `rows` output channels, each reading `groups`' share of the inputs.
/// `w` and `wq` are laid out [out, in_per_group, inner...] (Conv) with
/// `inner` weights per input channel.
pub fn bias_shift(
    w: &[f32],
    wq: &[f32],
    rows: usize,
    in_per_group: usize,
    inner: usize,
    groups: usize,
    input_means: &[f64],
) -> Vec<f64> {
    let per_group_rows = rows / groups.max(1);
    (0..rows)
        .map(|m| {
            let g = m / per_group_rows.max(1);
            let mut shift = 0.0;
            for c in 0..in_per_group {
                let mean = input_means
                    .get(g * in_per_group + c)
                    .copied()
                    .unwrap_or(0.0);
                let base = (m * in_per_group + c) * inner;
                let d: f64 = (base..base + inner).map(|i| (w[i] - wq[i]) as f64).sum();
                shift += d * mean;
            }
            shift
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(algo: WeightAlgo, per_channel: bool, bits: u32) -> WeightConfig {
        WeightConfig {
            algo,
            bits,
            dtype: WeightType::Int8,
            per_channel,
            bias_correction: false,
            rounding: crate::recipe::Rounding::Nearest,
            adaround: Default::default(),
        }
    }

    #[test]
    fn per_channel_scales_follow_each_channel() {
        // Two output channels of 3 weights: magnitudes 1 and 100.
        let w = [0.5, -1.0, 0.25, 100.0, -50.0, 10.0];
        let q = quantize_weight(&w, &[2, 3], Some(0), &cfg(WeightAlgo::Minmax, true, 8));
        assert_eq!(q.params.len(), 2);
        assert!((q.params[0].scale - 1.0 / 127.0).abs() < 1e-9);
        assert!((q.params[1].scale - 100.0 / 127.0).abs() < 1e-6);
        assert_eq!(q.values[1], -127);
        assert_eq!(q.values[3], 127);
        let d = q.dequantized();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= q.params[1].scale / 2.0 + 1e-6);
        }
        let t = quantize_weight(&w, &[2, 3], Some(0), &cfg(WeightAlgo::Minmax, false, 8));
        assert_eq!(t.params.len(), 1);
        assert_eq!(t.axis, None);
    }

    #[test]
    fn uint8_storage_shifts_the_same_integers_by_128() {
        let w = [0.5, -1.0, 0.25, 100.0, -50.0, 10.0];
        for bits in [8, 4] {
            let int8 = quantize_weight(&w, &[2, 3], Some(0), &cfg(WeightAlgo::Mse, true, bits));
            let mut c = cfg(WeightAlgo::Mse, true, bits);
            c.dtype = WeightType::Uint8;
            let uint8 = quantize_weight(&w, &[2, 3], Some(0), &c);
            assert_eq!(int8.stored_zero_point(), 0);
            assert_eq!(int8.stored_values(), int8.values);
            assert_eq!(uint8.storage, IntGrid::UINT8);
            assert_eq!(uint8.stored_zero_point(), 128);
            assert_eq!(uint8.params, int8.params);
            assert_eq!(uint8.values, int8.values);
            assert_eq!(uint8.dequantized(), int8.dequantized());
            let stored = uint8.stored_values();
            assert!(stored.iter().all(|v| (0..=255).contains(v)), "{stored:?}");
            assert_eq!(stored[1], int8.values[1] + 128);
            assert!(int8.values[1] < 0 && stored[1] < 128);
        }
    }

    #[test]
    fn axis_one_for_matmul_style_weights() {
        // [K=2, N=3]: column n is channel n.
        let w = [1.0, 2.0, 4.0, -1.0, -2.0, -4.0];
        let q = quantize_weight(&w, &[2, 3], Some(1), &cfg(WeightAlgo::Minmax, true, 8));
        let s = q.scales();
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-9 && (s[2] - 4.0 / 127.0).abs() < 1e-9);
        assert_eq!(q.values, vec![127, 127, 127, -127, -127, -127]);
    }

    #[test]
    fn mse_search_clips_an_outlier_and_lowers_error() {
        let mut w: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        w[7] = 2.0;
        let err = |q: &QuantWeight| -> f64 {
            w.iter()
                .zip(q.dequantized())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        let mm = quantize_weight(&w, &[1, 256], Some(0), &cfg(WeightAlgo::Minmax, true, 4));
        let mse = quantize_weight(&w, &[1, 256], Some(0), &cfg(WeightAlgo::Mse, true, 4));
        assert!(mse.params[0].scale < mm.params[0].scale);
        assert!(err(&mse) < err(&mm));
        assert!(mse.values.iter().all(|&v| (-7..=7).contains(&v)));
    }

    #[test]
    fn bias_shift_matches_direct_expectation() {
        // One output channel, two input channels with inner 1: shift = sum (w-wq) * mean.
        let s = bias_shift(&[1.0, 2.0], &[0.5, 2.5], 1, 2, 1, 1, &[2.0, 4.0]);
        assert!((s[0] - (0.5 * 2.0 - 0.5 * 4.0)).abs() < 1e-12);
        // Two groups: output 1 reads input channel 1 only.
        let s = bias_shift(&[1.0, 1.0], &[0.0, 0.0], 2, 1, 1, 2, &[3.0, 5.0]);
        assert_eq!(s, vec![3.0, 5.0]);
    }
}
