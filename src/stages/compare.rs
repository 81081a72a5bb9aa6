//! Per-sample comparisons of model outputs shared by eval and rollback:
//! the top-1 class and the cosine similarity of two output rows.

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// Cosine similarity of two rows; 1 when both are zero, 0 when one is.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &z) in a.iter().zip(b) {
        let (x, z) = (x as f64, z as f64);
        dot += x * z;
        na += x * x;
        nb += z * z;
    }
    if na == 0.0 || nb == 0.0 {
        f64::from(u8::from(na == nb))
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
