//! A fixed-size histogram whose range grows as values arrive: when a batch
//! falls outside it, the bins are widened by an integer factor and old
//! counts are merged exactly (no interpolation), so calibration memory is
//! the bin count, never the activations. Counting runs on every thread.

use rayon::prelude::*;

/// Where a value falls: bin `((v - lo) * inv)` clamped to `0..bins` (`bins == 0`: not
/// counted). Computed in f32, which moves a value by at most a rounding step at a bin edge.
#[derive(Debug, Clone, Copy)]
struct Binning {
    lo: f32,
    inv: f32,
    bins: usize,
}

impl Binning {
    const NONE: Binning = Binning {
        lo: 0.0,
        inv: 0.0,
        bins: 0,
    };

    #[inline(always)]
    fn index(&self, v: f32) -> usize {
        let top = (self.bins - 1) as f32;
        ((v - self.lo) * self.inv).clamp(0.0, top) as usize
    }
}

/// Values per rayon task when counting.
const COUNT_CHUNK: usize = 1 << 16;

/// Interleaved counters per histogram: consecutive values often land in the same bin, and
/// separate counters keep those increments from waiting on one another.
const LANES: usize = 4;

/// Adds the bins of `chunk` (mapped by `f`) to `lanes` (`LANES` counter arrays of `b.bins`).
#[inline(always)]
fn count_into(lanes: &mut [u32], b: Binning, chunk: &[f32], f: impl Fn(f32) -> f32) {
    let n = b.bins;
    let mut quads = chunk.chunks_exact(LANES);
    for q in &mut quads {
        for (lane, &v) in q.iter().enumerate() {
            lanes[lane * n + b.index(f(v))] += 1;
        }
    }
    for &v in quads.remainder() {
        lanes[b.index(f(v))] += 1;
    }
}

/// Bin counts of the values (first binning) and of their magnitudes (second), counted on
/// all threads in chunks with integer counters, then summed.
fn count_bins(values: &[f32], binnings: [Binning; 2]) -> [Vec<u32>; 2] {
    let [signed, magnitude] = binnings;
    let zero = || {
        [
            vec![0u32; LANES * signed.bins],
            vec![0u32; LANES * magnitude.bins],
        ]
    };
    let lanes = values
        .par_chunks(COUNT_CHUNK)
        .fold(zero, |mut acc, chunk| {
            let [s, m] = &mut acc;
            if signed.bins > 0 {
                count_into(s, signed, chunk, |v| v);
            }
            if magnitude.bins > 0 {
                count_into(m, magnitude, chunk, f32::abs);
            }
            acc
        })
        .reduce(zero, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
            }
            a
        });
    lanes.map(|l| {
        let n = l.len() / LANES;
        (0..n)
            .map(|i| (0..LANES).map(|k| l[k * n + i]).sum())
            .collect()
    })
}

/// Counts of values over `[lo, lo + width * bins.len())`.
#[derive(Debug, Clone)]
pub struct Histogram {
    lo: f64,
    width: f64,
    counts: Vec<f64>,
}

impl Histogram {
    /// An empty histogram with `bins` bins; its range comes from the first values.
    pub fn new(bins: usize) -> Self {
        Histogram {
            lo: 0.0,
            width: 0.0,
            counts: vec![0.0; bins.max(1)],
        }
    }

    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    pub fn lo(&self) -> f64 {
        self.lo
    }

    pub fn bin_width(&self) -> f64 {
        self.width
    }

    pub fn hi(&self) -> f64 {
        self.lo + self.width * self.counts.len() as f64
    }

    /// Lower edge of bin `i`.
    pub fn edge(&self, i: usize) -> f64 {
        self.lo + self.width * i as f64
    }

    pub fn center(&self, i: usize) -> f64 {
        self.lo + self.width * (i as f64 + 0.5)
    }

    /// Adds values whose minimum and maximum are `min` and `max`.
    pub fn add(&mut self, values: &[f32], min: f32, max: f32) {
        if values.is_empty() || !min.is_finite() || !max.is_finite() {
            return;
        }
        self.cover(min as f64, max as f64);
        let counts = count_bins(values, [self.binning(), Binning::NONE]);
        self.merge(&counts[0]);
    }

    /// Adds the magnitudes |v| of values whose largest magnitude is `amax`.
    pub fn add_magnitudes(&mut self, values: &[f32], amax: f32) {
        if values.is_empty() || !amax.is_finite() {
            return;
        }
        self.cover(0.0, amax as f64);
        let counts = count_bins(values, [Binning::NONE, self.binning()]);
        self.merge(&counts[1]);
    }

