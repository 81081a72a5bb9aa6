//! Training losses on candle tensors (differentiable): softmax cross-entropy
//! with label smoothing, mean squared error, KL divergence between softened
//! distributions (distillation) and cosine distance.

use candle_core::{DType, Tensor, D};
use candle_nn::ops::log_softmax;

use super::TrainError;

/// Logits as `[N, C]` (trailing axes after the first flattened).
fn rows(logits: &Tensor) -> Result<Tensor, TrainError> {
    Ok(logits.flatten_from(1)?)
}

/// Mean softmax cross-entropy of `logits` `[N, C]` against integer `labels`
/// `[N]`, with the one-hot target mixed with the uniform one by `smoothing`.
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f64,
) -> Result<Tensor, TrainError> {
    let logits = rows(logits)?;
    let (n, classes) = logits.dims2()?;
    if labels.elem_count() != n {
        return Err(TrainError::Shape(format!(
            "{} labels for a batch of {n}",
            labels.elem_count()
        )));
    }
    let logp = log_softmax(&logits, D::Minus1)?;
    let idx = labels.flatten_all()?.to_dtype(DType::U32)?.unsqueeze(1)?;
    let nll = logp.gather(&idx, 1)?.neg()?.mean_all()?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = (logp.sum_all()?.neg()? / (n * classes) as f64)?;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// Mean squared error between two tensors of one shape.
pub fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor, TrainError> {
    if a.dims() != b.dims() {
        return Err(TrainError::Shape(format!(
            "MSE between shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    Ok((a - b)?.sqr()?.mean_all()?)
}

/// `T² · mean over rows of KL(softmax(teacher/T) ‖ softmax(student/T))`.
pub fn kl_divergence(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor, TrainError> {
    let (s, t) = (rows(student)?, rows(teacher)?.detach());
    if s.dims() != t.dims() {
        return Err(TrainError::Shape(format!(
            "KL between logits {:?} and {:?}",
            s.dims(),
            t.dims()
        )));
    }
    let n = s.dim(0)?.max(1) as f64;
    let log_s = log_softmax(&(s / temperature)?, D::Minus1)?;
    let log_t = log_softmax(&(t / temperature)?, D::Minus1)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum_all()?;
    Ok((kl * (temperature * temperature / n))?)
}

/// Mean over samples of `1 - cos(a_i, b_i)` (each sample flattened).
pub fn cosine_distance(a: &Tensor, b: &Tensor) -> Result<Tensor, TrainError> {
    let (a, b) = (rows(a)?, rows(b)?);
    if a.dims() != b.dims() {
        return Err(TrainError::Shape(format!(
            "cosine between {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let dot = (&a * &b)?.sum(1)?;
    let norms = ((a.sqr()?.sum(1)? * b.sqr()?.sum(1)?)? + 1e-12)?.sqrt()?;
    Ok((dot / norms)?.neg()?.mean_all()?.affine(1.0, 1.0)?)
}

/// Number of rows whose largest logit is at the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize, TrainError> {
    let pred = rows(logits)?.argmax(D::Minus1)?.to_dtype(DType::I64)?;
    let labels = labels.flatten_all()?.to_dtype(DType::I64)?;
    Ok(pred
        .eq(&labels)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn cross_entropy_with_smoothing_matches_the_definition() {
        let logits = t(&[2.0, 0.0, -1.0, 0.5, 0.5, 3.0], (2, 3));
        let labels = Tensor::new(&[0i64, 2], &Device::Cpu).unwrap();
        let by_hand = |s: f64| {
            let rows = [[2.0f64, 0.0, -1.0], [0.5, 0.5, 3.0]];
            let mut total = 0.0;
            for (r, &y) in rows.iter().zip(&[0usize, 2]) {
                let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
                for (c, v) in r.iter().enumerate() {
                    let target = (1.0 - s) * (c == y) as u8 as f64 + s / 3.0;
                    total -= target * (v - lse);
                }
            }
            total / 2.0
        };
        for s in [0.0, 0.1] {
            let got = scalar(cross_entropy(&logits, &labels, s).unwrap());
            assert!(
                (got - by_hand(s)).abs() < 1e-5,
                "{s}: {got} vs {}",
                by_hand(s)
            );
        }
        assert_eq!(correct(&logits, &labels).unwrap(), 2);
        let three = Tensor::new(&[0i64, 1, 2], &Device::Cpu).unwrap();
        assert!(matches!(
            cross_entropy(&logits, &three, 0.0),
            Err(TrainError::Shape(_))
        ));
    }

    #[test]
    fn kl_is_zero_for_equal_logits_and_positive_otherwise() {
        let a = t(&[1.0, 2.0, 3.0, 0.0], (2, 2));
        let b = t(&[1.0, 2.5, 3.0, -1.0], (2, 2));
        assert!(scalar(kl_divergence(&a, &a, 2.0).unwrap()).abs() < 1e-6);
        let kl = scalar(kl_divergence(&a, &b, 1.0).unwrap());
        // Row 1: p = softmax(1, 2.5), q = softmax(1, 2); row 2: p = softmax(3, -1), q = softmax(3, 0).
        let row = |p: [f64; 2], q: [f64; 2]| {
            let sp = |x: [f64; 2]| {
                let z = x[0].exp() + x[1].exp();
                [x[0].exp() / z, x[1].exp() / z]
            };
            let (p, q) = (sp(p), sp(q));
            p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln()
        };
        let want = (row([1.0, 2.5], [1.0, 2.0]) + row([3.0, -1.0], [3.0, 0.0])) / 2.0;
        assert!((kl - want).abs() < 1e-5, "{kl} vs {want}");
    }

    #[test]
    fn mse_and_cosine_distance() {
        let a = t(&[1.0, 0.0, 0.0, 2.0], (2, 2));
        let b = t(&[0.0, 1.0, 0.0, 4.0], (2, 2));
        assert!((scalar(mse(&a, &b).unwrap()) - 1.5).abs() < 1e-6);
        // Row 1 orthogonal (distance 1), row 2 parallel (distance 0).
        assert!((scalar(cosine_distance(&a, &b).unwrap()) - 0.5).abs() < 1e-5);
        assert!(mse(&a, &t(&[1.0, 2.0], (1, 2))).is_err());
    }
}
