//! BatchNormalization with batch statistics (training) as a CPU candle custom op, forward and
//! backward, for `x: [N, C, ...]` (f32/f64): two passes over memory forward (statistics, then
//! `y = a_c * x + b_c`) and two backward (the parameter gradients' sums, then `dx`), where
//! candle's generic reductions over non-trailing axes made a training step's BatchNorm cost
//! more than its convolutions. The forward's statistics are kept with the op (`BatchStats`)
//! for the returned mean and variance and for the backward, which does not compute them again.
//!
//! Statistics are accumulated in f64 per channel (parallel over channels); the element-wise
//! passes run in parallel over `[n, c]` planes. Backward, with `xh = (x - mean) * inv_std` and
//! `M` values per channel: `dbeta = sum(gy)`, `dgamma = sum(gy * xh)`,
//! `dx = gamma * inv_std / M * (M * gy - dbeta - xh * dgamma)`.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex, MutexGuard};

use super::contiguous_slice;

/// The statistics of one forward's batch, per channel, kept for its outputs and backward.
struct BatchStats {
    mean: Vec<f64>,
    /// Biased.
    var: Vec<f64>,
    inv_std: Vec<f64>,
}

/// Where a `BnTrain` op leaves its forward's statistics.
type StatsCell = Arc<Mutex<Option<Arc<BatchStats>>>>;

/// The value behind a lock that the ops of one step share (an error if a panic poisoned it).
fn locked<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("batch_norm_train: a poisoned lock".into()))
}

/// The statistics a forward left in `cell`.
fn kept_stats(cell: &StatsCell) -> Result<Arc<BatchStats>> {
    let kept = locked(cell)?.clone();
    kept.ok_or_else(|| candle_core::Error::Msg("batch_norm_train: no forward ran".into()))
}

/// `(y, batch mean, batch variance)` of BatchNormalization in training mode; `y` is
/// differentiable in `x`, `gamma` and `beta`, the statistics are detached (biased variance).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let ops = [x, gamma, beta];
    if ops
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != x.dtype())
        || !matches!(x.dtype(), DType::F32 | DType::F64)
    {
        bail!("batch_norm_train: f32 or f64 CPU operands of one dtype")
    }
    let shape = Planes::of(x.dims())?;
    if gamma.elem_count() != shape.c || beta.elem_count() != shape.c {
        bail!(
            "batch_norm_train: scale and bias need {} elements (input {:?})",
            shape.c,
            x.dims()
        )
    }
    let (x, gamma, beta) = (
        x.contiguous()?,
        gamma.flatten_all()?.contiguous()?,
        beta.flatten_all()?.contiguous()?,
    );
    let cell = StatsCell::default();
    let y = x.apply_op3(
        &gamma,
        &beta,
        BnTrain {
            eps,
            stats: cell.clone(),
        },
    )?;
    let stats = kept_stats(&cell)?;
    let channel = |v: &[f64]| Tensor::new(v, x.device())?.to_dtype(x.dtype());
    Ok((y, channel(&stats.mean)?, channel(&stats.var)?))
}

/// `x: [N, C, rest..]` seen as `N * C` planes of `inner` values.
#[derive(Clone, Copy)]
struct Planes {
    c: usize,
    inner: usize,
    count: usize,
}

impl Planes {
    fn of(dims: &[usize]) -> Result<Self> {
        if dims.len() < 2 || dims[1] == 0 {
            bail!("batch_norm_train: input {dims:?} has no channel axis")
        }
        let inner = dims[2..].iter().product();
        Ok(Planes {
            c: dims[1],
            inner,
            count: dims[0] * dims[1],
        })
    }

    /// Values per channel.
    fn m(&self) -> usize {
        self.count / self.c * self.inner
    }
}

