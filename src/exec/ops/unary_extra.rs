//! Element-wise unary math: Neg, Abs, Sign (integers stay integer), Exp,
//! Log, Reciprocal, Sin, Cos, Floor, Ceil, Round, Softplus, Softsign, Elu,
//! Selu, Celu, ThresholdedRelu, Mish.
//!
//! All are differentiable candle compositions. Floor, Ceil and Round have
//! zero gradient (Ceil is written as -floor(-x) because candle has no ceil
//! backward; Round rounds half to even like ONNX). Softplus and Mish use the
//! overflow-free form max(x, 0) + log1p(exp(-|x|)) with an accurate log1p.

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;

fn float_unary(
    ctx: &OpCtx,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    Ok(vec![Value::new(f(&ctx.float_tensor(0)?)?, v.dtype)])
}

fn attr(ctx: &OpCtx, name: &str, default: f32) -> f64 {
    ctx.node.float_or(name, default) as f64
}

pub fn neg(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let t = if v.is_float() {
        v.tensor.neg()?
    } else {
        v.tensor.zeros_like()?.sub(&v.tensor)?
    };
    Ok(vec![Value::new(t, v.dtype)])
}

pub fn abs(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    Ok(vec![Value::new(v.tensor.abs()?, v.dtype)])
}

pub fn sign(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    Ok(vec![Value::new(v.tensor.sign()?, v.dtype)])
}

pub fn exp(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::exp)
}

pub fn log(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::log)
}

pub fn reciprocal(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::recip)
}

pub fn sin(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::sin)
}

pub fn cos(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::cos)
}

pub fn floor(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, Tensor::floor)
}

pub fn ceil(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, |x| x.neg()?.floor()?.neg())
}

pub fn round(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let y = super::quant::round_half_even(&ctx.float_tensor(0)?)?.detach();
    Ok(vec![Value::new(y, v.dtype)])
}

/// log(1 + u), accurate for small u (Kahan's trick), differentiable.
fn log1p(u: &Tensor) -> candle_core::Result<Tensor> {
    let w = (u + 1.0)?;
    let d = (&w - 1.0)?;
    let tiny = d.eq(0.0)?;
    let safe_d = tiny.where_cond(&d.ones_like()?, &d)?;
    let ratio = tiny.where_cond(&u.ones_like()?, &(w.log()? / safe_d)?)?;
    u * ratio
}

fn softplus_of(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + log1p(&x.abs()?.neg()?.exp()?)?
}

pub fn softplus(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, softplus_of)
}

pub fn softsign(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, |x| x / (x.abs()? + 1.0)?)
}

pub fn mish(ctx: &OpCtx) -> Result<Vec<Value>> {
    float_unary(ctx, |x| x * softplus_of(x)?.tanh()?)
}

/// alpha * (exp(min(x, 0) / scale) - 1) * scale-free form used by Elu, Selu, Celu.
fn negative_part(x: &Tensor, alpha: f64, inner: f64) -> candle_core::Result<Tensor> {
    let xm = x.neg()?.relu()?.neg()?;
    ((xm * inner)?.exp()? - 1.0)? * alpha
}

pub fn elu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = attr(ctx, "alpha", 1.0);
    float_unary(ctx, |x| x.relu()? + negative_part(x, alpha, 1.0)?)
}

pub fn selu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = attr(ctx, "alpha", 1.673_263_2);
    let gamma = attr(ctx, "gamma", 1.050_701);
    float_unary(ctx, |x| {
        (x.relu()? + negative_part(x, alpha, 1.0)?)? * gamma
    })
}

pub fn celu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = attr(ctx, "alpha", 1.0);
    float_unary(ctx, |x| x.relu()? + negative_part(x, alpha, 1.0 / alpha)?)
}

