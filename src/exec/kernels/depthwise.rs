//! Depthwise 2-D convolution (ONNX `Conv` with `group == C_in`) as a CPU candle custom op.
//!
//! `x: [N, C, H, W]`, `w: [C * M, 1, KH, KW]` (channel multiplier `M >= 1`: output channel `o`
//! reads input channel `o / M`), asymmetric pads, per-axis strides and dilations; the output is
//! `[N, C * M, OH, OW]` with `OH = (H + top + bottom - (dh * (KH - 1) + 1)) / sh + 1` (same for
//! `W`). F32 and F64 CPU storage, any layout (non-contiguous inputs are copied first).
//!
//! Direct loops, no im2col, no per-group convolutions (`depthwise_loops`): each input plane is
//! copied once, zero-padded and split by stride phase, so that every kernel tap reads one
//! contiguous slice and the inner loops vectorize without bounds checks; on x86-64 they are
//! also compiled for AVX2+FMA and picked at run time. The forward and the input gradient run
//! in parallel over planes, the weight gradient over output channels (rayon). The backward is
//! exact and made of two more custom ops, which have no backward themselves (candle detaches
//! gradients by default).
//! Other devices are not handled here: `ops::conv` keeps candle's grouped `conv2d` there.

use super::conv2d::FusedActivation;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;
use std::borrow::Cow;

/// Spatial attributes of a depthwise convolution (the kernel size comes from the weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseParams {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`, the ONNX order.
    pub pads: [usize; 4],
}

impl Default for DepthwiseParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
        }
    }
}

/// Depthwise convolution of `x: [N, C, H, W]` with `w: [C * M, 1, KH, KW]` on CPU (f32/f64),
/// differentiable in both arguments.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, p: &DepthwiseParams) -> Result<Tensor> {
    depthwise_conv2d_fused(x, w, None, FusedActivation::None, p)
}

/// [`depthwise_conv2d`] plus an optional bias `[C * M]` and an activation applied as each
/// output value is stored; differentiable in every operand (the activation through its output).
pub fn depthwise_conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: FusedActivation,
    p: &DepthwiseParams,
) -> Result<Tensor> {
    if !x.device().is_cpu() || !w.device().is_cpu() {
        bail!("depthwise_conv2d: CPU tensors only (use conv2d with groups elsewhere)")
    }
    if x.dtype() != w.dtype() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        bail!(
            "depthwise_conv2d: f32 or f64 input and weight of one dtype, got {:?} and {:?}",
            x.dtype(),
            w.dtype()
        )
    }
    let g = Geom::new(p, x.dims(), w.dims())?;
    let op = DwConv { p: *p, act };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) => {
            if b.dims() != [g.c * g.m] || b.dtype() != x.dtype() || !b.device().is_cpu() {
                bail!(
                    "depthwise_conv2d: bias {:?} {:?} does not fit {} output channels of {:?}",
                    b.dims(),
                    b.dtype(),
                    g.c * g.m,
                    x.dtype()
                )
            }
            x.apply_op3(&w, &b.contiguous()?, op)
        }
    }
}

/// Sizes and attributes of one call, shared by the three kernels.
struct Geom {
    n: usize,
    c: usize,
    m: usize,
    inp: (usize, usize),
    k: (usize, usize),
    out: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    pads: [usize; 4],
}

impl Geom {
    fn new(p: &DepthwiseParams, x: &[usize], w: &[usize]) -> Result<Self> {
        let (&[n, c, h, wd], &[cm, one, kh, kw]) = (x, w) else {
            bail!("depthwise_conv2d: expected 4-D input and weight, got {x:?} and {w:?}")
        };
        if one != 1 || c == 0 || cm == 0 || cm % c != 0 {
            bail!("depthwise_conv2d: weight {w:?} does not fit input {x:?} ([C * M, 1, KH, KW])")
        }
        if p.stride.contains(&0) || p.dilation.contains(&0) || kh == 0 || kw == 0 {
            bail!("depthwise_conv2d: zero kernel, stride or dilation ({p:?}, weight {w:?})")
        }
        let out = |a: usize, len: usize, k: usize| -> Result<usize> {
            let extent = p.dilation[a] * (k - 1) + 1;
            let padded = len + p.pads[a] + p.pads[a + 2];
            if padded < extent {
                bail!("depthwise_conv2d: padded input size {padded} is smaller than the kernel extent {extent}")
            }
            Ok((padded - extent) / p.stride[a] + 1)
        };
        let (oh, ow) = (out(0, h, kh)?, out(1, wd, kw)?);
        Ok(Self {
            n,
            c,
            m: cm / c,
            inp: (h, wd),
            k: (kh, kw),
            out: (oh, ow),
            s: (p.stride[0], p.stride[1]),
            d: (p.dilation[0], p.dilation[1]),
            pads: p.pads,
        })
    }

