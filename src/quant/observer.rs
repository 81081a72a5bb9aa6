//! Streaming statistics of one activation tensor over the calibration
//! batches: extremes, a signed and a magnitude histogram (bounded memory),
//! and optionally per-channel means (axis 1) for bias correction.

use rayon::prelude::*;

use super::histogram::Histogram;

#[derive(Debug, Clone)]
pub struct Observer {
    pub min: f32,
    pub max: f32,
    pub signed: Histogram,
    pub magnitude: Histogram,
    /// Sum over batches of each channel's values and the element count per channel.
    channel_sums: Option<(Vec<f64>, f64)>,
    pub batches: usize,
    /// Which histograms are filled: the range search of the tensor's algorithm reads only
    /// these (`range_search::histograms_needed`), and counting is most of calibration's time.
    fill: Histograms,
}

/// Which of an observer's two histograms to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histograms {
    pub signed: bool,
    pub magnitude: bool,
}

impl Histograms {
    pub const BOTH: Histograms = Histograms {
        signed: true,
        magnitude: true,
    };
}

impl Observer {
    pub fn new(bins: usize, channel_means: bool) -> Self {
        Self::filling(bins, channel_means, Histograms::BOTH)
    }

    /// An observer that fills only the histograms in `fill`.
    pub fn filling(bins: usize, channel_means: bool, fill: Histograms) -> Self {
        Observer {
            fill,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            signed: Histogram::new(bins),
            magnitude: Histogram::new(bins),
            channel_sums: channel_means.then(|| (Vec::new(), 0.0)),
            batches: 0,
        }
    }

    /// Adds one batch of the tensor, `dims` its shape (channels on axis 1).
    pub fn observe(&mut self, values: &[f32], dims: &[usize]) {
        if values.is_empty() {
            return;
        }
        let (lo, hi) = extremes(values);
        let amax = lo.abs().max(hi.abs());
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let signed = self.fill.signed.then_some(&mut self.signed);
        let magnitude = self.fill.magnitude.then_some(&mut self.magnitude);
        Histogram::add_both(signed, magnitude, values, (lo, hi, amax));
        if let Some((sums, count)) = &mut self.channel_sums {
            if dims.len() >= 2 {
                let c = dims[1];
                let inner: usize = dims[2..].iter().product();
                if sums.len() != c {
                    sums.clear();
                    sums.resize(c, 0.0);
                    *count = 0.0;
                }
                for (i, chunk) in values.chunks(inner.max(1)).enumerate() {
                    sums[i % c] += chunk.iter().map(|&v| v as f64).sum::<f64>();
                }
                *count += (values.len() / c) as f64;
            }
        }
        self.batches += 1;
    }

    /// Mean of each channel (axis 1), when requested and seen.
    pub fn channel_means(&self) -> Option<Vec<f64>> {
        let (sums, count) = self.channel_sums.as_ref()?;
        (*count > 0.0).then(|| sums.iter().map(|s| s / count).collect())
    }

    pub fn seen(&self) -> bool {
        self.batches > 0
    }
}

/// Smallest and largest value, on every thread (NaNs are skipped).
fn extremes(values: &[f32]) -> (f32, f32) {
    let none = || (f32::INFINITY, f32::NEG_INFINITY);
    values
        .par_chunks(1 << 16)
        .fold(none, |acc, chunk| chunk_extremes(chunk, acc))
        .reduce(none, |a, b| (a.0.min(b.0), a.1.max(b.1)))
}

/// `extremes` of one chunk, starting from `(lo, hi)`: sixteen independent lanes of
/// comparisons (which the compiler turns into vector min/max; `f32::min` over one running
/// value would be a chain of scalar calls).
fn chunk_extremes(chunk: &[f32], (lo, hi): (f32, f32)) -> (f32, f32) {
    const LANES: usize = 16;
    let (mut los, mut his) = ([lo; LANES], [hi; LANES]);
    let mut blocks = chunk.chunks_exact(LANES);
    for block in &mut blocks {
        for i in 0..LANES {
            let v = block[i];
            los[i] = if v < los[i] { v } else { los[i] };
            his[i] = if v > his[i] { v } else { his[i] };
        }
    }
    let (lo, hi) = blocks.remainder().iter().fold((lo, hi), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    });
    let lo = los.iter().fold(lo, |a, &b| a.min(b));
    let hi = his.iter().fold(hi, |a, &b| a.max(b));
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_means_and_extremes() {
        let mut o = Observer::new(256, true);
        // Shape [2, 2, 2]: channel 0 holds 1s and 3s, channel 1 holds -2s.
        o.observe(&[1.0, 1.0, -2.0, -2.0, 3.0, 3.0, -2.0, -2.0], &[2, 2, 2]);
        assert_eq!(o.min, -2.0);
        assert_eq!(o.max, 3.0);
        let m = o.channel_means().unwrap();
        assert!((m[0] - 2.0).abs() < 1e-12 && (m[1] + 2.0).abs() < 1e-12);
        assert_eq!(o.signed.total(), 8.0);
        assert_eq!(o.magnitude.total(), 8.0);
    }

    #[test]
    fn extremes_skip_nans_and_see_every_lane_and_the_remainder() {
        let mut v: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        v[17] = f32::NAN;
        v[998] = -75.0; // in the remainder of 16-value blocks
        v[333] = 80.0;
        assert_eq!(extremes(&v), (-75.0, 80.0));
        assert_eq!(extremes(&[f32::NAN, 2.0]), (2.0, 2.0));
        let big: Vec<f32> = (0..200_000).map(|i| (i % 1000) as f32).collect();
        assert_eq!(extremes(&big), (0.0, 999.0));
    }
}