pub fn thresholded_relu(ctx: &OpCtx) -> Result<Vec<Value>> {
    let alpha = attr(ctx, "alpha", 1.0);
    float_unary(ctx, |x| x * x.gt(alpha)?.to_dtype(x.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::graph::DType;

    fn xs() -> crate::exec::Value {
        f32v(&[8], &[-20.0, -2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 30.0])
    }

    fn eval(op: &str, attrs: &[(&str, f32)]) -> Vec<f32> {
        let mut n = node(op, &["x"]);
        for (k, v) in attrs {
            n.set_float(k, *v);
        }
        f32s(&run1(&n, 17, &[("x", &xs())]))
    }

    fn map(f: impl Fn(f64) -> f64) -> Vec<f32> {
        f32s(&xs()).iter().map(|&v| f(v as f64) as f32).collect()
    }

    #[test]
    fn simple_math() {
        assert_eq!(eval("Neg", &[]), map(|v| -v));
        assert_eq!(eval("Abs", &[]), map(f64::abs));
        assert_eq!(eval("Floor", &[]), map(f64::floor));
        assert_eq!(eval("Ceil", &[]), map(f64::ceil));
        assert_eq!(
            eval("Round", &[]),
            vec![-20.0, -2.0, -2.0, -0.0, 0.0, 0.0, 2.0, 30.0]
        );
        assert_eq!(
            eval("Sign", &[]),
            map(|v| if v == 0.0 { 0.0 } else { v.signum() })
        );
        assert_close(&eval("Exp", &[]), &map(f64::exp), 1e-6);
        assert_close(&eval("Sin", &[]), &map(f64::sin), 1e-6);
        assert_close(&eval("Cos", &[]), &map(f64::cos), 1e-6);
        let pos = f32v(&[3], &[0.5, 2.0, 10.0]);
        let y = run1(&node("Log", &["x"]), 17, &[("x", &pos)]);
        assert_close(&f32s(&y), &[0.5f32.ln(), 2f32.ln(), 10f32.ln()], 1e-6);
        let y = run1(&node("Reciprocal", &["x"]), 17, &[("x", &pos)]);
        assert_close(&f32s(&y), &[2.0, 0.5, 0.1], 1e-6);
        // Integer Neg/Abs/Sign stay integer.
        let xi = intv(&[3], &[-3, 0, 5], DType::I32);
        for (op, want) in [
            ("Neg", [3, 0, -5]),
            ("Abs", [3, 0, 5]),
            ("Sign", [-1, 0, 1]),
        ] {
            let y = run1(&node(op, &["x"]), 17, &[("x", &xi)]);
            assert_eq!(y.dtype, DType::I32);
            assert_eq!(i64s(&y), want.to_vec(), "{op}");
        }
    }

    #[test]
    fn activations_match_reference_formulas() {
        let softplus = |v: f64| {
            if v > 0.0 {
                v + (-v).exp().ln_1p()
            } else {
                v.exp().ln_1p()
            }
        };
        let sp = eval("Softplus", &[]);
        assert_close(&sp, &map(softplus), 1e-6);
        // Small tails keep relative accuracy (log1p).
        assert!((sp[0] / (-20f32).exp() - 1.0).abs() < 1e-5);
        assert_close(&eval("Softsign", &[]), &map(|v| v / (1.0 + v.abs())), 1e-6);
        assert_close(&eval("Mish", &[]), &map(|v| v * softplus(v).tanh()), 1e-6);
        let elu = |a: f64| move |v: f64| if v > 0.0 { v } else { a * (v.exp() - 1.0) };
        assert_close(&eval("Elu", &[]), &map(elu(1.0)), 1e-6);
        assert_close(&eval("Elu", &[("alpha", 0.3)]), &map(elu(0.3)), 1e-6);
        let (a, g) = (1.673_263_192_176_818_8, 1.050_701_022_148_132_3);
        assert_close(&eval("Selu", &[]), &map(|v| g * elu(a)(v)), 1e-6);
        let celu = |v: f64| v.max(0.0) + (2.0 * ((v / 2.0).exp() - 1.0)).min(0.0);
        assert_close(&eval("Celu", &[("alpha", 2.0)]), &map(celu), 1e-6);
        assert_eq!(
            eval("ThresholdedRelu", &[("alpha", 0.5)]),
            map(|v| if v > 0.5 { v } else { 0.0 })
        );
    }

    #[test]
    fn gradients_flow() {
        let x = f32v(&[6], &[-2.9, -1.2, -0.3, 0.4, 1.1, 2.7]);
        for op in [
            "Neg",
            "Abs",
            "Exp",
            "Sin",
            "Cos",
            "Softplus",
            "Softsign",
            "Mish",
            "Elu",
            "Selu",
            "Celu",
            "ThresholdedRelu",
            "Floor",
            "Ceil",
            "Round",
        ] {
            grad_check(&node(op, &["x"]), 17, &[("x", &x)], "x");
        }
        let pos = f32v(&[3], &[0.5, 2.0, 10.0]);
        grad_check(&node("Log", &["x"]), 17, &[("x", &pos)], "x");
        grad_check(&node("Reciprocal", &["x"]), 17, &[("x", &pos)], "x");
    }
}
