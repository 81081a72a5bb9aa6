//! Packing for `sgemm`: rows of `A` into 6-row panels and columns of `B` into 16-column
//! panels, from strided views or from generated rows (a convolution's im2col rows, made
//! as they are packed instead of unfolded into memory first).

use super::conv2d_gemm::MatRef;
use super::sgemm::{KC, NC_MAX};
use super::sgemm_avx2::{MR, NR};

/// A matrix whose rows are produced on demand (an image's im2col rows).
pub(super) trait RowSource: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// `out[i] = self[r][j0 + i]` for every `i < out.len()`.
    fn fill_row(&self, r: usize, j0: usize, out: &mut [f32]);
}

/// The right operand of a product: a view, or columns `col0..col0 + cols` of a generated
/// matrix (`transposed`: of its transpose).
#[derive(Clone, Copy)]
pub(super) enum Rhs<'a> {
    View(MatRef<'a, f32>),
    Generated {
        src: &'a dyn RowSource,
        transposed: bool,
        col0: usize,
        cols: usize,
    },
}

impl<'a> Rhs<'a> {
    /// The whole generated matrix (`transposed`: its transpose).
    pub(super) fn generated(src: &'a dyn RowSource, transposed: bool) -> Self {
        let cols = if transposed { src.rows() } else { src.cols() };
        Rhs::Generated {
            src,
            transposed,
            col0: 0,
            cols,
        }
    }

    /// `(depth, columns)`.
    pub(super) fn shape(&self) -> (usize, usize) {
        match self {
            Rhs::View(b) => (b.rows, b.cols),
            Rhs::Generated {
                src,
                transposed,
                cols,
                ..
            } => (if *transposed { src.cols() } else { src.rows() }, *cols),
        }
    }

    /// Columns `j0..j0 + count`.
    pub(super) fn columns(self, j0: usize, count: usize) -> Self {
        match self {
            Rhs::View(b) => Rhs::View(MatRef {
                data: &b.data[j0 * b.cs..],
                cols: count,
                ..b
            }),
            Rhs::Generated {
                src,
                transposed,
                col0,
                ..
            } => Rhs::Generated {
                src,
                transposed,
                col0: col0 + j0,
                cols: count,
            },
        }
    }
}

/// Packs rows `i0..i0 + mc`, depth `p0..p0 + kc` of `a` into `MR`-row panels, each `kc`
/// steps of `MR` values (rows past `mc` are zero).
pub(super) fn pack_a(
    a: MatRef<f32>,
    (i0, mc): (usize, usize),
    (p0, kc): (usize, usize),
    out: &mut [f32],
) {
    if a.rs == 1 {
        // Column-major: read each depth step's `mc` values in one stream.
        for p in 0..kc {
            let col = &a.data[(p0 + p) * a.cs + i0..][..mc];
            for (ip, src) in col.chunks(MR).enumerate() {
                let dst = &mut out[(ip * kc + p) * MR..][..MR];
                dst[..src.len()].copy_from_slice(src);
                dst[src.len()..].fill(0.0);
            }
        }
        return;
    }
    for (ip, i) in (0..mc).step_by(MR).enumerate() {
        let panel = &mut out[ip * kc * MR..(ip + 1) * kc * MR];
        let mr = MR.min(mc - i);
        if a.cs == 1 && mr == MR {
            let row = |r: usize| {
                let at = (i0 + i + r) * a.rs + p0;
                &a.data[at..at + kc]
            };
            let rows = [row(0), row(1), row(2), row(3), row(4), row(5)];
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (d, r) in dst.iter_mut().zip(&rows) {
                    *d = r[p];
                }
            }
            continue;
        }
        for r in 0..MR {
            if r >= mr {
                panel.iter_mut().skip(r).step_by(MR).for_each(|v| *v = 0.0);
                continue;
            }
            let base = (i0 + i + r) * a.rs + p0 * a.cs;
            let dsts = panel.iter_mut().skip(r).step_by(MR);
            if a.cs == 1 {
                dsts.zip(&a.data[base..base + kc])
                    .for_each(|(d, s)| *d = *s);
            } else {
                dsts.zip(a.data[base..].iter().step_by(a.cs))
                    .for_each(|(d, s)| *d = *s);
            }
        }
    }
}