    /// Adds values to `signed` and their magnitudes to `magnitude` (either may be absent) in
    /// one pass over memory (`min`, `max` and `amax`: the values' extremes and largest
    /// magnitude).
    pub fn add_both(
        mut signed: Option<&mut Histogram>,
        mut magnitude: Option<&mut Histogram>,
        values: &[f32],
        (min, max, amax): (f32, f32, f32),
    ) {
        if values.is_empty() || !min.is_finite() || !max.is_finite() || !amax.is_finite() {
            return;
        }
        let mut binnings = [Binning::NONE; 2];
        if let Some(h) = signed.as_deref_mut() {
            h.cover(min as f64, max as f64);
            binnings[0] = h.binning();
        }
        if let Some(h) = magnitude.as_deref_mut() {
            h.cover(0.0, amax as f64);
            binnings[1] = h.binning();
        }
        if binnings.iter().all(|b| b.bins == 0) {
            return;
        }
        let counts = count_bins(values, binnings);
        if let Some(h) = signed {
            h.merge(&counts[0]);
        }
        if let Some(h) = magnitude {
            h.merge(&counts[1]);
        }
    }

    fn binning(&self) -> Binning {
        Binning {
            lo: self.lo as f32,
            inv: (1.0 / self.width) as f32,
            bins: self.counts.len(),
        }
    }

    fn merge(&mut self, counts: &[u32]) {
        for (c, &k) in self.counts.iter_mut().zip(counts) {
            *c += k as f64;
        }
    }

    /// Widens the range (by whole multiples of the bin width) to include `[min, max]`.
    fn cover(&mut self, min: f64, max: f64) {
        let n = self.counts.len();
        if self.width == 0.0 {
            let span = (max - min).max(f64::EPSILON.max(max.abs() * 1e-6));
            self.lo = min;
            // A hair wider so that `max` falls in the last bin.
            self.width = span * (1.0 + 1e-9) / n as f64;
            return;
        }
        if min >= self.lo && max < self.hi() {
            return;
        }
        let w = self.width;
        let shift = ((self.lo - min) / w).ceil().max(0.0) as usize;
        let above = ((max - self.lo) / w).floor().max(0.0) as usize + 1;
        let needed = shift + above.max(n);
        let factor = needed.div_ceil(n).max(1);
        let mut merged = vec![0.0; n];
        for (i, &c) in self.counts.iter().enumerate() {
            merged[((i + shift) / factor).min(n - 1)] += c;
        }
        self.counts = merged;
        self.lo -= shift as f64 * w;
        self.width = w * factor as f64;
    }

    /// The value below which `q` (0..=1) of the mass lies, linear within a bin.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.total();
        if total == 0.0 {
            return 0.0;
        }
        let target = q.clamp(0.0, 1.0) * total;
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0.0 && seen + c >= target {
                let frac = ((target - seen) / c).clamp(0.0, 1.0);
                return self.edge(i) + frac * self.width;
            }
            seen += c;
        }
        self.hi()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(h: &mut Histogram, v: &[f32]) {
        let min = v.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        h.add(v, min, max);
    }

    #[test]
    fn growing_keeps_every_count_and_old_edges() {
        let mut h = Histogram::new(100);
        let first: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        add(&mut h, &first);
        assert_eq!(h.total(), 1000.0);
        let w0 = h.bin_width();
        add(&mut h, &[-2.5, 7.0]);
        assert_eq!(h.total(), 1002.0);
        assert!(h.lo() <= -2.5 && h.hi() > 7.0);
        // The new width is a whole multiple of the old one and the old
        // origin stays on a bin edge.
        let factor = h.bin_width() / w0;
        assert!((factor - factor.round()).abs() < 1e-9, "{factor}");
        let offset = (0.0 - h.lo()) / w0;
        assert!((offset - offset.round()).abs() < 1e-6, "{offset}");
    }

    #[test]
    fn quantiles_of_uniform_values() {
        let mut h = Histogram::new(1000);
        let v: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        add(&mut h, &v);
        assert!((h.quantile(0.5) - 0.5).abs() < 2e-3);
        assert!((h.quantile(0.99) - 0.99).abs() < 2e-3);
        assert!(h.quantile(1.0) <= h.hi());
    }

    #[test]
    fn constant_values_do_not_divide_by_zero() {
        let mut h = Histogram::new(10);
        add(&mut h, &[3.0, 3.0, 3.0]);
        assert_eq!(h.total(), 3.0);
        assert!(h.bin_width() > 0.0);
        add(&mut h, &[f32::NAN]);
        assert_eq!(h.total(), 3.0);
    }
}
