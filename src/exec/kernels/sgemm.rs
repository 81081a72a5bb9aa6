//! amct's own f32 matrix product for the convolution kernels: depth blocks (KC), column
//! blocks of `B` (at most NC_MAX) packed into 16-column panels, `A` packed into 6-row panels (once per
//! product, or once per convolution for its weights: `PackedLhs`), and `sgemm_avx2`'s
//! register-tile micro-kernel over them. Any strides are accepted (packing absorbs
//! transposes). Where the CPU lacks AVX2/FMA the caller falls back to the `gemm` crate;
//! `AMCT_GEMM=crate` forces that fallback.

use super::conv2d_gemm::MatRef;
use super::sgemm_avx2::{tile_6x16, tile_6x4, tile_6x8, TileStore, MR, NR};
use super::sgemm_pack::{pack_a, pack_b, Rhs};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Most depth in a packed block: one `B` micro-panel (KC x NR, 20 KiB) and one `A` panel
/// stay in L1.
pub(super) const KC: usize = 320;
/// Rows of `A` multiplied with one packed block of `B` (MC x KC, 180 KiB, in L2).
const MC: usize = 144;
/// Most columns of a packed `B` block (KC x NC_MAX, 300 KiB), also in L2.
pub(super) const NC_MAX: usize = 240;

/// The width of each column block for `n` columns: as few blocks as `NC_MAX` allows, of
/// equal width (208 columns in one block, not 192 + 16: every block streams all of `A`
/// through the cache once more).
fn column_step(n: usize) -> usize {
    let blocks = n.div_ceil(NC_MAX).max(1);
    n.div_ceil(blocks).next_multiple_of(NR).min(NC_MAX)
}

/// The depth of each block for a product of depth `k`: blocks of equal depth, at most `KC`
/// (576 = 2 x 288 instead of 256 + 256 + 64: every block finishes its tiles of the
/// destination with one more read and write of them).
fn depth_step(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// Whether `sgemm` runs on this machine (AVX2 and FMA present, not disabled by
/// `AMCT_GEMM=crate`).
pub(super) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        super::sgemm_avx2::available() && std::env::var("AMCT_GEMM").as_deref() != Ok("crate")
    })
}

