//! General 2-D convolution (ONNX `Conv`, any group count) as a CPU candle custom op, with an
//! optional fused bias and ReLU / Clip, differentiable in input, weight and bias.
//!
//! `x: [N, C_in, H, W]`, `w: [C_out, C_in / groups, KH, KW]`, `b: [C_out]`, asymmetric pads,
//! per-axis strides and dilations. In f32, 3x3 stride-1 convolutions with enough work run on
//! Winograd F(2x2, 3x3) (`conv2d_winograd`: forward and both gradients). The others multiply
//! each image's im2col rows by the weight (amct's `sgemm` in f32 on AVX2/FMA, generating the
//! rows as they are packed; the `gemm` crate otherwise), writing straight into the NCHW
//! output (`conv2d_gemm`): no layout round trips, and pointwise convolutions skip im2col.
//! Work is split over images when the batch fills the thread pool, otherwise inside each
//! matrix product. f32 and f64.
//!
//! The backward pass is two more custom ops (input gradient: `w^T * gy` folded back by col2im;
//! weight gradient: `gy * col^T` summed over the batch) plus a sum for the bias. A fused
//! activation is differentiated through its output: the gradient passes where the output lies
//! strictly inside the activation's range.

use super::contiguous_slice;
use super::conv2d_gemm::{
    forward_image, forward_small_images, grad_w_image, grad_x_image, pack_weights, ConvFloat,
    Parallelism, Weights,
};
use super::conv2d_winograd::{forward_winograd, grad_w_winograd, grad_x_winograd};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

/// An activation applied to the convolution's output in the same pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FusedActivation {
    #[default]
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, lo), hi)` (ReLU6 is `Clip(0, 6)`).
    Clip(f64, f64),
}

/// Spatial attributes and groups of one convolution (the kernel size comes from the weight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dParams {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`, the ONNX order.
    pub pads: [usize; 4],
    pub groups: usize,
    pub activation: FusedActivation,
}

impl FusedActivation {
    /// The clamp range `(lo, hi)` the activation applies; `(-inf, inf)` for `None`.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            FusedActivation::None => (f64::NEG_INFINITY, f64::INFINITY),
            FusedActivation::Relu => (0.0, f64::INFINITY),
            FusedActivation::Clip(lo, hi) => (lo, hi),
        }
    }
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            groups: 1,
            activation: FusedActivation::None,
        }
    }
}

/// Convolution of `x: [N, C_in, H, W]` with `w: [C_out, C_in / groups, KH, KW]` plus an optional
/// bias `[C_out]`, then the fused activation, on CPU (f32/f64). Differentiable in every operand.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &Conv2dParams) -> Result<Tensor> {
    let operands: Vec<&Tensor> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    if operands.iter().any(|t| !t.device().is_cpu()) {
        bail!("conv2d: CPU tensors only (candle's conv2d runs elsewhere)")
    }
    if operands.iter().any(|t| t.dtype() != x.dtype())
        || !matches!(x.dtype(), DType::F32 | DType::F64)
    {
        bail!(
            "conv2d: f32 or f64 operands of one dtype, got {:?}",
            operands.iter().map(|t| t.dtype()).collect::<Vec<_>>()
        )
    }
    let g = Geom::new(p, x.dims(), w.dims())?;
    let op = ConvOp {
        p: *p,
        residual: None,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2(&w, op),
        Some(b) => {
            if b.dims() != [g.cout()] {
                bail!(
                    "conv2d: bias has shape {:?}, expected [{}]",
                    b.dims(),
                    g.cout()
                )
            }
            x.apply_op3(&w, &b.contiguous()?, op)
        }
    }
}

/// `activation(conv2d(x, w) + bias + residual)` with `residual` shaped like the output (a
/// residual `Add` fused into the convolution, forward-only: the result tracks no gradient).
/// `None` when `residual` does not fit (another shape, dtype or device): the caller adds it
/// itself.
pub fn conv2d_add(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    p: &Conv2dParams,
) -> Result<Option<Tensor>> {
    let g = Geom::new(p, x.dims(), w.dims())?;
    if residual.shape() != &g.y_shape()
        || residual.dtype() != x.dtype()
        || !residual.device().is_cpu()
    {
        return Ok(None);
    }
    let op = ConvOp {
        p: *p,
        residual: Some(residual.contiguous()?),
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        None => x.apply_op2_no_bwd(&w, &op),
        Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &op),
    }
    .map(Some)
}

