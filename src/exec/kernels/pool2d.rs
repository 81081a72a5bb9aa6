//! ONNX (opset 19) `MaxPool` / `AveragePool` over NCHW tensors, with a correct backward.
//!
//! Semantics follow onnxruntime's CPU kernels (checked against onnxruntime 1.32 on 1500 random
//! f32 configurations, dilation and ceil_mode included):
//! * Output size per spatial dim: `num = in + pad_begin + pad_end - (dilation * (kernel - 1) + 1)`,
//!   `out = num / stride + 1`; with `ceil_mode` it is `ceil(num / stride) + 1`, minus one if the
//!   last window would start at or after `in + pad_begin` (every window starts inside the input
//!   or the begin padding). `num < 0`, an empty H or W, a zero kernel/stride/dilation or a pad
//!   `>= kernel` is an error (onnxruntime rejects the latter two too).
//! * Max ignores padding cells (they act as -inf). The result is the first maximum in row-major
//!   window order (a later element must be strictly greater to replace it), and the backward
//!   routes the whole output gradient to exactly that element.
//! * Average divides the sum of the valid (in-input) cells by their number when
//!   `count_include_pad == false`. With `count_include_pad == true` it divides by the number of
//!   window taps that lie inside the explicitly padded extent `[-pad_begin, in + pad_end)`, per
//!   dim: the extra cells that `ceil_mode` adds beyond the explicit pads are NOT counted (this
//!   is what onnxruntime does; PyTorch differs).
//! * A window can hold no input cell at all (only with dilation): max then yields the dtype's
//!   lowest finite value and average yields 0, as onnxruntime does; such windows get no gradient.
//!
//! On CPU both ops are candle custom ops (F32, F64, F16, BF16; forward window sums accumulate in
//! f64) whose backward passes are custom ops too, parallelised over the N*C planes. Those have
//! a backward as well (second order, when candle runs with `CANDLE_GRAD_DO_NOT_DETACH=1`; by
//! default candle detaches gradients and never calls it). Other devices use a
//! composite of candle primitives ([`max_pool2d_composite`], [`avg_pool2d_composite`]) with
//! generic autograd; there, on exact ties inside a max window, candle's `maximum` backward splits
//! the gradient between the tied elements instead of routing it to the first one, and an input
//! equal to the dtype's lowest value ties with the padding.

use candle_core::WithDType;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;

/// Attributes of a 2-D pooling node (ONNX naming; `pads` is `[top, left, bottom, right]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pool2dParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[h_begin, w_begin, h_end, w_end]`, the ONNX order.
    pub pads: [usize; 4],
    pub ceil_mode: bool,
    /// AveragePool only.
    pub count_include_pad: bool,
}

impl Pool2dParams {
    /// Kernel and stride given; dilation 1, no padding, floor mode, padding excluded.
    pub fn new(kernel: [usize; 2], stride: [usize; 2]) -> Self {
        Self {
            kernel,
            stride,
            dilation: [1, 1],
            pads: [0; 4],
            ceil_mode: false,
            count_include_pad: false,
        }
    }

    /// Output `(height, width)` for an input of `h x w`, with onnxruntime's rules.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        Ok((self.out_len(0, h)?, self.out_len(1, w)?))
    }

    fn out_len(&self, dim: usize, len: usize) -> Result<usize> {
        let (k, s, d) = (self.kernel[dim], self.stride[dim], self.dilation[dim]);
        let (pb, pe) = (self.pads[dim], self.pads[dim + 2]);
        if k == 0 || s == 0 || d == 0 {
            bail!("pool2d: kernel, stride and dilation must be >= 1, got {self:?}")
        }
        if pb >= k || pe >= k {
            bail!("pool2d: pads must be smaller than the kernel, got {self:?}")
        }
        if len == 0 {
            bail!("pool2d: empty spatial input dimension")
        }
        let extent = d * (k - 1) + 1;
        let padded = len + pb + pe;
        if padded < extent {
            bail!("pool2d: window extent {extent} exceeds padded input {padded} ({self:?})")
        }
        let num = padded - extent;
        let mut out = num / s + 1;
        if self.ceil_mode {
            out = num.div_ceil(s) + 1;
            if (out - 1) * s >= len + pb {
                out -= 1;
            }
        }
        Ok(out) // >= 1: `num >= 0`, and with ceil_mode window 0 starts at `-pb < len`
    }
}

