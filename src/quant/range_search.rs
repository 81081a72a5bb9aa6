//! Chooses an activation's clip range from its observer: minmax,
//! percentile, entropy (KL), MSE, IFMR and HFMG. Errors are estimated on the
//! histograms, so every search costs bins, not activations.

use super::histogram::Histogram;
use super::observer::{Histograms, Observer};
use super::qparams::{centred_on_zero, IntGrid};
use crate::recipe::{ActivationAlgo, ActivationConfig};

/// The histograms [`choose_range`] reads for `cfg` (calibration fills only these).
pub fn histograms_needed(cfg: &ActivationConfig) -> Histograms {
    let (signed, magnitude) = match (cfg.algo, cfg.symmetric) {
        (ActivationAlgo::Minmax, _) => (false, false),
        (ActivationAlgo::Percentile, true) | (ActivationAlgo::Entropy, _) => (false, true),
        (ActivationAlgo::Percentile, false) | (ActivationAlgo::Mse, _) => (true, false),
        (ActivationAlgo::Ifmr, false) | (ActivationAlgo::Hfmg, _) => (true, false),
        (ActivationAlgo::Ifmr, true) => (true, true),
    };
    Histograms { signed, magnitude }
}

/// The float range `[lo, hi]` to quantize the observed tensor over. A
/// tensor never negative in calibration always gets `lo = 0`, so that its
/// zero point sits at the grid's lowest level (see [`centred_on_zero`]).
pub fn choose_range(obs: &Observer, cfg: &ActivationConfig, grid: IntGrid) -> (f64, f64) {
    let (min, max) = (obs.min.min(0.0) as f64, obs.max.max(0.0) as f64);
    if !(obs.seen() && min.is_finite() && max.is_finite()) || max - min == 0.0 {
        return (min, max);
    }
    let need = histograms_needed(cfg);
    if need.signed && obs.signed.total() == 0.0 || need.magnitude && obs.magnitude.total() == 0.0 {
        // Observed for another algorithm, without the histogram this one searches.
        return (min, max);
    }
    let (lo, hi) = search_range(obs, cfg, grid, (min, max));
    // The histograms' lower edge may lie a bin below zero (it grows by whole
    // bins as batches arrive): a never-negative tensor keeps lo = 0 exactly.
    (if min < 0.0 { lo } else { 0.0 }, hi)
}

/// [`choose_range`]'s search, `(min, max)` the observed extremes widened to 0.
fn search_range(
    obs: &Observer,
    cfg: &ActivationConfig,
    grid: IntGrid,
    (min, max): (f64, f64),
) -> (f64, f64) {
    let symmetric = centred_on_zero(cfg.symmetric, grid, min);
    let steps = grid_steps(grid, symmetric);
    let p = cfg.percentile / 100.0;
    let clamp = |(lo, hi): (f64, f64)| (lo.max(min).min(0.0), hi.min(max).max(0.0));
    let magnitude_clip = || {
        let t = obs.magnitude.quantile(p);
        if symmetric {
            (-t, t)
        } else {
            (0.0, t) // one-sided: the magnitudes are the values
        }
    };
    match cfg.algo {
        ActivationAlgo::Minmax => (min, max),
        ActivationAlgo::Percentile if cfg.symmetric => magnitude_clip(),
        ActivationAlgo::Percentile => clamp((obs.signed.quantile(1.0 - p), obs.signed.quantile(p))),
        ActivationAlgo::Entropy => {
            // One-sided tensors (after ReLU) spread all levels over [0, t].
            let levels = if symmetric || min < 0.0 {
                steps / 2
            } else {
                steps
            };
            let t = kl_threshold(&obs.magnitude, levels.max(2));
            if symmetric {
                (-t, t)
            } else {
                clamp((-t, t))
            }
        }
        ActivationAlgo::Mse => {
            let candidates = (1..=200).map(|k| k as f64 / 200.0);
            best_scaled(&obs.signed, (min, max), candidates, symmetric, steps)
        }
        ActivationAlgo::Ifmr => {
            let start = if cfg.symmetric {
                magnitude_clip()
            } else {
                (
                    obs.signed.quantile(1.0 - p).min(0.0),
                    obs.signed.quantile(p).max(0.0),
                )
            };
            let [from, to] = cfg.search_range;
            let n = ((to - from) / cfg.search_step).round() as usize;
            let candidates = (0..=n).map(|i| from + i as f64 * cfg.search_step);
            best_scaled(&obs.signed, start, candidates, symmetric, steps)
        }
        ActivationAlgo::Hfmg => {
            if symmetric {
                let n = obs.magnitude.bins();
                let candidates = (1..=n).map(|k| k as f64 / n as f64);
                let m = min.abs().max(max);
                best_scaled(&obs.signed, (-m, m), candidates, true, steps)
            } else {
                shrink_search(&obs.signed, steps)
            }
        }
    }
}

