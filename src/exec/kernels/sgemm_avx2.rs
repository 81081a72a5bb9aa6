//! The f32 micro-kernel of `sgemm` for x86-64 with AVX2 and FMA: a 6 x 16 tile of the
//! product held in twelve 256-bit registers while the packed panels stream through.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the tile (one broadcast each per step).
pub(super) const MR: usize = 6;
/// Columns of the tile (two 8-lane vectors).
pub(super) const NR: usize = 16;

/// How a tile is written when its products are summed: added to what `c` holds or written
/// over it, then (for the last depth block of a product with an epilogue) plus a bias per
/// row and a residual, and clamped, all while the tile is still in registers; full 6x16
/// tiles written over `c` may bypass the caches (`stream`).
#[derive(Clone, Copy)]
pub(super) struct TileStore<'a> {
    /// The rows of the tile that exist in `c` (the others, of zero rows of `A`'s last
    /// panel, are computed but neither read nor written).
    pub rows: usize,
    pub accumulate: bool,
    /// The bias of the tile's rows.
    pub bias: Option<&'a [f32; MR]>,
    /// A matrix added before the clamp: its tile's corner and row stride.
    pub residual: Option<(*const f32, usize)>,
    /// `(lo, hi)`: `x < lo` becomes `lo`, `x > hi` becomes `hi`, and NaN stays NaN.
    pub clamp: Option<(f32, f32)>,
    /// Non-temporal stores where the rows are 32-byte aligned (never with `accumulate`).
    pub stream: bool,
}

impl TileStore<'_> {
    /// A plain store: written over (or added to) `c`, no epilogue.
    pub(super) fn plain(accumulate: bool) -> Self {
        TileStore {
            rows: MR,
            accumulate,
            bias: None,
            residual: None,
            clamp: None,
            stream: false,
        }
    }
}

/// Whether this CPU runs the micro-kernel (checked once by the caller).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c[MR x NR] = [c +] a_panel * b_panel` over `k` steps, where `a_panel` holds `MR` values
/// per step and `b_panel` `NR` values per step, and row `i` of `c` starts at `c + i * ldc`;
/// `store` says how (without `accumulate`, `c` is only written, never read).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` must hold `k * MR` values and `b` `k * NR`; `c`
/// (and the residual) must be valid for `store.rows <= MR` rows of `NR` values at stride
/// `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_6x16(
    k: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    store: TileStore,
) {
    debug_assert!(a.len() >= k * MR && b.len() >= k * NR);
    let stream = store.stream && !store.accumulate && (c as usize | (ldc * 4)).is_multiple_of(32);
    // The tile of `c` is read or written only after the loop: start fetching it now so that
    // the cache misses overlap the arithmetic (not when it is streamed: nothing is read).
    for i in 0..if stream { 0 } else { store.rows } {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc).cast::<i8>());
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1).cast::<i8>());
    }
    if let Some((r, rs)) = store.residual {
        for i in 0..store.rows {
            _mm_prefetch::<_MM_HINT_T0>(r.add(i * rs).cast::<i8>());
            _mm_prefetch::<_MM_HINT_T0>(r.add(i * rs + NR - 1).cast::<i8>());
        }
    }
    let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
    let mut c00 = _mm256_setzero_ps();
    let mut c01 = _mm256_setzero_ps();
    let mut c10 = _mm256_setzero_ps();
    let mut c11 = _mm256_setzero_ps();
    let mut c20 = _mm256_setzero_ps();
    let mut c21 = _mm256_setzero_ps();
    let mut c30 = _mm256_setzero_ps();
    let mut c31 = _mm256_setzero_ps();
    let mut c40 = _mm256_setzero_ps();
    let mut c41 = _mm256_setzero_ps();
    let mut c50 = _mm256_setzero_ps();
    let mut c51 = _mm256_setzero_ps();
    for _ in 0..k {
        let b0 = _mm256_loadu_ps(pb);
        let b1 = _mm256_loadu_ps(pb.add(8));
        let a0 = _mm256_broadcast_ss(&*pa);
        c00 = _mm256_fmadd_ps(a0, b0, c00);
        c01 = _mm256_fmadd_ps(a0, b1, c01);
        let a1 = _mm256_broadcast_ss(&*pa.add(1));
        c10 = _mm256_fmadd_ps(a1, b0, c10);
        c11 = _mm256_fmadd_ps(a1, b1, c11);
        let a2 = _mm256_broadcast_ss(&*pa.add(2));
        c20 = _mm256_fmadd_ps(a2, b0, c20);
        c21 = _mm256_fmadd_ps(a2, b1, c21);
        let a3 = _mm256_broadcast_ss(&*pa.add(3));
        c30 = _mm256_fmadd_ps(a3, b0, c30);
        c31 = _mm256_fmadd_ps(a3, b1, c31);
        let a4 = _mm256_broadcast_ss(&*pa.add(4));
        c40 = _mm256_fmadd_ps(a4, b0, c40);
        c41 = _mm256_fmadd_ps(a4, b1, c41);
        let a5 = _mm256_broadcast_ss(&*pa.add(5));
        c50 = _mm256_fmadd_ps(a5, b0, c50);
        c51 = _mm256_fmadd_ps(a5, b1, c51);
        pa = pa.add(MR);
        pb = pb.add(NR);
    }
    let rows = [
        (c00, c01),
        (c10, c11),
        (c20, c21),
        (c30, c31),
        (c40, c41),
        (c50, c51),
    ];
    for (i, (lo, hi)) in rows.into_iter().enumerate().take(store.rows) {
        let row = c.add(i * ldc);
        let (lo, hi) = (
            store.apply256(lo, (row, i, 0)),
            store.apply256(hi, (row.add(8), i, 8)),
        );
        if stream {
            _mm256_stream_ps(row, lo);
            _mm256_stream_ps(row.add(8), hi);
        } else {
            _mm256_storeu_ps(row, lo);
            _mm256_storeu_ps(row.add(8), hi);
        }
    }
}