/// Two sums `(sum(f(x, g).0), sum(f(x, g).1))` over `xs` and `gs` together (`gs` may be
/// `xs` again), in f64 and 8 independent lanes each: the compiler vectorizes it (a single
/// running sum is one long chain of dependent additions), and the order of the additions is
/// the same on every run.
#[inline(always)]
fn lane_sums<T: WithDType>(xs: &[T], gs: &[T], f: impl Fn(f64, f64) -> (f64, f64)) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; 8], [0f64; 8]);
    let (mut xc, mut gc) = (xs.chunks_exact(8), gs.chunks_exact(8));
    for (x8, g8) in (&mut xc).zip(&mut gc) {
        for l in 0..8 {
            let (u, v) = f(x8[l].to_f64(), g8[l].to_f64());
            a[l] += u;
            b[l] += v;
        }
    }
    let (mut ta, mut tb) = (0.0, 0.0);
    for (x, g) in xc.remainder().iter().zip(gc.remainder()) {
        let (u, v) = f(x.to_f64(), g.to_f64());
        ta += u;
        tb += v;
    }
    (a.iter().sum::<f64>() + ta, b.iter().sum::<f64>() + tb)
}

/// For each channel, the two sums of `f(plane)` over the planes of that channel.
fn per_channel2(p: Planes, f: impl Fn(usize) -> (f64, f64) + Sync) -> (Vec<f64>, Vec<f64>) {
    (0..p.c)
        .into_par_iter()
        .map(|c| {
            (c..p.count)
                .step_by(p.c)
                .map(&f)
                .fold((0.0, 0.0), |(a, b), (u, v)| (a + u, b + v))
        })
        .unzip()
}

/// Mean and (biased) variance of each channel, in one pass: sums of `x - s` and its square
/// with `s` the channel's first value (in f64, the shift keeps the cancellation in
/// `E[d^2] - E[d]^2` harmless for any realistic spread).
fn moments<T: WithDType>(p: Planes, x: &[T]) -> (Vec<f64>, Vec<f64>) {
    let plane = |i: usize| &x[i * p.inner..(i + 1) * p.inner];
    let m = p.m().max(1) as f64;
    let shift = |c: usize| x.get(c * p.inner).map_or(0.0, |v| v.to_f64());
    let (sums, squares) = per_channel2(p, |i| {
        let s = shift(i % p.c);
        lane_sums(plane(i), plane(i), |v, _| (v - s, (v - s) * (v - s)))
    });
    let mean = (0..p.c).map(|c| shift(c) + sums[c] / m).collect();
    let var = (0..p.c)
        .map(|c| (squares[c] / m - (sums[c] / m).powi(2)).max(0.0))
        .collect();
    (mean, var)
}

/// `out[plane i] = a[c] * x + b[c]` for every plane, in parallel.
fn affine<T: WithDType>(p: Planes, x: &[T], a: &[f64], b: &[f64]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(p.inner.max(1))
        .zip(x.par_chunks(p.inner.max(1)))
        .enumerate()
        .for_each(|(i, (o, x))| {
            let (a, b) = (T::from_f64(a[i % p.c]), T::from_f64(b[i % p.c]));
            for (o, &x) in o.iter_mut().zip(x) {
                *o = a * x + b;
            }
        });
    out
}

fn fwd<T: WithDType>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    p: Planes,
    eps: f64,
) -> (Vec<T>, BatchStats) {
    let (mean, var) = moments(p, x);
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let a: Vec<f64> = (0..p.c).map(|c| gamma[c].to_f64() * inv_std[c]).collect();
    let b: Vec<f64> = (0..p.c)
        .map(|c| beta[c].to_f64() - mean[c] * a[c])
        .collect();
    let y = affine(p, x, &a, &b);
    (y, BatchStats { mean, var, inv_std })
}

/// `(dgamma, dbeta)` as sums over each channel, with the forward's statistics of `x`.
fn param_grads<T: WithDType>(x: &[T], gy: &[T], p: Planes, st: &BatchStats) -> ParamGrads {
    let range = |i: usize| i * p.inner..(i + 1) * p.inner;
    let (dbeta, dgamma) = per_channel2(p, |i| {
        let mu = st.mean[i % p.c];
        lane_sums(&gy[range(i)], &x[range(i)], |g, x| (g, (x - mu) * g))
    });
    let dgamma = dgamma
        .iter()
        .zip(&st.inv_std)
        .map(|(d, is)| d * is)
        .collect();
    (dgamma, dbeta)
}

/// `(dgamma, dbeta)` per channel, in f64.
type ParamGrads = (Vec<f64>, Vec<f64>);