/// Packs depth `p0..p0 + kc`, columns `j0..j0 + nc` of `b` into `NR`-column panels, each
/// `kc` steps of `NR` values (columns past `nc` are zero).
pub(super) fn pack_b(b: Rhs, depth: (usize, usize), cols: (usize, usize), out: &mut [f32]) {
    match b {
        Rhs::View(b) => pack_b_view(b, depth, cols, out),
        Rhs::Generated {
            src,
            transposed: false,
            col0,
            ..
        } => pack_b_rows(src, depth, (col0 + cols.0, cols.1), out),
        Rhs::Generated {
            src,
            transposed: true,
            col0,
            ..
        } => pack_b_columns(src, depth, (col0 + cols.0, cols.1), out),
    }
}

/// `pack_b` for a generated matrix: each of its rows `p0..p0 + kc` is generated for columns
/// `j0..j0 + nc` and spread over the panels.
fn pack_b_rows(
    src: &dyn RowSource,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    out: &mut [f32],
) {
    let mut row = [0f32; NC_MAX];
    let full = nc / NR;
    for p in 0..kc {
        src.fill_row(p0 + p, j0, &mut row[..nc]);
        // Whole panels as fixed-size copies (two vector moves, not a `memmove` call each).
        for (jp, part) in row[..full * NR].chunks_exact(NR).enumerate() {
            let part: &[f32; NR] = part.try_into().expect("NR values");
            let dst: &mut [f32; NR] = (&mut out[(jp * kc + p) * NR..][..NR])
                .try_into()
                .expect("NR values");
            *dst = *part;
        }
        if full * NR < nc {
            let (part, dst) = (&row[full * NR..nc], &mut out[(full * kc + p) * NR..][..NR]);
            dst[..part.len()].copy_from_slice(part);
            dst[part.len()..].fill(0.0);
        }
    }
}

/// `pack_b` for the transpose of a generated matrix: column `j` of `b` is row `j` of the
/// source, generated for depth `p0..p0 + kc`.
fn pack_b_columns(
    src: &dyn RowSource,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    out: &mut [f32],
) {
    let mut column = [0f32; KC];
    for (jp, j) in (0..nc).step_by(NR).enumerate() {
        let panel = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        for q in 0..NR {
            let dsts = panel.iter_mut().skip(q).step_by(NR);
            if j + q >= nc {
                dsts.for_each(|v| *v = 0.0);
                continue;
            }
            src.fill_row(j0 + j + q, p0, &mut column[..kc]);
            dsts.zip(&column[..kc]).for_each(|(d, s)| *d = *s);
        }
    }
}

/// `pack_b` for a view. A row-major `b` is read row by row (one stream; reading panel by
/// panel would be `kc` streams of 64 bytes each).
fn pack_b_view(
    b: MatRef<f32>,
    (p0, kc): (usize, usize),
    (j0, nc): (usize, usize),
    out: &mut [f32],
) {
    if b.cs == 1 {
        let full = nc / NR;
        for p in 0..kc {
            let row = &b.data[(p0 + p) * b.rs + j0..][..full * NR];
            for (jp, src) in row.chunks_exact(NR).enumerate() {
                out[(jp * kc + p) * NR..][..NR].copy_from_slice(src);
            }
        }
    }
    for (jp, j) in (0..nc).step_by(NR).enumerate() {
        let panel = &mut out[jp * kc * NR..(jp + 1) * kc * NR];
        let nr = NR.min(nc - j);
        if b.cs == 1 && nr < NR {
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let at = (p0 + p) * b.rs + j0 + j;
                dst[..nr].copy_from_slice(&b.data[at..at + nr]);
                dst[nr..].fill(0.0);
            }
            continue;
        }
        if b.cs == 1 {
            continue; // full panels of a row-major `b`: below, row by row
        }
        for q in 0..NR {
            let dsts = panel.iter_mut().skip(q).step_by(NR);
            if q >= nr {
                dsts.for_each(|v| *v = 0.0);
                continue;
            }
            let base = p0 * b.rs + (j0 + j + q) * b.cs;
            if b.rs == 1 {
                dsts.zip(&b.data[base..base + kc])
                    .for_each(|(d, s)| *d = *s);
            } else {
                dsts.zip(b.data[base..].iter().step_by(b.rs))
                    .for_each(|(d, s)| *d = *s);
            }
        }
    }
}