/// Quantization steps across the grid: 254 for symmetric int8, 255 otherwise.
fn grid_steps(grid: IntGrid, symmetric: bool) -> usize {
    let (qmin, qmax) = grid.range();
    if symmetric && grid.signed {
        2 * grid.symmetric_max() as usize
    } else {
        (qmax - qmin) as usize
    }
}

/// Expected squared error of quantizing the histogram's mass onto `steps`
/// uniform steps over `[lo, hi]`: clipping error outside, rounding error
/// (step²/12) inside.
pub fn quantization_error(h: &Histogram, lo: f64, hi: f64, steps: usize) -> f64 {
    let delta = (hi - lo).max(f64::MIN_POSITIVE) / steps as f64;
    let rounding = delta * delta / 12.0;
    let w2 = h.bin_width() * h.bin_width() / 12.0;
    let mut err = 0.0;
    for (i, &c) in h.counts().iter().enumerate() {
        if c == 0.0 {
            continue;
        }
        let x = h.center(i);
        err += c * if x < lo {
            (lo - x) * (lo - x) + w2
        } else if x > hi {
            (x - hi) * (x - hi) + w2
        } else {
            rounding
        };
    }
    err
}

/// The range `start` scaled by the candidate factor with the least error.
fn best_scaled(
    h: &Histogram,
    start: (f64, f64),
    factors: impl Iterator<Item = f64>,
    symmetric: bool,
    steps: usize,
) -> (f64, f64) {
    let mut best = (f64::INFINITY, start);
    for f in factors {
        let (lo, hi) = if symmetric {
            let m = start.0.abs().max(start.1.abs()) * f;
            (-m, m)
        } else {
            (start.0 * f, start.1 * f)
        };
        if hi - lo <= 0.0 {
            continue;
        }
        let e = quantization_error(h, lo, hi, steps);
        if e < best.0 {
            best = (e, (lo, hi));
        }
    }
    best.1
}

/// HFMG: shrinks `[start bin, end bin]` of the merged histogram from the
/// side holding less mass while the estimated error keeps falling.
fn shrink_search(h: &Histogram, steps: usize) -> (f64, f64) {
    let n = h.bins();
    let range = |a: usize, b: usize| (h.edge(a).min(0.0), h.edge(b + 1).max(0.0));
    let error = |a: usize, b: usize| {
        let (lo, hi) = range(a, b);
        quantization_error(h, lo, hi, steps)
    };
    let (mut a, mut b) = (0usize, n - 1);
    let mut best = error(a, b);
    let stride = (n / 512).max(1);
    let counts = h.counts();
    while b > a + stride {
        let left_mass: f64 = counts[a..a + stride].iter().sum();
        let right_mass: f64 = counts[b + 1 - stride..=b].iter().sum();
        // Try the lighter side first, then the other.
        let tries = if left_mass <= right_mass {
            [(a + stride, b), (a, b - stride)]
        } else {
            [(a, b - stride), (a + stride, b)]
        };
        let mut moved = false;
        for (na, nb) in tries {
            // Never cut past zero: the range must keep 0 representable.
            if h.edge(na) > 0.0 || h.edge(nb + 1) < 0.0 {
                continue;
            }
            let e = error(na, nb);
            if e <= best {
                best = e;
                (a, b) = (na, nb);
                moved = true;
                break;
            }
        }
        if !moved {
            break;
        }
    }
    range(a, b)
}

