//! BatchNormalization with batch statistics (training) as a CPU candle custom op, forward and
//! backward, for `x: [N, C, ...]` (f32/f64): two passes over memory forward (statistics, then
//! `y = a_c * x + b_c`) and two backward, where candle's generic reductions over non-trailing
//! axes made a training step's BatchNorm cost more than its convolutions.
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

use super::contiguous_slice;

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
    let y = x.apply_op3(&gamma, &beta, BnTrain { eps })?;
    let stats = x.detach().apply_op1_no_bwd(&BnStats)?;
    Ok((y, stats.get(0)?, stats.get(1)?))
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

/// Mean and inverse standard deviation of each channel.
fn stats<T: WithDType>(p: Planes, x: &[T], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (mean, var) = moments(p, x);
    (mean, var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect())
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

fn fwd<T: WithDType>(x: &[T], gamma: &[T], beta: &[T], p: Planes, eps: f64) -> Vec<T> {
    let (mean, inv_std) = stats(p, x, eps);
    let a: Vec<f64> = (0..p.c).map(|c| gamma[c].to_f64() * inv_std[c]).collect();
    let b: Vec<f64> = (0..p.c)
        .map(|c| beta[c].to_f64() - mean[c] * a[c])
        .collect();
    affine(p, x, &a, &b)
}

/// `(dgamma, dbeta)` as sums over each channel, with the statistics of `x`.
fn param_grads<T: WithDType>(
    x: &[T],
    gy: &[T],
    p: Planes,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mean, inv_std) = stats(p, x, eps);
    let range = |i: usize| i * p.inner..(i + 1) * p.inner;
    let (dbeta, dgamma) = per_channel2(p, |i| {
        let mu = mean[i % p.c];
        lane_sums(&gy[range(i)], &x[range(i)], |g, x| (g, (x - mu) * g))
    });
    let dgamma = dgamma.iter().zip(&inv_std).map(|(d, is)| d * is).collect();
    (dgamma, dbeta, mean, inv_std)
}

fn dx<T: WithDType>(x: &[T], gamma: &[T], gy: &[T], p: Planes, eps: f64) -> Vec<T> {
    let (dgamma, dbeta, mean, inv_std) = param_grads(x, gy, p, eps);
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

/// `(x, gamma, beta) -> y`.
struct BnTrain {
    eps: f64,
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
        let out = dispatch_float_storage!("batch_norm_train", s1, |T| fwd::<T>(
            contiguous_slice(s1, l1, "batch_norm_train operand")?,
            contiguous_slice(s2, l2, "batch_norm_train operand")?,
            contiguous_slice(s3, l3, "batch_norm_train operand")?,
            p,
            self.eps
        ));
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
        let dx = x.apply_op3_no_bwd(gamma, &gy, &BnGradX { eps: self.eps })?;
        let params = x.apply_op2_no_bwd(&gy, &BnGradParams { eps: self.eps })?;
        Ok((Some(dx), Some(params.get(0)?), Some(params.get(1)?)))
    }
}

/// `(x, gamma, gy) -> dx`.
struct BnGradX {
    eps: f64,
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
            contiguous_slice(s1, l1, "batch_norm_train operand")?,
            contiguous_slice(s2, l2, "batch_norm_train operand")?,
            contiguous_slice(s3, l3, "batch_norm_train operand")?,
            p,
            self.eps
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// `(x, gy) -> [[dgamma..], [dbeta..]]`.
struct BnGradParams {
    eps: f64,
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
        let out = dispatch_float_storage!("batch_norm_train", s1, |T| {
            let (dg, db, _, _) = param_grads::<T>(
                contiguous_slice(s1, l1, "batch_norm_train operand")?,
                contiguous_slice(s2, l2, "batch_norm_train operand")?,
                p,
                self.eps,
            );
            dg.into_iter().chain(db).map(T::from_f64).collect()
        });
        Ok((out, Shape::from((2, p.c))))
    }
}

/// `x -> [[mean..], [variance..]]` (biased), not differentiated.
struct BnStats;

impl candle_core::CustomOp1 for BnStats {
    fn name(&self) -> &'static str {
        "amct-batch-norm-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = Planes::of(l.dims())?;
        let out = dispatch_float_storage!("batch_norm_train", s, |T| {
            let (mean, var) = moments::<T>(p, contiguous_slice(s, l, "batch_norm_train operand")?);
            mean.into_iter().chain(var).map(T::from_f64).collect()
        });
        Ok((out, Shape::from((2, p.c))))
    }
}

#[cfg(test)]
#[path = "batch_norm_tests.rs"]
mod tests;
