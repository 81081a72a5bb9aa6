//! Streaming statistics of one activation tensor over the calibration
//! batches: extremes, a signed and a magnitude histogram (bounded memory),
//! and optionally per-channel means (axis 1) for bias correction.

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
}

impl Observer {
    pub fn new(bins: usize, channel_means: bool) -> Self {
        Observer {
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
        let (mut lo, mut hi, mut amax) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        for &v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        amax = amax.max(lo.abs()).max(hi.abs());
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.signed.add(values, lo, hi);
        self.magnitude.add_magnitudes(values, amax);
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
}