/// The largest fraction of values the entropy search may clip.
const ENTROPY_MAX_CLIPPED: f64 = 1e-3;

/// TensorRT-style entropy calibration on a magnitude histogram: the
/// threshold whose `levels`-level quantized distribution has the least KL
/// divergence from the clipped reference distribution.
pub fn kl_threshold(h: &Histogram, levels: usize) -> f64 {
    let counts = h.counts();
    let n = counts.len();
    if n <= levels {
        return h.hi();
    }
    // Thresholds that clip more than ENTROPY_MAX_CLIPPED of the values are
    // not candidates: on spiky distributions (a normalised image's
    // background) the KL minimum otherwise sits right after the spike and
    // clips the informative tail away.
    let floor_bin = ((h.quantile(1.0 - ENTROPY_MAX_CLIPPED) - h.lo()) / h.bin_width()).ceil();
    let first = (floor_bin.max(0.0) as usize).clamp(levels, n);
    let total_from: Vec<f64> = {
        let mut t = vec![0.0; n + 1];
        for i in (0..n).rev() {
            t[i] = t[i + 1] + counts[i];
        }
        t
    };
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0.0; n];
    let mut q = vec![0.0; n];
    for i in first..=n {
        p[..i].copy_from_slice(&counts[..i]);
        p[i - 1] += total_from[i];
        // Merge the first i bins into `levels` groups, spread over their nonzero bins.
        for j in 0..levels {
            let start = j * i / levels;
            let end = ((j + 1) * i / levels).max(start + 1);
            let mass: f64 = counts[start..end].iter().sum();
            let nonzero = counts[start..end].iter().filter(|&&c| c > 0.0).count();
            for k in start..end {
                q[k] = if counts[k] > 0.0 {
                    mass / nonzero as f64
                } else {
                    0.0
                };
            }
        }
        let kl = kl_divergence(&p[..i], &q[..i]);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    h.edge(best.1)
}