    fn in_plane(&self) -> usize {
        self.inp.0 * self.inp.1
    }
    fn out_plane(&self) -> usize {
        self.out.0 * self.out.1
    }
    fn taps(&self) -> usize {
        self.k.0 * self.k.1
    }
    fn x_shape(&self) -> Shape {
        Shape::from((self.n, self.c, self.inp.0, self.inp.1))
    }
    fn y_shape(&self) -> Shape {
        Shape::from((self.n, self.c * self.m, self.out.0, self.out.1))
    }
    fn w_shape(&self) -> Shape {
        Shape::from((self.c * self.m, 1, self.k.0, self.k.1))
    }
}

/// Row-major data of a CPU tensor, copied only when the layout is not contiguous.
fn data<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let all = T::cpu_storage_as_slice(s)?;
    let d = match l.contiguous_offsets() {
        Some((a, b)) => all.get(a..b).map(Cow::Borrowed),
        None => {
            let (dims, st) = (l.dims(), l.stride());
            let mut idx = vec![0; dims.len()];
            let mut out = Vec::with_capacity(l.shape().elem_count());
            for _ in 0..l.shape().elem_count() {
                let at: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
                out.push(all.get(l.start_offset() + at).copied());
                for d in (0..dims.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < dims[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out.into_iter().collect::<Option<Vec<T>>>().map(Cow::Owned)
        }
    };
    match d {
        Some(d) => Ok(d),
        None => bail!("depthwise_conv2d: layout out of storage bounds"),
    }
}

#[path = "depthwise_loops.rs"]
mod loops;
pub(super) use loops::Scratch;
use loops::{dw_plane_mv, dx_plane_mv, fwd_plane_mv, DwFloat, Epilogue, Plan};

#[path = "depthwise_rows.rs"]
mod rows;
pub(super) use rows::forward_rows;
pub use rows::RowGeom;

/// Planes per rayon task so that each task has some work (`cost` per plane).
fn min_planes(cost: usize) -> usize {
    (1 << 14) / cost.max(1) + 1
}

/// `y = act(x (*) w + b)`, parallel over output planes.
fn fwd<T: DwFloat>(
    g: &Geom,
    (x, w, b): (&[T], &[T], Option<&[T]>),
    act: FusedActivation,
) -> Vec<T> {
    let (lo, hi) = act.bounds();
    let (lo, hi) = (T::from_f64(lo), T::from_f64(hi));
    let (ip, op, taps, m) = (g.in_plane(), g.out_plane(), g.taps(), g.m);
    let (plan, len) = (Plan::new(g), g.n * g.c * m * op);
    // Not zero-filled first: that would be one more pass over the output in memory.
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(op)
        .with_min_len(min_planes(op * taps))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (pl, y)| {
            let (xp, o) = (pl / m, pl % (g.c * m));
            let (x, w) = (&x[xp * ip..(xp + 1) * ip], &w[o * taps..(o + 1) * taps]);
            let post = Epilogue {
                bias: b.map_or(T::zero(), |b| b[o]),
                lo,
                hi,
            };
            fwd_plane_mv(g, &plan, (x, w, post), y, scratch);
        });
    // SAFETY: the chunks cover `..len` and `fwd_plane` initializes every element of its chunk.
    unsafe { y.set_len(len) };
    y
}

/// The input gradient, parallel over input planes (each takes its `M` output planes).
fn grad_x<T: DwFloat>(g: &Geom, gy: &[T], w: &[T]) -> Vec<T> {
    let (ip, op, taps, (c, m)) = (g.in_plane(), g.out_plane(), g.taps(), (g.c, g.m));
    let plan = Plan::new(g);
    let mut dx = vec![T::zero(); g.n * c * ip];
    dx.par_chunks_mut(ip.max(1))
        .with_min_len(min_planes(m * op * taps))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (pl, dx)| {
            let gys = &gy[pl * m * op..(pl + 1) * m * op];
            let wts = &w[pl % c * m * taps..(pl % c + 1) * m * taps];
            dx_plane_mv(g, &plan, (gys, wts), dx, scratch);
        });
    dx
}