thread_local! {
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A left operand packed once and used for many products (a convolution's weights, for
/// every image of the batch): for each depth block, all rows as 6-row panels.
pub(super) struct PackedLhs {
    data: Vec<f32>,
    rows: usize,
    depth: usize,
}

impl PackedLhs {
    pub(super) fn new(a: MatRef<f32>) -> Self {
        let padded = a.rows.next_multiple_of(MR);
        let mut data = vec![0.0; padded * a.cols];
        let step = depth_step(a.cols);
        for p0 in (0..a.cols).step_by(step) {
            let kc = step.min(a.cols - p0);
            pack_a(
                a,
                (0, a.rows),
                (p0, kc),
                &mut data[p0 * padded..][..padded * kc],
            );
        }
        Self {
            data,
            rows: a.rows,
            depth: a.cols,
        }
    }

    /// The panels of depth block `p0..p0 + kc` from row `row0` (a multiple of `MR`) on
    /// (every block before it has the same depth, `depth_step`).
    fn panels(&self, (p0, kc): (usize, usize), row0: usize) -> &[f32] {
        let padded = self.rows.next_multiple_of(MR);
        &self.data[p0 * padded..][row0 * kc..padded * kc]
    }
}

/// The left operand of a product: a view, packed as the product runs, or rows
/// `row0..row0 + rows` of a `PackedLhs`.
#[derive(Clone, Copy)]
pub(super) enum Lhs<'a> {
    View(MatRef<'a, f32>),
    Packed {
        packed: &'a PackedLhs,
        row0: usize,
        rows: usize,
    },
}

impl<'a> Lhs<'a> {
    pub(super) fn packed(packed: &'a PackedLhs) -> Self {
        Lhs::Packed {
            packed,
            row0: 0,
            rows: packed.rows,
        }
    }

    /// `(rows, depth)`.
    fn shape(&self) -> (usize, usize) {
        match self {
            Lhs::View(a) => (a.rows, a.cols),
            Lhs::Packed { packed, rows, .. } => (*rows, packed.depth),
        }
    }

    /// Rows `i0..i0 + count` (`i0` a multiple of `MR`).
    fn rows(self, i0: usize, count: usize) -> Self {
        match self {
            Lhs::View(a) => Lhs::View(MatRef {
                data: &a.data[i0 * a.rs..],
                rows: count,
                ..a
            }),
            Lhs::Packed { packed, row0, .. } => Lhs::Packed {
                packed,
                row0: row0 + i0,
                rows: count,
            },
        }
    }
}

/// What is applied to each finished element of the product, while its tile is in registers:
/// `clamp(v + bias[row] + residual[row, col], lo, hi)` (a convolution's bias, the residual
/// branch an `Add` joins it with, and the fused activation).
#[derive(Clone, Copy, Default)]
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<Residual>,
    pub clamp: Option<(f32, f32)>,
    /// Write finished tiles past the caches (non-temporal stores, where a tile's rows are
    /// 32-byte aligned): for an output too large to stay in cache until it is read, whose
    /// stores would otherwise first read every line from memory. Only products of one depth
    /// block (depth at most `KC`) stream: deeper ones read their tiles back.
    pub stream: bool,
}

/// A matrix added to the product, shaped like the destination: row `i` starts at
/// `ptr + i * rs`.
#[derive(Clone, Copy)]
pub(super) struct Residual {
    pub ptr: *const f32,
    pub rs: usize,
}

// SAFETY: a `Residual` is only read, and the caller of `sgemm` keeps it alive.
unsafe impl Send for Residual {}
unsafe impl Sync for Residual {}

impl<'a> Epilogue<'a> {
    fn is_empty(&self) -> bool {
        self.bias.is_none() && self.residual.is_none() && self.clamp.is_none() && !self.stream
    }

    /// The epilogue of the sub-matrix whose corner is element `(i, j)`.
    fn at(self, i: usize, j: usize) -> Self {
        Epilogue {
            bias: self.bias.map(|b| &b[i..]),
            // SAFETY (of the offset): `(i, j)` lies inside the product, which the residual
            // covers.
            residual: self.residual.map(|r| Residual {
                ptr: unsafe { r.ptr.add(i * r.rs + j) },
                rs: r.rs,
            }),
            ..self
        }
    }

    /// Applies it to an `mr x nr` tile of `c` whose first row is row `i` of the product
    /// (the residual already at the tile's corner).
    unsafe fn apply(&self, c: Dst, i: usize, (mr, nr): (usize, usize)) {
        for r in 0..mr {
            let bias = self.bias.map(|b| b[i + r]);
            let row = std::slice::from_raw_parts_mut(c.ptr.add(r * c.rs), nr);
            let res = self
                .residual
                .map(|s| std::slice::from_raw_parts(s.ptr.add(r * s.rs), nr));
            for (j, v) in row.iter_mut().enumerate() {
                *v = finish_value(*v, bias, res.map(|s| s[j]), self.clamp);
            }
        }
    }
}

/// One finished element: `clamp(v + bias + residual, lo, hi)` in the order of the
/// micro-kernel's stores (comparisons, not `max`/`min`: a NaN stays NaN, as in the unfused
/// ops).
#[inline(always)]
pub(super) fn finish_value(
    v: f32,
    bias: Option<f32>,
    residual: Option<f32>,
    clamp: Option<(f32, f32)>,
) -> f32 {
    let v = bias.map_or(v, |b| v + b);
    let v = residual.map_or(v, |r| v + r);
    match clamp {
        None => v,
        Some((lo, hi)) => {
            let v = if v < lo { lo } else { v };
            if v > hi {
                hi
            } else {
                v
            }
        }
    }
}

/// The destination of a product: row `i` starts at `ptr + i * rs`.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    rs: usize,
}

impl Dst {
    /// The destination whose corner is element `(i, j)` of this one.
    unsafe fn at(self, i: usize, j: usize) -> Dst {
        Dst {
            ptr: self.ptr.add(i * self.rs + j),
            ..self
        }
    }
}