/// Sizes and attributes of one call, shared by the forward and backward kernels.
pub(super) struct Geom {
    pub n: usize,
    pub groups: usize,
    pub cin_g: usize,
    pub cout_g: usize,
    pub inp: (usize, usize),
    pub k: (usize, usize),
    pub out: (usize, usize),
    pub s: (usize, usize),
    pub d: (usize, usize),
    pub pads: [usize; 4],
}

impl Geom {
    pub fn new(p: &Conv2dParams, x: &[usize], w: &[usize]) -> Result<Self> {
        let (&[n, cin, h, wd], &[cout, cin_g, kh, kw]) = (x, w) else {
            bail!("conv2d: expected 4-D input and weight, got {x:?} and {w:?}")
        };
        let groups = p.groups;
        if groups == 0 || cin % groups != 0 || cout % groups != 0 || cin / groups != cin_g {
            bail!("conv2d: weight {w:?} does not fit input {x:?} with {groups} groups")
        }
        if p.stride.contains(&0) || p.dilation.contains(&0) || kh == 0 || kw == 0 {
            bail!("conv2d: zero kernel, stride or dilation ({p:?}, weight {w:?})")
        }
        let out = |a: usize, len: usize, k: usize| -> Result<usize> {
            let extent = p.dilation[a] * (k - 1) + 1;
            let padded = len + p.pads[a] + p.pads[a + 2];
            if padded < extent {
                bail!(
                    "conv2d: padded input size {padded} is smaller than the kernel extent {extent}"
                )
            }
            Ok((padded - extent) / p.stride[a] + 1)
        };
        Ok(Self {
            n,
            groups,
            cin_g,
            cout_g: cout / groups,
            inp: (h, wd),
            k: (kh, kw),
            out: (out(0, h, kh)?, out(1, wd, kw)?),
            s: (p.stride[0], p.stride[1]),
            d: (p.dilation[0], p.dilation[1]),
            pads: p.pads,
        })
    }

    pub fn cout(&self) -> usize {
        self.cout_g * self.groups
    }
    pub fn in_plane(&self) -> usize {
        self.inp.0 * self.inp.1
    }
    pub fn out_plane(&self) -> usize {
        self.out.0 * self.out.1
    }
    /// Rows of one group's im2col matrix: `C_in/groups * KH * KW`.
    pub fn col_rows(&self) -> usize {
        self.cin_g * self.k.0 * self.k.1
    }
    pub fn col_len(&self) -> usize {
        self.col_rows() * self.out_plane()
    }
    /// A 1x1 kernel with unit stride and no padding: the image is its own im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.k == (1, 1) && self.s == (1, 1) && self.pads == [0; 4]
    }
    fn x_len(&self) -> usize {
        self.cin_g * self.groups * self.in_plane()
    }
    fn y_len(&self) -> usize {
        self.cout() * self.out_plane()
    }
    fn x_shape(&self) -> Shape {
        Shape::from((self.n, self.cin_g * self.groups, self.inp.0, self.inp.1))
    }
    fn y_shape(&self) -> Shape {
        Shape::from((self.n, self.cout(), self.out.0, self.out.1))
    }
    fn w_shape(&self) -> Shape {
        Shape::from((self.cout(), self.cin_g, self.k.0, self.k.1))
    }

    /// Images run on separate threads when the batch keeps every thread busy; otherwise one
    /// image at a time with threads inside the matrix products.
    fn split_images(&self) -> bool {
        let threads = rayon::current_num_threads();
        self.n >= 2 * threads || self.n.is_multiple_of(threads)
    }
}

/// Runs `per_image(n, out_chunk, scratch, parallelism)` over the images of `out` (chunks of
/// `chunk` elements), on separate threads or one after the other (see `Geom::split_images`).
fn over_images<T: ConvFloat, U: Send>(
    g: &Geom,
    out: &mut [U],
    chunk: usize,
    per_image: impl Fn(usize, &mut [U], &mut Vec<T>, Parallelism) + Sync,
) {
    if chunk == 0 {
        return;
    }
    if g.split_images() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(n, o)| T::with_scratch(|s| per_image(n, o, s, Parallelism::None)));
    } else {
        for (n, o) in out.chunks_mut(chunk).enumerate() {
            T::with_scratch(|s| per_image(n, o, s, Parallelism::Rayon(0)));
        }
    }
}

