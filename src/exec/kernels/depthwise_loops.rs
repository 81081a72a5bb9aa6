//! The loops of `depthwise`. Each input plane is copied, zero-padded, into phase planes (see
//! [`Plan`]) where every kernel tap is one contiguous slice over the whole plane: the forward
//! sums up to 9 taps per pass, the input gradient is the adjoint (one axpy per tap, then a
//! gather back), the weight gradient one dot product per tap.
//!
//! Every kernel is `#[inline(always)]` and closure-free so that `multiversion!` can compile it
//! a second time for AVX2+FMA (x86-64, picked at run time); the `FMA` const parameter selects
//! fused multiply-adds, which only that copy uses.

use super::Geom;
use candle_core::WithDType;
use std::mem::MaybeUninit;

/// f32 / f64: the element types of the kernels.
pub(super) trait DwFloat: WithDType {
    /// `self * a + b`, fused when `FMA` (only called so on CPUs with FMA).
    fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self;
}

macro_rules! dw_float {
    ($($t:ty),*) => {$(
        impl DwFloat for $t {
            #[inline(always)]
            fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self {
                if FMA { self.mul_add(a, b) } else { self * a + b }
            }
        }
    )*};
}
dw_float!(f32, f64);

/// Defines `$name(args)`, which runs `$f::<T, true>` compiled for AVX2+FMA when the CPU has
/// them (x86-64), and `$f::<T, false>` (baseline build) otherwise.
macro_rules! multiversion {
    ($vis:vis $name:ident => $f:ident ( $($a:ident : $t:ty),* )) => {
        $vis fn $name<T: DwFloat>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn fast<T: DwFloat>($($a: $t),*) {
                    $f::<T, true>($($a),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    return unsafe { fast::<T>($($a),*) };
                }
            }
            $f::<T, false>($($a),*)
        }
    };
}

/// `out[x] (+)= sum_t w[t] * src[t][x]`: `K` taps in one pass (`ACC`: add to `out`).
#[inline(always)]
fn taps<T: DwFloat, const K: usize, const ACC: bool, const FMA: bool>(
    out: &mut [T],
    src: [&[T]; K],
    w: [T; K],
) {
    for x in 0..out.len() {
        let mut a = if ACC { out[x] } else { T::zero() };
        for t in 0..K {
            a = w[t].madd::<FMA>(src[t][x], a);
        }
        out[x] = a;
    }
}

/// How the forward reads one plane. The zero-padded input plane is split into `sh * sw` phase
/// planes of `rows x cols` (row phase `a`, column phase `b`, cell `(r, k)` = padded cell
/// `(r * sh + a, k * sw + b)`). Then output `(y, x)` of tap `(i, j)` reads phase plane
/// `(i * dh % sh, j * dw % sw)` at `(y + i * dh / sh, x + j * dw / sw)`: with rows `cols` wide,
/// every tap is one contiguous slice over the whole plane, shifted by `offs[tap]`. The output is
/// computed `cols` wide too (the extra columns are dropped when copied out).
pub(super) struct Plan {
    rows: usize,
    cols: usize,
    offs: Vec<usize>,
}

impl Plan {
    pub(super) fn new(g: &Geom) -> Self {
        let ((kh, kw), (dh, dw), (sh, sw)) = (g.k, g.d, g.s);
        // One spare row: the last tap's slice may run `j * dw / sw` cells past its last row.
        let (rows, cols) = (
            g.out.0 + (kh - 1) * dh / sh + 1,
            g.out.1 + (kw - 1) * dw / sw,
        );
        let mut offs = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                let phase = (i * dh % sh) * sw + j * dw % sw;
                offs.push((phase * rows + i * dh / sh) * cols + j * dw / sw);
            }
        }
        Plan { rows, cols, offs }
    }

    fn plane(&self) -> usize {
        self.rows * self.cols
    }
}

/// Scratch of one thread: the phase planes and the `cols`-wide output plane.
pub(in crate::exec::kernels) struct Scratch<T> {
    buf: Vec<T>,
    out: Vec<T>,
    /// The geometry `buf` holds phase planes for (`fill_phases`'s key): another plane of the
    /// same geometry writes the same cells, so the zero padding need not be filled again.
    phases_of: Option<[usize; 8]>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            buf: Vec::new(),
            out: Vec::new(),
            phases_of: None,
        }
    }
}