// SAFETY: a `Dst` is only shared between threads that write disjoint row or column ranges.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// `dst[m x n] = [dst +] a * b` where row `i` of `dst` starts at `dst + i * dst_rs`; with
/// `threads` the work is split over rayon's pool by columns (or rows when there are few).
///
/// # Safety
/// `enabled()` must be true; `a` and `b` must be in bounds for their shapes (`a.cols ==
/// b`'s depth), and `dst` must be valid for writes (and reads with `accumulate`) of `a.rows`
/// rows of `b.cols` values at stride `dst_rs`, aliasing neither operand.
pub(super) unsafe fn sgemm(
    dst: *mut f32,
    dst_rs: usize,
    a: Lhs,
    b: Rhs,
    accumulate: bool,
    threads: bool,
    epilogue: Epilogue,
) {
    let ((m, k), (kb, n)) = (a.shape(), b.shape());
    assert_eq!(k, kb, "sgemm: inner dimensions differ");
    assert!(
        epilogue.bias.is_none_or(|b| b.len() >= m),
        "sgemm: bias shorter than the rows"
    );
    let dst = Dst {
        ptr: dst,
        rs: dst_rs,
    };
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| std::ptr::write_bytes(dst.ptr.add(i * dst.rs), 0, n));
        }
        epilogue.apply(dst, 0, (m, n));
        return;
    }
    let workers = if threads {
        rayon::current_num_threads()
    } else {
        1
    };
    split(dst, a, b, (accumulate, epilogue), workers)
}

/// The product on one thread, or split over `workers` by columns (by rows when there are
/// few columns).
unsafe fn split(dst: Dst, a: Lhs, b: Rhs, finish: (bool, Epilogue), workers: usize) {
    let ((m, k), (_, n)) = (a.shape(), b.shape());
    if workers <= 1 || m * n * k < (1 << 18) {
        return serial(dst, a, b, finish);
    }
    if n >= workers * 4 * NR {
        let step = n.div_ceil(workers).next_multiple_of(NR);
        (0..n)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|j0| {
                let nb = step.min(n - j0);
                let part = b.columns(j0, nb);
                // SAFETY: columns `j0..j0 + nb` of `dst` belong to this task alone.
                unsafe { serial(dst.at(0, j0), a, part, (finish.0, finish.1.at(0, j0))) }
            });
    } else {
        let step = m.div_ceil(workers).next_multiple_of(MR);
        (0..m)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|i0| {
                let part = a.rows(i0, step.min(m - i0));
                // SAFETY: rows `i0..` of `dst` (as many as `part` has) belong to this task alone.
                unsafe { serial(dst.at(i0, 0), part, b, (finish.0, finish.1.at(i0, 0))) }
            });
    }
}

/// One thread's product in the loop order of BLIS: for each depth block (KC), `A` is
/// packed (unless it comes packed); for each column block of `B`, packed into L2 as
/// 16-column panels, each row block (MC) of `A` goes through the micro-kernel with it.
unsafe fn serial(dst: Dst, a: Lhs, b: Rhs, (accumulate, epilogue): (bool, Epilogue)) {
    let ((m, k), (_, n)) = (a.shape(), b.shape());
    let a_buffer = match a {
        Lhs::View(_) => m.next_multiple_of(MR) * KC.min(k),
        Lhs::Packed { .. } => 0,
    };
    let step = depth_step(k);
    let nc_step = column_step(n);
    with_buffer(&PACK_B, KC * nc_step, |pb| {
        with_buffer(&PACK_A, a_buffer, |pa| {
            for p0 in (0..k).step_by(step) {
                let kc = step.min(k - p0);
                let acc = accumulate || p0 > 0;
                let last = p0 + kc == k;
                let panels: &[f32] = match a {
                    Lhs::View(a) => {
                        pack_a(a, (0, m), (p0, kc), pa);
                        pa
                    }
                    Lhs::Packed { packed, row0, .. } => packed.panels((p0, kc), row0),
                };
                for j0 in (0..n).step_by(nc_step) {
                    let nc = nc_step.min(n - j0);
                    pack_b(b, (p0, kc), (j0, nc), pb);
                    for i0 in (0..m).step_by(MC) {
                        let mc = MC.min(m - i0);
                        let block_panels = &panels[i0 * kc..];
                        let finish = (acc, last.then_some(epilogue.at(i0, j0)));
                        block(dst.at(i0, j0), (mc, nc, kc), block_panels, pb, finish);
                    }
                }
            }
        })
    });
    if epilogue.stream {
        // Non-temporal stores are weakly ordered: make them visible before this thread
        // reports the product done.
        #[cfg(target_arch = "x86_64")]
        std::arch::x86_64::_mm_sfence();
    }
}