fn fwd<T: ConvFloat>(
    g: &Geom,
    (act, residual): (FusedActivation, Option<&[T]>),
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    let (xl, yl) = (g.x_len(), g.y_len());
    let len = g.n * yl;
    // Not zero-filled: `forward_image` writes every element, and a fill would be one more
    // pass over the output in memory.
    let mut y = Vec::with_capacity(len);
    if forward_winograd(
        g,
        (x, w, b),
        (&mut y.spare_capacity_mut()[..len], residual, act),
    ) {
        // SAFETY: `forward_winograd` wrote every element of the batch.
        unsafe { y.set_len(len) };
        return y;
    }
    let packed = pack_weights(g, w, false);
    let w = Weights {
        data: w,
        packed: packed.as_deref(),
    };
    let out = &mut y.spare_capacity_mut()[..len];
    if forward_small_images(g, (x, w, b), (out, residual, act)) {
        // SAFETY: `forward_small_images` wrote every element of the batch.
        unsafe { y.set_len(len) };
        return y;
    }
    over_images(g, out, yl, |n, yn, scratch: &mut Vec<T>, par| {
        let rn = residual.map(|r| &r[n * yl..(n + 1) * yl]);
        forward_image(
            g,
            (&x[n * xl..(n + 1) * xl], w, b),
            (yn, rn, act),
            scratch,
            par,
        );
    });
    // SAFETY: the chunks cover `..len` and `forward_image` initializes every element.
    unsafe { y.set_len(len) };
    y
}

fn grad_x<T: ConvFloat>(g: &Geom, gy: &[T], w: &[T]) -> Vec<T> {
    let (xl, yl) = (g.x_len(), g.y_len());
    let len = g.n * xl;
    let mut dx = Vec::with_capacity(len);
    if grad_x_winograd(g, (gy, w), &mut dx.spare_capacity_mut()[..len]) {
        // SAFETY: `grad_x_winograd` wrote every element of the batch.
        unsafe { dx.set_len(len) };
        return dx;
    }
    // The im2col path adds each image's columns into zeros.
    dx.resize(len, T::zero());
    let packed = pack_weights(g, w, true);
    let w = Weights {
        data: w,
        packed: packed.as_deref(),
    };
    over_images(g, &mut dx, xl, |n, dxn, scratch, par| {
        grad_x_image(g, (&gy[n * yl..(n + 1) * yl], w), dxn, scratch, par);
    });
    dx
}

fn grad_w<T: ConvFloat>(g: &Geom, x: &[T], gy: &[T]) -> Vec<T> {
    let (xl, yl, wl) = (g.x_len(), g.y_len(), g.cout() * g.col_rows());
    let mut dw = vec![T::zero(); wl];
    if grad_w_winograd(g, (x, gy), &mut dw) {
        return dw;
    }
    let image = |n: usize, dw: &mut Vec<T>, scratch: &mut Vec<T>, par| {
        let xg = (&x[n * xl..(n + 1) * xl], &gy[n * yl..(n + 1) * yl]);
        grad_w_image(g, xg, dw, scratch, par);
    };
    if g.split_images() {
        // Fixed runs of images per thread, summed in order: the same bits on every run (a
        // work-stealing reduction would add the partial sums in a varying order).
        let threads = rayon::current_num_threads().clamp(1, g.n);
        let per = g.n.div_ceil(threads);
        let partials: Vec<Vec<T>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut dw = vec![T::zero(); wl];
                for n in (t * per)..((t + 1) * per).min(g.n) {
                    T::with_scratch(|s| image(n, &mut dw, s, Parallelism::None));
                }
                dw
            })
            .collect();
        for part in partials {
            dw.iter_mut().zip(&part).for_each(|(a, b)| *a += *b);
        }
        dw
    } else {
        for n in 0..g.n {
            T::with_scratch(|s| image(n, &mut dw, s, Parallelism::Rayon(0)));
        }
        dw
    }
}

fn expect(l: &Layout, shape: &Shape, what: &str) -> Result<()> {
    if l.shape() != shape {
        bail!(
            "conv2d: {what} has shape {:?}, expected {shape:?}",
            l.dims()
        )
    }
    Ok(())
}

/// `(x, w[, b]) -> activation(x (*) w + b [+ residual])`; only ops without a residual are
/// differentiated (`conv2d_add` applies the others without a backward).
struct ConvOp {
    p: Conv2dParams,
    residual: Option<Tensor>,
}

