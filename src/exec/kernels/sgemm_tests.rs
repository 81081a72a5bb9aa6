//! Tests of `sgemm` against a naive f64 product: ragged edges of every block size, operands
//! given transposed, accumulation, and the threaded split by columns and by rows.

use super::conv2d_gemm::MatRef;
use super::sgemm::{enabled, sgemm, Epilogue, Lhs, PackedLhs, Residual};
use super::sgemm_pack::Rhs;
use super::test_util::Lcg;

/// `(m, n, k, a transposed, b transposed, accumulate, threads, a packed beforehand)`.
type Case = (usize, usize, usize, bool, bool, bool, bool, bool);

fn view(data: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_, f32> {
    if transposed {
        MatRef::transposed(data, rows, cols)
    } else {
        MatRef::rows(data, rows, cols)
    }
}

fn at(m: &MatRef<f32>, i: usize, j: usize) -> f64 {
    m.data[i * m.rs + j * m.cs] as f64
}

/// Runs one case and returns the largest error relative to the largest reference value.
fn run((m, n, k, ta, tb, acc, threads, prepacked): Case) -> f64 {
    let mut rng = Lcg(m as u64 * 1000 + n as u64 * 10 + k as u64);
    let a_data: Vec<f32> = rng.vec(m * k).into_iter().map(|v| v as f32).collect();
    let b_data: Vec<f32> = rng.vec(k * n).into_iter().map(|v| v as f32).collect();
    let init: Vec<f32> = rng.vec(m * n).into_iter().map(|v| v as f32).collect();
    let (a, b) = (view(&a_data, m, k, ta), view(&b_data, k, n, tb));
    let ld = n + 3; // a destination row stride wider than the product
    let mut dst = vec![f32::NAN; m * ld];
    for i in 0..m {
        for j in 0..n {
            if acc {
                dst[i * ld + j] = init[i * n + j];
            }
        }
    }
    // SAFETY: `enabled()` was checked by the caller; the views are built from their own
    // data and `dst` holds `m` rows of `ld >= n` values.
    let packed = PackedLhs::new(a);
    let lhs = if prepacked {
        Lhs::packed(&packed)
    } else {
        Lhs::View(a)
    };
    unsafe {
        sgemm(
            dst.as_mut_ptr(),
            ld,
            lhs,
            Rhs::View(b),
            acc,
            threads,
            Epilogue::default(),
        )
    };
    let mut worst = 0f64;
    let mut scale = 1f64;
    for i in 0..m {
        for j in 0..n {
            let mut r: f64 = (0..k).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
            if acc {
                r += init[i * n + j] as f64;
            }
            scale = scale.max(r.abs());
            worst = worst.max((dst[i * ld + j] as f64 - r).abs());
        }
        assert!(
            dst[i * ld + n..i * ld + ld].iter().all(|v| v.is_nan()),
            "wrote past n"
        );
    }
    worst / scale
}

#[test]
fn sgemm_matches_a_naive_product() {
    assert!(enabled(), "the test machine has AVX2 and FMA");
    let cases: &[Case] = &[
        (1, 1, 1, false, false, false, false, false),
        (6, 16, 8, false, false, false, false, true),
        (7, 17, 9, false, false, true, false, false),
        (13, 33, 300, true, false, false, false, true), // k over KC, A transposed
        (150, 40, 70, false, true, true, false, false), // m over MC, B transposed
        (150, 300, 530, false, false, true, false, true), // every block ragged, packed
        (64, 3136, 64, false, false, false, true, true), // ResNet's first stage, by columns
        (512, 49, 600, false, false, false, true, false), // a late stage, split by rows
        (512, 49, 600, true, false, true, true, true),  // the same, packed A split by rows
        (20, 4100, 5, true, true, true, false, false),  // n over NC_MAX, both transposed
        (5, 30, 0, false, false, false, false, false),
    ];
    for &case in cases {
        let err = run(case);
        assert!(err < 1e-5, "{case:?}: relative error {err}");
    }
}

#[test]
fn sgemm_with_zero_depth_stores_zeros_or_keeps_the_destination() {
    assert!(enabled());
    let (a, b) = (vec![0f32; 0], vec![0f32; 0]);
    let mut dst = vec![5f32; 6];
    // SAFETY: empty operands of depth 0; `dst` holds 2 x 3 values.
    unsafe {
        let lhs = Lhs::View(view(&a, 2, 0, false));
        sgemm(
            dst.as_mut_ptr(),
            3,
            lhs,
            Rhs::View(view(&b, 0, 3, false)),
            true,
            false,
            Epilogue::default(),
        )
    };
    assert_eq!(dst, vec![5.0; 6]);
}

/// Single-thread GFLOP/s on convolution shapes, `A` packed beforehand, against the `gemm`
/// crate (run with `--ignored --nocapture` in release).
#[test]
#[ignore]
fn sgemm_speed_probe() {
    let (a, b) = (vec![0.5f32; 256 * 6], vec![0.25f32; 256 * 16]);
    let mut c = vec![0f32; 96];
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = std::time::Instant::now();
        for _ in 0..100_000 {
            // SAFETY: panels of depth 256, a 6 x 16 destination.
            unsafe {
                super::sgemm_avx2::tile_6x16(
                    256,
                    &a,
                    &b,
                    c.as_mut_ptr(),
                    16,
                    super::sgemm_avx2::TileStore::plain(true),
                )
            };
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "micro-kernel alone: {:.1} GFLOP/s",
        2.0 * 96.0 * 256.0 * 1e5 / best / 1e9
    );
    for &(m, n, k) in &[
        (64, 3136, 64),
        (64, 3136, 576),
        (256, 3136, 64),
        (128, 784, 1152),
        (256, 196, 2304),
        (512, 49, 4608),
        (2048, 49, 512),
    ] {
        let a: Vec<f32> = Lcg(1).vec(m * k).into_iter().map(|v| v as f32).collect();
        let b: Vec<f32> = Lcg(2).vec(k * n).into_iter().map(|v| v as f32).collect();
        let mut c = vec![0f32; m * n];
        let reps = (1e9 / (2.0 * (m * n * k) as f64)).ceil() as usize;
        let packed = PackedLhs::new(view(&a, m, k, false)); // as a convolution's weights
        let mut best = f64::MAX; // the best of several trials: this machine's timing is noisy
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: operands built for these shapes.
                unsafe {
                    let bv = view(&b, k, n, false);
                    sgemm(
                        c.as_mut_ptr(),
                        n,
                        Lhs::packed(&packed),
                        Rhs::View(bv),
                        false,
                        false,
                        Epilogue::default(),
                    )
                };
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut best_crate = f64::MAX;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                // SAFETY: row-major operands of these shapes (the `gemm` crate's strides).
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                };
            }
            best_crate = best_crate.min(t.elapsed().as_secs_f64());
        }
        let rate = |s: f64| 2.0 * (m * n * k * reps) as f64 / s / 1e9;
        println!(
            "{m}x{n}x{k}: {:.1} GFLOP/s (gemm crate {:.1})",
            rate(best),
            rate(best_crate)
        );
    }
}