/// KL(p || q) of two unnormalized distributions; q is smoothed where p has
/// mass and q has none.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let sp: f64 = p.iter().sum();
    let sq: f64 = q.iter().sum();
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    let eps = 1e-4 / p.len() as f64;
    let mut kl = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        if a > 0.0 {
            let pa = a / sp;
            let qb = (b / sq).max(eps);
            kl += pa * (pa / qb).ln();
        }
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::qparams::QParams;
    use crate::recipe::ActivationType;

    /// Minmax first.
    const ALL_ALGOS: [ActivationAlgo; 6] = [
        ActivationAlgo::Minmax,
        ActivationAlgo::Entropy,
        ActivationAlgo::Mse,
        ActivationAlgo::Percentile,
        ActivationAlgo::Ifmr,
        ActivationAlgo::Hfmg,
    ];

    fn cfg(algo: ActivationAlgo, symmetric: bool) -> ActivationConfig {
        ActivationConfig {
            algo,
            symmetric,
            dtype: ActivationType::Int8,
            percentile: 99.9,
            bins: 2048,
            search_range: [0.7, 1.3],
            search_step: 0.01,
        }
    }

    /// Gaussian-like bulk in [-1, 1] plus a few large outliers.
    fn with_outliers() -> Observer {
        let mut o = Observer::new(2048, false);
        let mut state = 12345u64;
        let mut values: Vec<f32> = (0..200_000)
            .map(|_| {
                let mut s = 0.0;
                for _ in 0..4 {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    s += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                s * 0.5
            })
            .collect();
        values.extend([40.0, -35.0, 38.0]);
        o.observe(&values, &[values.len()]);
        o
    }

    #[test]
    fn searches_clip_outliers_minmax_does_not() {
        let o = with_outliers();
        let (lo, hi) = choose_range(&o, &cfg(ActivationAlgo::Minmax, false), IntGrid::INT8);
        assert_eq!((lo, hi), (-35.0, 40.0));
        for &algo in &ALL_ALGOS[1..] {
            // every search but minmax
            for symmetric in [false, true] {
                let (lo, hi) = choose_range(&o, &cfg(algo, symmetric), IntGrid::INT8);
                // MSE and HFMG weigh the outliers' clipping error against the
                // bulk's rounding error, so they clip less than the
                // distribution-shape searches.
                let bound = match algo {
                    ActivationAlgo::Mse | ActivationAlgo::Hfmg => 36.0,
                    _ => 10.0,
                };
                assert!(
                    hi < bound && lo > -bound && hi > 0.5,
                    "{algo:?} symmetric={symmetric}: [{lo}, {hi}]"
                );
                if symmetric {
                    assert_eq!(lo, -hi);
                }
            }
        }
    }

    #[test]
    fn searches_beat_minmax_on_the_error_they_estimate() {
        let o = with_outliers();
        let e = |(lo, hi): (f64, f64)| quantization_error(&o.signed, lo, hi, 255);
        let minmax = e(choose_range(
            &o,
            &cfg(ActivationAlgo::Minmax, false),
            IntGrid::INT8,
        ));
        for algo in [ActivationAlgo::Mse, ActivationAlgo::Hfmg] {
            let r = e(choose_range(&o, &cfg(algo, false), IntGrid::INT8));
            assert!(r < minmax * 0.8, "{algo:?}: {r} vs minmax {minmax}");
        }
        // IFMR searches around the percentile clip: never worse than it.
        let ifmr = e(choose_range(
            &o,
            &cfg(ActivationAlgo::Ifmr, false),
            IntGrid::INT8,
        ));
        let pct = e(choose_range(
            &o,
            &cfg(ActivationAlgo::Percentile, false),
            IntGrid::INT8,
        ));
        assert!(ifmr <= pct, "ifmr {ifmr} vs percentile {pct}");
    }

    #[test]
    fn relu_outputs_keep_zero_as_lower_bound() {
        let v: Vec<f32> = (0..10_000).map(|i| (i % 100) as f32 / 10.0).collect();
        for algo in ALL_ALGOS {
            for symmetric in [false, true] {
                // only the histograms calibration fills for this setting
                let mut o =
                    Observer::filling(2048, false, histograms_needed(&cfg(algo, symmetric)));
                o.observe(&v, &[v.len()]);
                for grid in [IntGrid::INT8, IntGrid::UINT8] {
                    let (lo, hi) = choose_range(&o, &cfg(algo, symmetric), grid);
                    assert_eq!(lo, 0.0, "{algo:?} symmetric {symmetric}");
                    assert!(hi > 8.0 && hi <= 10.0 * 1.3 + 1e-9, "{algo:?}: {hi}");
                }
            }
        }
    }

    #[test]
    fn a_late_zero_keeps_lo_at_zero() {
        // The first batch's minimum is above 0, so the histograms start
        // there; a later batch reaching 0 grows them by whole bins, and
        // their lower edge ends up a little below 0.
        let first: Vec<f32> = (0..1000).map(|i| 0.5 + (i % 100) as f32 / 10.0).collect();
        let later: Vec<f32> = (0..1000).map(|i| (i % 100) as f32 / 20.0).collect();
        for algo in ALL_ALGOS {
            for symmetric in [false, true] {
                let mut o = Observer::filling(256, false, histograms_needed(&cfg(algo, symmetric)));
                o.observe(&first, &[first.len()]);
                o.observe(&later, &[later.len()]);
                let (lo, hi) = choose_range(&o, &cfg(algo, symmetric), IntGrid::UINT8);
                assert_eq!(lo, 0.0, "{algo:?} symmetric {symmetric}: [{lo}, {hi}]");
                let p = QParams::for_activation(lo, hi, IntGrid::UINT8, symmetric);
                assert_eq!(p.zero_point, 0, "{algo:?} symmetric {symmetric}");
            }
        }
    }

    #[test]
    fn unseen_or_constant_tensors_get_a_valid_range() {
        let o = Observer::new(256, false);
        assert_eq!(
            choose_range(&o, &cfg(ActivationAlgo::Entropy, false), IntGrid::INT8),
            (0.0, 0.0)
        );
        let mut o = Observer::new(256, false);
        o.observe(&[0.0; 16], &[16]);
        let (lo, hi) = choose_range(&o, &cfg(ActivationAlgo::Hfmg, false), IntGrid::INT8);
        assert!(lo <= 0.0 && hi >= 0.0);
    }
}