/// Defines `TileStore::$name`: the value to store for the part `v` (one vector of the given
/// intrinsics) of row `i` at `out`, column `j` of the tile.
macro_rules! finish_part {
    ($name:ident, $vec:ty, $add:ident, $load:ident, $set1:ident, $min:ident, $max:ident) => {
        #[cfg(target_arch = "x86_64")]
        impl TileStore<'_> {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name(&self, v: $vec, (out, i, j): (*const f32, usize, usize)) -> $vec {
                let mut v = v;
                if self.accumulate {
                    v = $add($load(out), v);
                }
                if let Some(bias) = self.bias {
                    v = $add(v, $set1(bias[i]));
                }
                if let Some((r, rs)) = self.residual {
                    v = $add(v, $load(r.add(i * rs + j)));
                }
                if let Some((lo, hi)) = self.clamp {
                    // `max(lo, v)` gives `v` when `v` is NaN, as does `min(hi, .)`.
                    v = $min($set1(hi), $max($set1(lo), v));
                }
                v
            }
        }
    };
}

finish_part!(
    apply256,
    __m256,
    _mm256_add_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_min_ps,
    _mm256_max_ps
);
finish_part!(
    apply128,
    __m128,
    _mm_add_ps,
    _mm_loadu_ps,
    _mm_set1_ps,
    _mm_min_ps,
    _mm_max_ps
);

/// Defines a tile function like `tile_6x16` for only the first columns of the panel (one
/// vector of the given intrinsics per row: a panel with few real columns, as where a 7x7
/// image's 49 columns end in 1, does a fraction of the full tile's work).
macro_rules! narrow_tile {
    ($(#[$doc:meta])* $name:ident, $zero:ident, $load:ident, $bcast:ident, $fma:ident, $apply:ident, $store:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As for `tile_6x16`, with `c` valid for `MR` rows of the vector's width.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn $name(
            k: usize,
            a: &[f32],
            b: &[f32],
            c: *mut f32,
            ldc: usize,
            store: TileStore,
        ) {
            debug_assert!(a.len() >= k * MR && b.len() >= k * NR);
            let (mut pa, mut pb) = (a.as_ptr(), b.as_ptr());
            let mut acc = [$zero(); MR];
            for _ in 0..k {
                let b0 = $load(pb);
                for (i, row) in acc.iter_mut().enumerate() {
                    *row = $fma($bcast(&*pa.add(i)), b0, *row);
                }
                pa = pa.add(MR);
                pb = pb.add(NR);
            }
            for (i, row) in acc.into_iter().enumerate().take(store.rows) {
                let out = c.add(i * ldc);
                $store(out, store.$apply(row, (out, i, 0)));
            }
        }
    };
}

narrow_tile!(
    /// `tile_6x16` for the first 8 columns of the panel only.
    tile_6x8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_broadcast_ss,
    _mm256_fmadd_ps,
    apply256,
    _mm256_storeu_ps
);

narrow_tile!(
    /// `tile_6x16` for the first 4 columns of the panel only (128-bit vectors).
    tile_6x4,
    _mm_setzero_ps,
    _mm_loadu_ps,
    _mm_broadcast_ss,
    _mm_fmadd_ps,
    apply128,
    _mm_storeu_ps
);

/// Elsewhere `available()` is false and `sgemm` never runs: these keep it compiling.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! unreachable_tiles {
    ($($name:ident),*) => {$(
        pub(super) unsafe fn $name(_: usize, _: &[f32], _: &[f32], _: *mut f32, _: usize, _: TileStore) {
            unreachable!("sgemm runs on x86-64 only")
        }
    )*};
}

#[cfg(not(target_arch = "x86_64"))]
unreachable_tiles!(tile_6x16, tile_6x8, tile_6x4);