#[test]
fn sgemm_applies_bias_and_clamp_once_to_every_element() {
    assert!(enabled());
    // Two depth blocks, ragged tiles, full 6x8 tiles, split by rows over threads and not;
    // written over and accumulated into the destination; with and without the clamp and a
    // residual; streamed stores (used where the rows are aligned, as in the last case).
    let cases = [
        (13, 37, 700, false),
        (512, 20, 40, true),
        (7, 9, 3, false),
        (12, 8, 5, false),
        (12, 700, 40, true),
        (12, 64, 40, true),
        (60, 512, 24, true), // streamed by two threads (split by columns)
        (9, 16, 8, false),
        (30, 64, 24, false), // streamed on one thread
    ];
    for (&(m, n, k, threads), case) in cases.iter().zip(0..) {
        let (accumulate, clamp) = (case % 2 == 1, (case != 2).then_some((-0.5f32, 1.5f32)));
        let mut rng = Lcg(7 + m as u64);
        let a: Vec<f32> = rng.vec(m * k).into_iter().map(|v| v as f32).collect();
        let b: Vec<f32> = rng.vec(k * n).into_iter().map(|v| v as f32).collect();
        let bias: Vec<f32> = rng.vec(m).into_iter().map(|v| v as f32).collect();
        let before: Vec<f32> = rng.vec(m * n).into_iter().map(|v| v as f32).collect();
        let residual: Vec<f32> = rng.vec(m * n).into_iter().map(|v| v as f32).collect();
        let with_residual = case != 1;
        // The destination at a 32-byte boundary, so that streamed stores can be used.
        let mut storage = vec![0f32; m * n + 8];
        let skip = storage.as_ptr().align_offset(32).min(8);
        let dst = &mut storage[skip..skip + m * n];
        if accumulate {
            dst.copy_from_slice(&before);
        }
        let epilogue = Epilogue {
            bias: Some(&bias),
            residual: with_residual.then_some(Residual {
                ptr: residual.as_ptr(),
                rs: n,
            }),
            clamp,
            stream: case >= 5,
        };
        let (av, bv) = (view(&a, m, k, false), view(&b, k, n, false));
        // SAFETY: operands built for these shapes; `dst` holds `m x n` values.
        unsafe {
            sgemm(
                dst.as_mut_ptr(),
                n,
                Lhs::View(av),
                Rhs::View(bv),
                accumulate,
                threads,
                epilogue,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let mut r: f64 = (0..k).map(|p| at(&av, i, p) * at(&bv, p, j)).sum();
                if accumulate {
                    r += before[i * n + j] as f64;
                }
                if with_residual {
                    r += residual[i * n + j] as f64;
                }
                let (lo, hi) = clamp.unwrap_or((f32::MIN, f32::MAX));
                let want = (r + bias[i] as f64).clamp(lo as f64, hi as f64);
                let got = dst[i * n + j] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + r.abs()),
                    "({i}, {j}): {got} vs {want}"
                );
            }
        }
    }
}
