//! The weight gradient of a Winograd F(2x2, 3x3) convolution (`winograd`): with `V` the
//! transformed input tiles and `dM = A dY At` the transformed output-gradient tiles, the
//! gradient of the transformed weights is `dU[t] = sum over tiles dM[t] V[t]^T` (16 products
//! of depth "tiles", 2.25x fewer multiplications than the im2col product), and the weights'
//! is `dW = G^T dU G` per kernel. Each thread sums a fixed run of blocks, and the partial
//! sums are added in order: the same bits on every run with the same number of threads.

use super::conv2d_gemm::MatRef;
use super::sgemm::{sgemm, with_buffer, Epilogue, Lhs};
use super::sgemm_pack::Rhs;
use super::winograd::{
    four_rows, split_columns, split_rows, transform_inputs, Shape, INPUTS, POINTS, ROWS,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Tile columns per block (whole tile rows): a deep product per block.
const COLUMNS_PER_BLOCK: usize = 512;

thread_local! {
    /// A block's transformed output gradients `[16][cout][nb]`.
    static GRADIENTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dw[cout, cin, 3, 3]` of the convolution `s` (a forward `Shape`) from its input `x` and
/// output gradient `gy`; every element written.
pub(super) fn grad_w(s: &Shape, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    let (th, tw) = s.tiles();
    let tile_rows = s.n * th;
    let (cin, cout) = (s.cin, s.cout);
    assert!(x.len() >= s.n * cin * s.inp.0 * s.inp.1);
    assert!(gy.len() >= s.n * cout * s.out.0 * s.out.1 && dw.len() >= cout * cin * 9);
    let threads = rayon::current_num_threads().clamp(1, tile_rows.max(1));
    let per_block = (COLUMNS_PER_BLOCK / (tw + 1)).max(1);
    // Thread `t` sums tile rows `t * per_thread ..` in blocks of `per_block`.
    let per_thread = tile_rows.div_ceil(threads);
    let len = POINTS * cout * cin;
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .filter_map(|t| {
            let rows = t * per_thread..((t + 1) * per_thread).min(tile_rows);
            if rows.is_empty() {
                return None;
            }
            // Not zero-filled: the first block writes every element, the others add.
            let mut du = Vec::with_capacity(len);
            for (i, r0) in rows.clone().step_by(per_block).enumerate() {
                let block_rows = r0..(r0 + per_block).min(rows.end);
                block(
                    s,
                    (x, gy),
                    block_rows,
                    &mut du.spare_capacity_mut()[..len],
                    i > 0,
                );
            }
            // SAFETY: the first block wrote all `len` elements.
            unsafe { du.set_len(len) };
            Some(du)
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut du = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for part in parts {
        du.iter_mut().zip(&part).for_each(|(a, b)| *a += *b);
    }
    let plane = cout * cin;
    for o in 0..cout {
        for i in 0..cin {
            let u: [f32; 16] = std::array::from_fn(|e| du[e * plane + o * cin + i]);
            dw[(o * cin + i) * 9..][..9].copy_from_slice(&untransform_kernel(&u));
        }
    }
}

/// Writes the block's `dU[t] = dM[t] V[t]^T` into `du[16][cout][cin]`, or adds it with
/// `accumulate` (`du` then initialized).
fn block(
    s: &Shape,
    (x, gy): (&[f32], &[f32]),
    rows: std::ops::Range<usize>,
    du: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    let (_, tw) = s.tiles();
    let nb = rows.len() * (tw + 1);
    let (cin, cout) = (s.cin, s.cout);
    with_buffer(&INPUTS, POINTS * cin * nb, |v| {
        with_buffer(&ROWS, POINTS * nb, |work| {
            // SAFETY: `grad_w` only runs where `sgemm` does, so AVX2 and FMA are present.
            unsafe { transform_inputs(s, x, rows.clone(), v, work) };
        });
        with_buffer(&GRADIENTS, POINTS * cout * nb, |dm| {
            with_buffer(&ROWS, 4 * nb, |work| {
                // SAFETY: as above.
                unsafe { transform_output_gradients(s, gy, rows, dm, work) };
            });
            for e in 0..POINTS {
                let a = MatRef::rows(&dm[e * cout * nb..][..cout * nb], cout, nb);
                let b = MatRef::transposed(&v[e * cin * nb..][..cin * nb], nb, cin);
                let dst = du[e * cout * cin..][..cout * cin]
                    .as_mut_ptr()
                    .cast::<f32>();
                // SAFETY: `dst` is the `cout x cin` matrix `e` of `du`, a unique borrow,
                // written in full without `accumulate` and initialized with it; `a` is
                // `cout x nb` and `b` is `nb x cin`.
                unsafe {
                    sgemm(
                        dst,
                        cin,
                        Lhs::View(a),
                        Rhs::View(b),
                        accumulate,
                        false,
                        Epilogue::default(),
                    )
                };
            }
        });
    });
}

/// Writes the block's transformed output gradients `dm[16][cout][nb]`: for each 2x2 tile of
/// `gy` (zero past the output's edge), `A dY At` with `A = At^T`; the unused column of each
/// tile row is zero (`work`: `[4][nb]`).
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_output_gradients(
    s: &Shape,
    gy: &[f32],
    rows: std::ops::Range<usize>,
    dm: &mut [f32],
    work: &mut [f32],
) {
    let (th, tw) = s.tiles();
    let (oh, ow) = s.out;
    let (cols, nb) = (tw + 1, rows.len() * (tw + 1));
    for c in 0..s.cout {
        let plane = &gy[(c * oh * ow)..];
        // Even and odd columns of the tile rows' two output rows, zero past the edge and in
        // the unused column.
        let [e0, o0, e1, o1]: [&mut [f32]; 4] = split_rows(work, nb, nb);
        for (at, r) in rows.clone().enumerate() {
            let (b, ty) = (r / th, r % th);
            let image = &plane[b * s.cout * oh * ow..];
            for (dy, (e, o)) in [(0, (&mut *e0, &mut *o0)), (1, (&mut *e1, &mut *o1))] {
                let (e, o) = (&mut e[at * cols..][..cols], &mut o[at * cols..][..cols]);
                match Some(2 * ty + dy).filter(|&oy| oy < oh) {
                    Some(oy) => split_columns(&image[oy * ow..][..ow], 0, e, o),
                    None => {
                        e.fill(0.0);
                        o.fill(0.0);
                    }
                }
            }
        }
        // `A dY`: rows y0, y0 + y1, y0 - y1, -y1; then along the row: e, e + o, e - o, -o.
        let (e0, o0, e1, o1) = (&*e0, &*o0, &*e1, &*o1);
        let at = |i: usize| {
            let at = |k: usize| ((i * 4 + k) * s.cout + c) * nb;
            [at(0), at(1), at(2), at(3)]
        };
        point_rows(four_rows(dm, at(0), nb), |q| (e0[q], o0[q]));
        point_rows(four_rows(dm, at(1), nb), |q| (e0[q] + e1[q], o0[q] + o1[q]));
        point_rows(four_rows(dm, at(2), nb), |q| (e0[q] - e1[q], o0[q] - o1[q]));
        point_rows(four_rows(dm, at(3), nb), |q| (-e1[q], -o1[q]));
    }
}

/// One row `i` of `A dY At` for every tile: `(e, o) = row_i(q)` gives `e, e + o, e - o, -o`.
#[inline(always)]
fn point_rows(m: [&mut [f32]; 4], row_i: impl Fn(usize) -> (f32, f32)) {
    let [m0, m1, m2, m3] = m;
    for q in 0..m0.len() {
        let (e, o) = row_i(q);
        m0[q] = e;
        m1[q] = e + o;
        m2[q] = e - o;
        m3[q] = -o;
    }
}

/// `G^T u G` of one transformed kernel gradient `u` (row-major 4x4): the 3x3 gradient.
fn untransform_kernel(u: &[f32; 16]) -> [f32; 9] {
    // `G^T` applied to a 4-vector: `[a + (b + c) / 2, (b - c) / 2, (b + c) / 2 + d]`.
    let gt = |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    let cols: [[f32; 3]; 4] = std::array::from_fn(|k| gt(u[k], u[4 + k], u[8 + k], u[12 + k]));
    let mut out = [0f32; 9];
    for a in 0..3 {
        let r = gt(cols[0][a], cols[1][a], cols[2][a], cols[3][a]);
        out[a * 3..a * 3 + 3].copy_from_slice(&r);
    }
    out
}