impl ConvOp {
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(&self.p, x.1.dims(), w.1.dims())?;
        if let Some((_, bl)) = b {
            expect(bl, &Shape::from(g.cout()), "bias")?;
        }
        let act = self.p.activation;
        let residual = self.residual.as_ref().map(|r| r.storage_and_layout());
        let residual = match &residual {
            None => None,
            Some((storage, layout)) => {
                expect(layout, &g.y_shape(), "residual")?;
                match &**storage {
                    Storage::Cpu(cpu) => Some((cpu, *layout)),
                    _ => bail!("conv2d: the residual is not on the CPU"),
                }
            }
        };
        let storage = match (x.0, w.0) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let bias = b
                    .map(|(s, l)| contiguous_slice::<f32>(s, l, "conv2d bias"))
                    .transpose()?;
                let residual = residual
                    .map(|(s, l)| contiguous_slice::<f32>(s, l, "conv2d residual"))
                    .transpose()?;
                CpuStorage::F32(fwd(
                    &g,
                    (act, residual),
                    contiguous_slice(x.0, x.1, "conv2d input")?,
                    contiguous_slice(w.0, w.1, "conv2d weight")?,
                    bias,
                ))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let bias = b
                    .map(|(s, l)| contiguous_slice::<f64>(s, l, "conv2d bias"))
                    .transpose()?;
                let residual = residual
                    .map(|(s, l)| contiguous_slice::<f64>(s, l, "conv2d residual"))
                    .transpose()?;
                CpuStorage::F64(fwd(
                    &g,
                    (act, residual),
                    contiguous_slice(x.0, x.1, "conv2d input")?,
                    contiguous_slice(w.0, w.1, "conv2d weight")?,
                    bias,
                ))
            }
            (a, b) => bail!(
                "conv2d: f32 or f64 operands of one dtype, got {:?} and {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((storage, g.y_shape()))
    }

    /// The gradients of the input and the weight (each only where that operand takes part
    /// in the graph being differentiated: not the input images of a network's first
    /// convolution, not frozen weights) and the output gradient after the activation.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
        let gy = super::mask_by_activation(self.p.activation, y, gy)?;
        let dx = x
            .track_op()
            .then(|| {
                let p = self.p;
                gy.apply_op2(w, GradX { p, x: dims4(x)? })
            })
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| {
                let p = self.p;
                x.apply_op2(&gy, GradW { p, w: dims4(w)? })
            })
            .transpose()?;
        Ok((dx, dw, gy))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "amct-conv2d"
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
        Ok((dx, dw))
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "amct-conv2d-bias"
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
        b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, gy) = self.grads(x, w, y, gy)?;
        let db = b.track_op().then(|| gy.sum((0, 2, 3))).transpose()?;
        Ok((dx, dw, db))
    }
}

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

type Kernel<T> = fn(&Geom, &[T], &[T]) -> Vec<T>;

/// Runs the f32 or f64 instance of a gradient kernel on two contiguous operands.
fn run2(
    a: (&CpuStorage, &Layout),
    b: (&CpuStorage, &Layout),
    g: &Geom,
    k32: Kernel<f32>,
    k64: Kernel<f64>,
) -> Result<CpuStorage> {
    Ok(match (a.0, b.0) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(k32(
            g,
            contiguous_slice(a.0, a.1, "conv2d operand")?,
            contiguous_slice(b.0, b.1, "conv2d operand")?,
        )),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(k64(
            g,
            contiguous_slice(a.0, a.1, "conv2d operand")?,
            contiguous_slice(b.0, b.1, "conv2d operand")?,
        )),
        (a, b) => bail!(
            "conv2d: f32 or f64 operands of one dtype, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        ),
    })
}

/// `(gy, w) -> dx` for an input of dims `x`.
struct GradX {
    p: Conv2dParams,
    x: [usize; 4],
}

impl CustomOp2 for GradX {
    fn name(&self) -> &'static str {
        "amct-conv2d-grad-x"
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
        Ok((run2((s1, l1), (s2, l2), &g, grad_x, grad_x)?, g.x_shape()))
    }
}

/// `(x, gy) -> dw` for a weight of dims `w`.
struct GradW {
    p: Conv2dParams,
    w: [usize; 4],
}

impl CustomOp2 for GradW {
    fn name(&self) -> &'static str {
        "amct-conv2d-grad-w"
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
        Ok((run2((s1, l1), (s2, l2), &g, grad_w, grad_w)?, g.w_shape()))
    }
}

#[cfg(test)]
#[path = "conv2d_tests.rs"]
mod tests;
