//! Helpers shared by the kernels' tests: a small deterministic generator and a relative
//! difference of tensors.

use candle_core::{DType, Result, Tensor};

/// Small deterministic generator (no `rand` dependency): values in [-1, 1).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// `vec(n)` as f32 values.
    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        self.vec(n).into_iter().map(|v| v as f32).collect()
    }
}

/// The shortest of `runs` timings of `f`, in milliseconds (the timing probes).
pub fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::MAX, f64::min)
}

/// Largest `|a - b|`, relative to `max(1, max |b|)`.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    Ok(a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}