/// ONNX MaxPool on `x: [N, C, H, W]`.
pub fn max_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
    pool(x, p, Kind::Max)
}

/// ONNX AveragePool on `x: [N, C, H, W]`.
pub fn avg_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
    pool(x, p, Kind::Avg)
}

fn pool(x: &Tensor, p: &Pool2dParams, kind: Kind) -> Result<Tensor> {
    let out = Geom::new(p, x.dims())?.out;
    match (x.device().is_cpu(), kind) {
        (true, _) => x.apply_op1(PoolOp { p: *p, out, kind }),
        (false, Kind::Max) => max_pool2d_composite(x, p),
        (false, Kind::Avg) => avg_pool2d_composite(x, p),
    }
}

/// Valid taps of one output position along one dim: `n` input cells `lo, lo + d, ...`, and
/// `incl` taps inside the explicitly padded extent (the `count_include_pad` divisor).
#[derive(Debug, Clone, Copy)]
struct Win {
    lo: usize,
    n: usize,
    incl: usize,
}

fn dim_windows(p: &Pool2dParams, dim: usize, len: usize, out: usize) -> Vec<Win> {
    let (k, s, d) = (p.kernel[dim], p.stride[dim], p.dilation[dim]);
    let (pb, pe) = (p.pads[dim], p.pads[dim + 2]);
    (0..out)
        .map(|o| {
            let start = o * s; // position in padded coordinates (input starts at `pb`)
            let skip = pb.saturating_sub(start).div_ceil(d); // taps in the begin padding
            let lo = start + skip * d; // first tap at or after `pb`
            let avail = (pb + len).saturating_sub(lo).div_ceil(d);
            let n = avail.min(k.saturating_sub(skip));
            let incl = (pb + len + pe).saturating_sub(start).div_ceil(d).min(k);
            Win {
                lo: lo.saturating_sub(pb),
                n,
                incl,
            }
        })
        .collect()
}

/// Geometry of one pooling call, shared by all kernels.
struct Geom {
    nc: (usize, usize),
    inp: (usize, usize),
    out: (usize, usize),
    dil: (usize, usize),
    rows: Vec<Win>,
    cols: Vec<Win>,
}

impl Geom {
    fn new(p: &Pool2dParams, dims: &[usize]) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            bail!("pool2d: expected a [N, C, H, W] input, got shape {dims:?}")
        };
        let (oh, ow) = p.output_hw(h, w)?;
        Ok(Self {
            nc: (n, c),
            inp: (h, w),
            out: (oh, ow),
            dil: (p.dilation[0], p.dilation[1]),
            rows: dim_windows(p, 0, h, oh),
            cols: dim_windows(p, 1, w, ow),
        })
    }

    fn in_plane(&self) -> usize {
        self.inp.0 * self.inp.1
    }

    fn out_plane(&self) -> usize {
        self.out.0 * self.out.1
    }

    fn planes(&self) -> usize {
        self.nc.0 * self.nc.1
    }

    fn shape(&self, (h, w): (usize, usize)) -> Shape {
        Shape::from((self.nc.0, self.nc.1, h, w))
    }

    fn divisor(&self, r: Win, c: Win, include_pad: bool) -> f64 {
        let d = if include_pad {
            r.incl * c.incl
        } else {
            r.n * c.n
        };
        d.max(1) as f64
    }

    /// Calls `f` on the input offsets (within a plane) of the valid cells of window `(r, c)`,
    /// in row-major order.
    #[inline(always)]
    fn for_cells(&self, r: Win, c: Win, mut f: impl FnMut(usize)) {
        let (w, (dh, dw)) = (self.inp.1, self.dil);
        for a in 0..r.n {
            let row = (r.lo + a * dh) * w + c.lo;
            for b in 0..c.n {
                f(row + b * dw)
            }
        }
    }

    /// The first maximum of window `(r, c)` in `x` (one plane), if the window has a valid cell.
    #[inline(always)]
    fn argmax<T: PoolFloat>(&self, x: &[T], r: Win, c: Win) -> Option<usize> {
        if r.n == 0 || c.n == 0 {
            return None;
        }
        let (w, (dh, dw)) = (self.inp.1, self.dil);
        let mut at = r.lo * w + c.lo;
        let mut best = x[at];
        for a in 0..r.n {
            let row = (r.lo + a * dh) * w + c.lo;
            for b in 0..c.n {
                let i = row + b * dw;
                if x[i] > best {
                    best = x[i];
                    at = i;
                }
            }
        }
        Some(at)
    }

    fn windows(&self) -> impl Iterator<Item = (usize, Win, Win)> + '_ {
        let ow = self.out.1;
        self.rows.iter().enumerate().flat_map(move |(oh, &r)| {
            self.cols
                .iter()
                .enumerate()
                .map(move |(o, &c)| (oh * ow + o, r, c))
        })
    }
}