fn dx<T: WithDType>(
    (x, gamma, gy): (&[T], &[T], &[T]),
    p: Planes,
    st: &BatchStats,
    (dgamma, dbeta): &ParamGrads,
) -> Vec<T> {
    let (mean, inv_std) = (&st.mean, &st.inv_std);
    let m = p.m().max(1) as f64;
    // dx = k * (gy - dbeta / M - xh * dgamma / M), k = gamma * inv_std, xh = (x - mean) * inv_std
    let mut out = vec![T::zero(); x.len()];
    let chunk = p.inner.max(1);
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
        let c = i % p.c;
        let k = gamma[c].to_f64() * inv_std[c];
        let (shift, slope) = (dbeta[c] / m, dgamma[c] / m * inv_std[c]);
        let (xs, gs) = (
            &x[i * chunk..(i + 1) * chunk],
            &gy[i * chunk..(i + 1) * chunk],
        );
        for ((o, x), g) in o.iter_mut().zip(xs).zip(gs) {
            *o = T::from_f64(k * (g.to_f64() - shift - (x.to_f64() - mean[c]) * slope));
        }
    });
    out
}

/// `(x, gamma, beta) -> y`; the forward leaves its statistics in `stats`.
struct BnTrain {
    eps: f64,
    stats: StatsCell,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "amct-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims())?;
        let kept;
        let out = dispatch_float_storage!("batch_norm_train", s1, |T| {
            let (y, st) = fwd::<T>(
                contiguous_slice(s1, l1, "batch_norm_train operand")?,
                contiguous_slice(s2, l2, "batch_norm_train operand")?,
                contiguous_slice(s3, l3, "batch_norm_train operand")?,
                p,
                self.eps,
            );
            kept = Some(Arc::new(st));
            y
        });
        *locked(&self.stats)? = kept;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let grads = Arc::new(Mutex::new(None));
        let stats = kept_stats(&self.stats)?;
        let params = x.apply_op2_no_bwd(
            &gy,
            &BnGradParams {
                stats: stats.clone(),
                sums: grads.clone(),
            },
        )?;
        let sums = locked(&grads)?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("batch_norm_train: no sums".into()))?;
        let dx = x.apply_op3_no_bwd(gamma, &gy, &BnGradX { stats, sums })?;
        Ok((Some(dx), Some(params.get(0)?), Some(params.get(1)?)))
    }
}

/// `(x, gamma, gy) -> dx` from the forward's statistics and the parameter gradients.
struct BnGradX {
    stats: Arc<BatchStats>,
    sums: Arc<ParamGrads>,
}

impl CustomOp3 for BnGradX {
    fn name(&self) -> &'static str {
        "amct-batch-norm-train-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims())?;
        let out = dispatch_float_storage!("batch_norm_train", s1, |T| dx::<T>(
            (
                contiguous_slice(s1, l1, "batch_norm_train operand")?,
                contiguous_slice(s2, l2, "batch_norm_train operand")?,
                contiguous_slice(s3, l3, "batch_norm_train operand")?,
            ),
            p,
            &self.stats,
            &self.sums,
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// `(x, gy) -> [[dgamma..], [dbeta..]]`, also left in f64 in `sums` for `BnGradX`.
struct BnGradParams {
    stats: Arc<BatchStats>,
    sums: Arc<Mutex<Option<Arc<ParamGrads>>>>,
}

impl CustomOp2 for BnGradParams {
    fn name(&self) -> &'static str {
        "amct-batch-norm-train-grad-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(l1.dims())?;
        let sums;
        let out = dispatch_float_storage!("batch_norm_train", s1, |T| {
            let (dg, db) = param_grads::<T>(
                contiguous_slice(s1, l1, "batch_norm_train operand")?,
                contiguous_slice(s2, l2, "batch_norm_train operand")?,
                p,
                &self.stats,
            );
            let out = dg.iter().chain(&db).map(|&v| T::from_f64(v)).collect();
            sums = Some(Arc::new((dg, db)));
            out
        });
        *locked(&self.sums)? = sums;
        Ok((out, Shape::from((2, p.c))))
    }
}

#[cfg(test)]
#[path = "batch_norm_tests.rs"]
mod tests;