/// Fills `buf` with the phase planes of input plane `x` (see [`Plan`]).
#[inline(always)]
fn fill_phases<T: DwFloat>(
    g: &Geom,
    plan: &Plan,
    x: &[T],
    (buf, phases_of): (&mut Vec<T>, &mut Option<[usize; 8]>),
) {
    let ((sh, sw), w, (top, left)) = (g.s, g.inp.1, (g.pads[0], g.pads[1]));
    let (cols, pp) = (plan.cols, plan.plane());
    // The cells this geometry writes: the same for every plane, so the padding (never
    // written) is zeroed only when the geometry changes.
    let key = [sh, sw, g.inp.0, w, top, left, plan.rows, cols];
    if *phases_of != Some(key) {
        buf.clear();
        buf.resize(sh * sw * pp, T::zero());
        *phases_of = Some(key);
    }
    for (ir, xrow) in x.chunks_exact(w.max(1)).enumerate() {
        let r = ir + top;
        let (ra, rr) = if sh == 1 { (0, r) } else { (r % sh, r / sh) };
        if rr >= plan.rows {
            break;
        }
        let base = ra * sw * pp + rr * cols; // column phase 0
        if sw == 1 {
            let n = w.min(cols.saturating_sub(left));
            copy(&mut buf[base + left..][..n], &xrow[..n]);
        } else if sw == 2 {
            // Input column `c` goes to column phase `(c + left) % 2`, column `(c + left) / 2`.
            let (odd_first, k) = (left % 2, left / 2 + left % 2);
            if odd_first == 1 && k - 1 < cols {
                buf[base + pp + k - 1] = xrow[0];
            }
            let xs = &xrow[odd_first..];
            let m = (xs.len() / 2).min(cols.saturating_sub(k));
            let (even, odd) = buf[base..].split_at_mut(pp);
            let (even, odd) = (&mut even[k..k + m], &mut odd[k..k + m]);
            for ((e, o), c) in even.iter_mut().zip(odd).zip(xs.chunks_exact(2)) {
                (*e, *o) = (c[0], c[1]);
            }
            if xs.len() % 2 == 1 && k + xs.len() / 2 < cols {
                buf[base + k + xs.len() / 2] = xs[xs.len() - 1];
            }
        } else {
            for (c, &v) in xrow.iter().enumerate() {
                let (ph, k) = ((c + left) % sw, (c + left) / sw);
                if k < cols {
                    buf[base + ph * pp + k] = v;
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for short rows: inline 8-wide moves, no `memcpy` call.
#[inline(always)]
fn copy<T: DwFloat>(dst: &mut [T], src: &[T]) {
    let src = &src[..dst.len()];
    let (mut d, mut s) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (o, &v) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *o = v;
    }
}

/// `out (+)= sum_t w[t] * buf[offs[t]..]` for `K` taps (`acc`: add to `out`).
#[inline(always)]
fn group<T: DwFloat, const K: usize, const FMA: bool>(
    out: &mut [T],
    buf: &[T],
    offs: &[usize],
    w: &[T],
    acc: bool,
) {
    let n = out.len();
    let (mut src, mut ws): ([&[T]; K], [T; K]) = ([&[]; K], [T::zero(); K]);
    for t in 0..K {
        (src[t], ws[t]) = (&buf[offs[t]..offs[t] + n], w[t]);
    }
    match acc {
        true => taps::<T, K, true, FMA>(out, src, ws),
        false => taps::<T, K, false, FMA>(out, src, ws),
    }
}

/// Output plane `y` of `(x plane, weight taps)`: writes every element of `y`.
#[inline(always)]
fn fwd_plane<T: DwFloat, const FMA: bool>(
    g: &Geom,
    plan: &Plan,
    (x, wt, post): (&[T], &[T], Epilogue<T>),
    y: &mut [MaybeUninit<T>],
    scratch: &mut Scratch<T>,
) {
    let Scratch {
        buf,
        out,
        phases_of,
    } = scratch;
    fill_phases(g, plan, x, (buf, phases_of));
    let (offs, ow, cols) = (&plan.offs[..], g.out.1, plan.cols);
    out.resize(g.out.0 * cols, T::zero());
    let mut t = 0;
    while t < offs.len() {
        let (o, w, acc) = (&offs[t..], &wt[t..], t > 0);
        let k = match offs.len() - t {
            9.. => 9,
            3.. => 3,
            _ => 1,
        };
        match k {
            9 => group::<T, 9, FMA>(out, buf, o, w, acc),
            3 => group::<T, 3, FMA>(out, buf, o, w, acc),
            _ => group::<T, 1, FMA>(out, buf, o, w, acc),
        }
        t += k;
    }
    let Epilogue { bias, lo, hi } = post;
    for (y, o) in y.chunks_exact_mut(ow).zip(out.chunks_exact(cols)) {
        for (y, &o) in y.iter_mut().zip(&o[..ow]) {
            let v = o + bias;
            let v = if v < lo { lo } else { v };
            y.write(if v > hi { hi } else { v });
        }
    }
}

/// What the forward does to each output value as it stores it: `clamp(v + bias, lo, hi)`.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<T> {
    pub bias: T,
    pub lo: T,
    pub hi: T,
}

/// `sum_t a[t] * b[t]`, with 8 partial sums so the loop vectorizes.
#[inline(always)]
fn dot<T: DwFloat, const FMA: bool>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    let mut acc = [T::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = T::zero();
    for (&a, &b) in ac.remainder().iter().zip(bc.remainder()) {
        tail = a.madd::<FMA>(b, tail);
    }
    for (a, b) in ac.zip(bc) {
        for t in 0..8 {
            acc[t] = a[t].madd::<FMA>(b[t], acc[t]);
        }
    }
    acc.iter().fold(tail, |a, &b| a + b)
}

/// `out` = output-gradient plane `gy` laid out `cols` wide, zeros in the extra columns.
#[inline(always)]
fn widen<T: DwFloat>(g: &Geom, plan: &Plan, gy: &[T], out: &mut Vec<T>) {
    let (ow, cols) = (g.out.1, plan.cols);
    out.clear();
    out.resize(g.out.0 * cols, T::zero());
    for (o, gy) in out.chunks_exact_mut(cols).zip(gy.chunks_exact(ow)) {
        copy(&mut o[..ow], gy);
    }
}

/// Adjoint of [`fill_phases`]: copies the phase-plane cells of the input cells back into
/// `dx` (one input plane, zero on entry); cells no tap reads stay zero.
#[inline(always)]
fn gather_phases<T: DwFloat>(g: &Geom, plan: &Plan, buf: &[T], dx: &mut [T]) {
    let ((sh, sw), w, (top, left)) = (g.s, g.inp.1, (g.pads[0], g.pads[1]));
    let (cols, pp) = (plan.cols, plan.plane());
    for (ir, dxrow) in dx.chunks_exact_mut(w.max(1)).enumerate() {
        let r = ir + top;
        let (ra, rr) = if sh == 1 { (0, r) } else { (r % sh, r / sh) };
        if rr >= plan.rows {
            break;
        }
        let base = ra * sw * pp + rr * cols;
        if sw == 1 {
            let n = w.min(cols.saturating_sub(left));
            copy(&mut dxrow[..n], &buf[base + left..][..n]);
        } else if sw == 2 {
            let (odd_first, k) = (left % 2, left / 2 + left % 2);
            if odd_first == 1 && k - 1 < cols {
                dxrow[0] = buf[base + pp + k - 1];
            }
            let xs = &mut dxrow[odd_first..];
            let m = (xs.len() / 2).min(cols.saturating_sub(k));
            let (even, odd) = buf[base..].split_at(pp);
            for ((&e, &o), c) in even[k..k + m]
                .iter()
                .zip(&odd[k..k + m])
                .zip(xs.chunks_exact_mut(2))
            {
                (c[0], c[1]) = (e, o);
            }
            let l = xs.len();
            if l % 2 == 1 && k + l / 2 < cols {
                xs[l - 1] = buf[base + k + l / 2];
            }
        } else {
            for (c, v) in dxrow.iter_mut().enumerate() {
                let (ph, k) = ((c + left) % sw, (c + left) / sw);
                if k < cols {
                    *v = buf[base + ph * pp + k];
                }
            }
        }
    }
}

/// Input-gradient plane `dx` (zero on entry) of the `M` output-gradient planes `gys` of one
/// input channel and their weight taps `wts`: the adjoint of [`fwd_plane`], tap by tap.
#[inline(always)]
fn dx_plane<T: DwFloat, const FMA: bool>(
    g: &Geom,
    plan: &Plan,
    (gys, wts): (&[T], &[T]),
    dx: &mut [T],
    scratch: &mut Scratch<T>,
) {
    let Scratch {
        buf,
        out: gyp,
        phases_of,
    } = scratch;
    *phases_of = None; // `buf` becomes a sum, no longer phase planes
    buf.clear();
    buf.resize(g.s.0 * g.s.1 * plan.plane(), T::zero());
    let n = g.out.0 * plan.cols;
    for (gy, wt) in gys
        .chunks_exact(g.out_plane())
        .zip(wts.chunks_exact(g.taps()))
    {
        widen(g, plan, gy, gyp);
        for (&off, &w) in plan.offs.iter().zip(wt) {
            for (b, &v) in buf[off..off + n].iter_mut().zip(&gyp[..n]) {
                *b = w.madd::<FMA>(v, *b);
            }
        }
    }
    gather_phases(g, plan, buf, dx);
}

/// Adds to `acc` (one output channel's taps) the weight gradient of one `(x, gy)` plane pair.
#[inline(always)]
fn dw_plane<T: DwFloat, const FMA: bool>(
    g: &Geom,
    plan: &Plan,
    (x, gy): (&[T], &[T]),
    acc: &mut [f64],
    scratch: &mut Scratch<T>,
) {
    let Scratch {
        buf,
        out: gyp,
        phases_of,
    } = scratch;
    fill_phases(g, plan, x, (buf, phases_of));
    widen(g, plan, gy, gyp);
    let n = g.out.0 * plan.cols;
    for (a, &off) in acc.iter_mut().zip(&plan.offs) {
        *a += dot::<T, FMA>(&gyp[..n], &buf[off..off + n]).to_f64();
    }
}

multiversion!(pub(super) fwd_plane_mv => fwd_plane(g: &Geom, p: &Plan, xw: (&[T], &[T], Epilogue<T>), y: &mut [MaybeUninit<T>], s: &mut Scratch<T>));
multiversion!(pub(super) dx_plane_mv => dx_plane(g: &Geom, p: &Plan, gw: (&[T], &[T]), dx: &mut [T], s: &mut Scratch<T>));
multiversion!(pub(super) dw_plane_mv => dw_plane(g: &Geom, p: &Plan, xg: (&[T], &[T]), acc: &mut [f64], s: &mut Scratch<T>));