/// Runs `f` with this thread's packing buffer of at least `len` values (a fresh one if the
/// thread's is in use).
pub(super) fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    cell.with(|c| {
        let mut fresh = Vec::new();
        let mut borrowed = c.try_borrow_mut();
        let buf = match borrowed.as_deref_mut() {
            Ok(v) => v,
            Err(_) => &mut fresh,
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// The micro-kernel over one packed `mc x kc` block of `A` and `kc x nc` block of `B`.
/// `epilogue` (given for the last depth block) is applied to each tile as it is stored.
unsafe fn block(
    dst: Dst,
    (mc, nc, kc): (usize, usize, usize),
    pa: &[f32],
    pb: &[f32],
    (acc, epilogue): (bool, Option<Epilogue>),
) {
    let epilogue = epilogue.filter(|e| !e.is_empty());
    // Row panels outside, column panels inside: the tiles of the destination (and of the
    // residual) are visited along their rows, six sequential streams the hardware
    // prefetcher follows, and the `A` panel stays in L1 while `B`'s panels stream from L2.
    for (ip, i) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - i);
        let ap = &pa[ip * kc * MR..(ip + 1) * kc * MR];
        for (jp, j) in (0..nc).step_by(NR).enumerate() {
            let nr = NR.min(nc - j);
            let bp = &pb[jp * kc * NR..(jp + 1) * kc * NR];
            let epilogue = epilogue.map(|e| e.at(i, j));
            let c = dst.at(i, j);
            if nr == NR || nr == 8 {
                let mut bias_rows = [0.0; MR];
                let store = tile_store((acc, mr), epilogue.as_ref(), &mut bias_rows);
                if nr == NR {
                    tile_6x16(kc, ap, bp, c.ptr, c.rs, store);
                } else {
                    tile_6x8(kc, ap, bp, c.ptr, c.rs, store);
                }
            } else {
                ragged_tile(c, (mr, nr), (kc, ap, bp), acc, epilogue.as_ref());
            }
        }
    }
}

/// How a tile of `mr` rows with all its columns is stored, `epilogue` at its corner (the
/// bias of a tile of fewer than `MR` rows copied into `bias_rows`).
fn tile_store<'a>(
    (acc, mr): (bool, usize),
    epilogue: Option<&Epilogue<'a>>,
    bias_rows: &'a mut [f32; MR],
) -> TileStore<'a> {
    let Some(e) = epilogue else {
        return TileStore {
            rows: mr,
            ..TileStore::plain(acc)
        };
    };
    TileStore {
        rows: mr,
        accumulate: acc,
        bias: e.bias.map(|b| match b.get(..MR) {
            Some(full) if mr == MR => full.try_into().expect("MR bias values"),
            _ => {
                bias_rows[..mr].copy_from_slice(&b[..mr]);
                &*bias_rows
            }
        }),
        residual: e.residual.map(|r| (r.ptr, r.rs)),
        clamp: e.clamp,
        stream: e.stream && !acc,
    }
}

/// A tile with an odd number of columns: computed in a local `MR x NR` tile (loaded from
/// `c` first when accumulating), then its `mr x nr` corner copied out and finished there.
unsafe fn ragged_tile(
    c: Dst,
    (mr, nr): (usize, usize),
    (kc, ap, bp): (usize, &[f32], &[f32]),
    acc: bool,
    epilogue: Option<&Epilogue>,
) {
    let mut tile = [0f32; MR * NR];
    if acc {
        // Initialized: an accumulating product reads its destination.
        for r in 0..mr {
            std::ptr::copy_nonoverlapping(c.ptr.add(r * c.rs), tile[r * NR..].as_mut_ptr(), nr);
        }
    }
    let (t, store) = (tile.as_mut_ptr(), TileStore::plain(acc));
    if nr <= 4 {
        tile_6x4(kc, ap, bp, t, NR, store);
    } else if nr <= 8 {
        tile_6x8(kc, ap, bp, t, NR, store);
    } else {
        tile_6x16(kc, ap, bp, t, NR, store);
    }
    for r in 0..mr {
        std::ptr::copy_nonoverlapping(tile[r * NR..].as_ptr(), c.ptr.add(r * c.rs), nr);
    }
    if let Some(e) = epilogue {
        e.apply(c, 0, (mr, nr));
    }
}