/// The weight gradient, parallel over output channels (sums in f64 over the batch).
fn grad_w<T: DwFloat>(g: &Geom, x: &[T], gy: &[T]) -> Vec<T> {
    let (ip, op, taps, cm) = (g.in_plane(), g.out_plane(), g.taps(), g.c * g.m);
    let plan = Plan::new(g);
    let mut dw = vec![T::zero(); cm * taps];
    dw.par_chunks_mut(taps)
        .with_min_len(min_planes(g.n * op * taps))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (o, dw)| {
            let mut acc = vec![0f64; taps];
            for n in 0..g.n {
                let (xp, yp) = (n * g.c + o / g.m, n * cm + o);
                let xg = (&x[xp * ip..(xp + 1) * ip], &gy[yp * op..(yp + 1) * op]);
                dw_plane_mv(g, &plan, xg, &mut acc, scratch);
            }
            for (d, a) in dw.iter_mut().zip(&acc) {
                *d = T::from_f64(*a);
            }
        });
    dw
}

type Kernel<T> = fn(&Geom, &[T], &[T]) -> Vec<T>;

/// Runs `f32_kernel` / `f64_kernel` on the two operands (same dtype, checked).
fn run2(
    (s1, l1, s2, l2): (&CpuStorage, &Layout, &CpuStorage, &Layout),
    f32_kernel: Kernel<f32>,
    f64_kernel: Kernel<f64>,
    g: &Geom,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => {
            CpuStorage::F32(f32_kernel(g, &data(s1, l1)?, &data(s2, l2)?))
        }
        (CpuStorage::F64(_), CpuStorage::F64(_)) => {
            CpuStorage::F64(f64_kernel(g, &data(s1, l1)?, &data(s2, l2)?))
        }
        (a, b) => bail!(
            "depthwise_conv2d: f32 or f64 operands of one dtype, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        ),
    })
}

fn expect(l: &Layout, shape: &Shape, what: &str) -> Result<()> {
    if l.shape() != shape {
        bail!(
            "depthwise_conv2d: {what} has shape {:?}, expected {shape:?}",
            l.dims()
        )
    }
    Ok(())
}

/// `(x, w[, b]) -> act(x (*) w + b)`.
struct DwConv {
    p: DepthwiseParams,
    act: FusedActivation,
}

impl DwConv {
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.p, x.1.dims(), w.1.dims())?;
        if let Some((_, bl)) = b {
            expect(bl, &Shape::from(g.c * g.m), "bias")?;
        }
        let storage = match (x.0, w.0) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let b = match b {
                    Some((s, l)) => Some(data::<f32>(s, l)?),
                    None => None,
                };
                CpuStorage::F32(fwd(
                    &g,
                    (&data(x.0, x.1)?, &data(w.0, w.1)?, b.as_deref()),
                    self.act,
                ))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let b = match b {
                    Some((s, l)) => Some(data::<f64>(s, l)?),
                    None => None,
                };
                CpuStorage::F64(fwd(
                    &g,
                    (&data(x.0, x.1)?, &data(w.0, w.1)?, b.as_deref()),
                    self.act,
                ))
            }
            (a, b) => bail!(
                "depthwise_conv2d: f32 or f64 operands of one dtype, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((storage, g.y_shape()))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (xd, wd) = (dims4(x)?, dims4(w)?);
        // Contiguous: candle's strided copy beats ours (e.g. `sum` gives stride 0).
        let gy = super::mask_by_activation(self.act, y, gy)?;
        let dx = gy.apply_op2(w, DwGradX { p: self.p, x: xd })?;
        let dw = x.apply_op2(&gy, DwGradW { p: self.p, w: wd })?;
        Ok((dx, dw, gy))
    }
}

impl CustomOp2 for DwConv {
    fn name(&self) -> &'static str {
        "amct-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, y, gy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "amct-depthwise-conv2d-bias"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, gy) = self.grads(x, w, y, gy)?;
        let db = gy.sum((0, 2, 3))?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

/// `(gy, w) -> dx` for an input of dims `x`.
struct DwGradX {
    p: DepthwiseParams,
    x: [usize; 4],
}

impl CustomOp2 for DwGradX {
    fn name(&self) -> &'static str {
        "amct-depthwise-conv2d-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.p, &self.x, l2.dims())?;
        expect(l1, &g.y_shape(), "output gradient")?;
        Ok((run2((s1, l1, s2, l2), grad_x, grad_x, &g)?, g.x_shape()))
    }
}

/// `(x, gy) -> dw` for a weight of dims `w`.
struct DwGradW {
    p: DepthwiseParams,
    w: [usize; 4],
}

impl CustomOp2 for DwGradW {
    fn name(&self) -> &'static str {
        "amct-depthwise-conv2d-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.p, l1.dims(), &self.w)?;
        expect(l2, &g.y_shape(), "output gradient")?;
        Ok((run2((s1, l1, s2, l2), grad_w, grad_w, &g)?, g.w_shape()))
    }
}

#[cfg(test)]
#[path = "depthwise_tests.rs"]
mod tests;