/// Float element types the CPU kernels support.
trait PoolFloat: WithDType {
    const LOWEST: Self;
}
macro_rules! pool_float {
    ($($t:ty),*) => {$(impl PoolFloat for $t { const LOWEST: Self = <$t>::MIN; })*};
}
pool_float!(f32, f64, f16, bf16);

fn lowest(dtype: DType) -> Result<f64> {
    Ok(match dtype {
        DType::F32 => f32::MIN as f64,
        DType::F64 => f64::MIN,
        DType::F16 => f16::MIN.to_f64(),
        DType::BF16 => bf16::MIN.to_f64(),
        d => bail!("pool2d: unsupported dtype {d:?}"),
    })
}

/// Row-major data of a 4-D CPU tensor, copied only when the layout is not contiguous.
fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = T::cpu_storage_as_slice(s)?;
    if let Some((a, b)) = l.contiguous_offsets() {
        return match data.get(a..b) {
            Some(d) => Ok(Cow::Borrowed(d)),
            None => bail!("pool2d: layout out of storage bounds"),
        };
    }
    let (dims, st) = (l.dims(), l.stride());
    let (&[d0, d1, d2, d3], &[s0, s1, s2, s3]) = (dims, st) else {
        bail!("pool2d: expected a 4-D layout, got {dims:?}")
    };
    let mut out = Vec::with_capacity(d0 * d1 * d2 * d3);
    for i0 in 0..d0 {
        for i1 in 0..d1 {
            for i2 in 0..d2 {
                let base = l.start_offset() + i0 * s0 + i1 * s1 + i2 * s2;
                for i3 in 0..d3 {
                    match data.get(base + i3 * s3) {
                        Some(&v) => out.push(v),
                        None => bail!("pool2d: layout out of storage bounds"),
                    }
                }
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// Runs `f(plane_index, out_plane)` over the `out_len`-sized planes of `out`, split across
/// the rayon pool when the work (`cost` per plane) is large enough to pay for it.
fn for_each_plane<T: Send>(
    out: &mut [T],
    out_len: usize,
    cost: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if out_len == 0 {
        return;
    }
    let planes = out.len() / out_len;
    let threads = rayon::current_num_threads().min(planes);
    if threads <= 1 || planes.saturating_mul(cost) < 1 << 16 {
        out.chunks_mut(out_len)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
        return;
    }
    let per = planes.div_ceil(threads);
    out.par_chunks_mut(per * out_len)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (j, o) in chunk.chunks_mut(out_len).enumerate() {
                f(ci * per + j, o)
            }
        });
}

fn max_fwd<T: PoolFloat>(x: &[T], g: &Geom) -> Vec<T> {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let (w, dense) = (g.inp.1, g.dil == (1, 1));
    let mut y = vec![T::LOWEST; g.planes() * op];
    for_each_plane(&mut y, op, ip.max(op), |pl, y| {
        let x = &x[pl * ip..(pl + 1) * ip];
        for (y_row, &r) in y.chunks_mut(g.out.1).zip(&g.rows) {
            for (y, &c) in y_row.iter_mut().zip(&g.cols) {
                let at = r.lo * w + c.lo;
                *y = match (dense, r.n, c.n) {
                    // Whole 3x3 and 2x2 windows (ResNet's stem, VGG): fixed trip counts.
                    (true, 3, 3) => window_max::<T, 3, 3>(x, w, at),
                    (true, 2, 2) => window_max::<T, 2, 2>(x, w, at),
                    _ => match g.argmax(x, r, c) {
                        Some(i) => x[i],
                        None => continue,
                    },
                };
            }
        }
    });
    y
}

/// The first maximum of the `KH x KW` window whose corner is `x[at]` (rows `w` apart), in
/// `Geom::argmax`'s order, so the same value (NaN included) for the same window.
#[inline(always)]
fn window_max<T: PoolFloat, const KH: usize, const KW: usize>(x: &[T], w: usize, at: usize) -> T {
    let win = &x[at..at + (KH - 1) * w + KW];
    let mut best = win[0];
    for a in 0..KH {
        let row = &win[a * w..a * w + KW];
        for &v in row {
            if v > best {
                best = v;
            }
        }
    }
    best
}

/// `scatter`: adds `v[o]` (output-shaped) to the argmax cell of window `o` (input-shaped
/// result); otherwise gathers `v[argmax]` (input-shaped `v`) into an output-shaped result.
fn max_route<T: PoolFloat>(x: &[T], v: &[T], g: &Geom, scatter: bool) -> Vec<T> {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let res_len = if scatter { ip } else { op };
    let mut res = vec![T::zero(); g.planes() * res_len];
    for_each_plane(&mut res, res_len, ip.max(op), |pl, res| {
        let x = &x[pl * ip..(pl + 1) * ip];
        for (o, r, c) in g.windows() {
            if let Some(i) = g.argmax(x, r, c) {
                if scatter {
                    res[i] += v[pl * op + o];
                } else {
                    res[o] = v[pl * ip + i];
                }
            }
        }
    });
    res
}

fn avg_fwd<T: PoolFloat>(x: &[T], g: &Geom, include_pad: bool) -> Vec<T> {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let mut y = vec![T::zero(); g.planes() * op];
    for_each_plane(&mut y, op, ip.max(op), |pl, y| {
        let x = &x[pl * ip..(pl + 1) * ip];
        for (o, r, c) in g.windows() {
            let mut sum = 0f64;
            g.for_cells(r, c, |i| sum += x[i].to_f64());
            y[o] = T::from_f64(sum / g.divisor(r, c, include_pad));
        }
    });
    y
}

/// Adjoint of [`avg_fwd`]: spreads `gy[o] / divisor` over the valid cells of window `o`.
fn avg_adjoint<T: PoolFloat>(gy: &[T], g: &Geom, include_pad: bool) -> Vec<T> {
    let (ip, op) = (g.in_plane(), g.out_plane());
    let mut gx = vec![T::zero(); g.planes() * ip];
    for_each_plane(&mut gx, ip, ip.max(op), |pl, gx| {
        for (o, r, c) in g.windows() {
            let v = T::from_f64(gy[pl * op + o].to_f64() / g.divisor(r, c, include_pad));
            g.for_cells(r, c, |i| gx[i] += v);
        }
    });
    gx
}

/// Calls `$f::<T>(...)` for the float element type of CPU storage `$s`.
macro_rules! float_dispatch {
    ($s:expr, $f:ident ( $($arg:expr),* )) => {
        match $s {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            CpuStorage::F16(_) => $f::<f16>($($arg),*),
            CpuStorage::BF16(_) => $f::<bf16>($($arg),*),
            _ => bail!("pool2d: only f32, f64, f16 and bf16 are supported"),
        }
    };
}

/// The geometry of input layout `l`, checked to give an `out`-sized output.
fn geom_of(p: &Pool2dParams, l: &Layout, out: (usize, usize)) -> Result<Geom> {
    let g = Geom::new(p, l.dims())?;
    if g.out != out {
        bail!("pool2d: input {:?} does not give output {out:?}", l.dims())
    }
    Ok(g)
}

/// Checks that `l` is `[N, C, hw.0, hw.1]` for the `(N, C)` of `g`.
fn expect_dims(l: &Layout, g: &Geom, hw: (usize, usize), what: &str) -> Result<()> {
    if l.shape() != &g.shape(hw) {
        bail!(
            "pool2d: {what} has shape {:?}, expected {:?}",
            l.dims(),
            g.shape(hw)
        )
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Max,
    Avg,
}

/// The forward op, `x -> y`.
struct PoolOp {
    p: Pool2dParams,
    out: (usize, usize),
    kind: Kind,
}

impl CustomOp1 for PoolOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Max => "amct-max-pool2d",
            Kind::Avg => "amct-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: PoolFloat>(
            op: &PoolOp,
            g: &Geom,
            s: &CpuStorage,
            l: &Layout,
        ) -> Result<CpuStorage> {
            let x = contiguous::<T>(s, l)?;
            Ok(T::to_cpu_storage_owned(match op.kind {
                Kind::Max => max_fwd(&x, g),
                Kind::Avg => avg_fwd(&x, g, op.p.count_include_pad),
            }))
        }
        let g = geom_of(&self.p, l, self.out)?;
        Ok((float_dispatch!(s, run(self, &g, s, l))?, g.shape(g.out)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (p, out) = (self.p, self.out);
        Ok(Some(match self.kind {
            Kind::Max => x.apply_op2(
                grad,
                MaxPoolRoute {
                    p,
                    out,
                    scatter: true,
                },
            )?,
            Kind::Avg => {
                let (_, _, h, w) = x.dims4()?;
                grad.apply_op1(AvgPoolAdjoint { p, inp: (h, w) })?
            }
        }))
    }
}

/// `(x, v)` -> `v` routed through the argmax cells of `x` (see [`max_route`]). The two
/// directions are adjoint to each other in `v`, which gives the backward of each; the result
/// does not depend differentiably on `x`.
struct MaxPoolRoute {
    p: Pool2dParams,
    out: (usize, usize),
    scatter: bool,
}

impl CustomOp2 for MaxPoolRoute {
    fn name(&self) -> &'static str {
        match self.scatter {
            true => "amct-max-pool2d-scatter",
            false => "amct-max-pool2d-gather",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        type Args<'a> = (&'a CpuStorage, &'a Layout, &'a CpuStorage, &'a Layout);
        fn run<T: PoolFloat>(
            scatter: bool,
            g: &Geom,
            (s1, l1, s2, l2): Args,
        ) -> Result<CpuStorage> {
            let (x, v) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
            Ok(T::to_cpu_storage_owned(max_route(&x, &v, g, scatter)))
        }
        let g = geom_of(&self.p, l1, self.out)?;
        let (v_hw, res_hw) = match self.scatter {
            true => (g.out, g.inp),
            false => (g.inp, g.out),
        };
        expect_dims(l2, &g, v_hw, "routed gradient")?;
        let res = float_dispatch!(s1, run(self.scatter, &g, (s1, l1, s2, l2)))?;
        Ok((res, g.shape(res_hw)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let adjoint = MaxPoolRoute {
            scatter: !self.scatter,
            ..*self
        };
        Ok((None, Some(x.apply_op2(grad, adjoint)?)))
    }
}

/// The adjoint (backward) of the average [`PoolOp`]: output-shaped gradient -> gradient of an
/// `inp`-sized input. Each is the other's backward.
struct AvgPoolAdjoint {
    p: Pool2dParams,
    inp: (usize, usize),
}

impl CustomOp1 for AvgPoolAdjoint {
    fn name(&self) -> &'static str {
        "amct-avg-pool2d-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn run<T: PoolFloat>(
            cip: bool,
            g: &Geom,
            s: &CpuStorage,
            l: &Layout,
        ) -> Result<CpuStorage> {
            Ok(T::to_cpu_storage_owned(avg_adjoint(
                &contiguous::<T>(s, l)?,
                g,
                cip,
            )))
        }
        let &[n, c, ..] = l.dims() else {
            bail!("pool2d: expected a 4-D gradient, got {:?}", l.dims())
        };
        let g = Geom::new(&self.p, &[n, c, self.inp.0, self.inp.1])?;
        expect_dims(l, &g, g.out, "pooled gradient")?;
        let cip = self.p.count_include_pad;
        Ok((float_dispatch!(s, run(cip, &g, s, l))?, g.shape(g.inp)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = grad.dims4()?;
        let out = self.p.output_hw(h, w)?;
        Ok(Some(grad.apply_op1(PoolOp {
            p: self.p,
            out,
            kind: Kind::Avg,
        })?))
    }
}

/// Pads `dim` of `x` with `before`/`after` cells of value `fill`.
fn pad_dim(x: &Tensor, dim: usize, before: usize, after: usize, fill: f64) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = len;
        Tensor::ones(dims, x.dtype(), x.device())?.affine(fill, 0.0)
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// Elements `start, start + step, ...` (`len` of them) of `dim`, via narrow + reshape.
fn strided(x: &Tensor, dim: usize, start: usize, len: usize, step: usize) -> Result<Tensor> {
    if step == 1 {
        return x.narrow(dim, start, len);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = len;
    dims.insert(dim + 1, step);
    x.narrow(dim, start, len * step)?
        .reshape(dims)?
        .narrow(dim + 1, 0, 1)?
        .squeeze(dim + 1)
}

/// Pads `x` with `fill` and folds the `kh * kw` strided tap views with `combine`.
fn fold_taps(
    x: &Tensor,
    p: &Pool2dParams,
    fill: f64,
    combine: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<(Tensor, Geom)> {
    let g = Geom::new(p, x.dims())?;
    let ((h, w), (oh, ow)) = (g.inp, g.out);
    // Rows needed by the last tap's narrow: (k - 1) * d + out * s, at least the explicit pads.
    let need_h = (p.kernel[0] - 1) * p.dilation[0] + oh * p.stride[0];
    let need_w = (p.kernel[1] - 1) * p.dilation[1] + ow * p.stride[1];
    let bottom = need_h.saturating_sub(p.pads[0] + h);
    let right = need_w.saturating_sub(p.pads[1] + w);
    let xp = pad_dim(x, 2, p.pads[0], bottom, fill)?;
    let xp = pad_dim(&xp, 3, p.pads[1], right, fill)?;
    let mut acc: Option<Tensor> = None;
    for i in 0..p.kernel[0] {
        let rows = strided(&xp, 2, i * p.dilation[0], oh, p.stride[0])?;
        for j in 0..p.kernel[1] {
            let tap = strided(&rows, 3, j * p.dilation[1], ow, p.stride[1])?;
            acc = Some(match acc {
                None => tap,
                Some(a) => combine(&a, &tap)?,
            });
        }
    }
    match acc {
        Some(a) => Ok((a, g)),
        None => bail!("pool2d: empty kernel"),
    }
}

/// Device-agnostic MaxPool from candle primitives (used off-CPU; see the module docs for ties).
pub(crate) fn max_pool2d_composite(x: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
    Ok(fold_taps(x, p, lowest(x.dtype())?, |a, b| a.maximum(b))?.0)
}

/// Device-agnostic AveragePool from candle primitives (used off-CPU).
pub(crate) fn avg_pool2d_composite(x: &Tensor, p: &Pool2dParams) -> Result<Tensor> {
    lowest(x.dtype())?; // same dtype support as the CPU path
    let (sum, g) = fold_taps(x, p, 0.0, |a, b| a + b)?;
    let div: Vec<f64> = g
        .windows()
        .map(|(_, r, c)| g.divisor(r, c, p.count_include_pad))
        .collect();
    let div = Tensor::from_vec(div, (1, 1, g.out.0, g.out.1), x.device())?.to_dtype(x.dtype())?;
    sum.broadcast_div(&div)
}

#[cfg(test)]
#[path = "pool2d_tests.rs"]
mod tests;
