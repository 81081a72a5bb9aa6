//! Dispatch by op type, and the rules for element-wise ops: unary
//! activations, numpy-broadcasting binary/variadic ops (with constant
//! folding of small integer tensors), comparisons, `Where`, `Cast` and the
//! quantization ops.

use super::val::{broadcast, Cx, Val, MAX_TRACKED};
use super::{conv, misc, select, shape_ops, source};
use crate::graph::{DType, Dim, GraphError};

/// Ops whose single output has the type and shape of input 0.
#[rustfmt::skip]
const SAME_AS_INPUT: &[&str] = &[
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
    "Gelu", "Softmax", "LogSoftmax", "Hardmax", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
    "Atanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink",
    "InstanceNormalization", "GroupNormalization", "LRN", "LpNormalization",
    "MeanVarianceNormalization", "CumSum", "Trilu", "ReverseSequence", "ScatterElements",
    "ScatterND", "Scatter", "BitwiseNot", "Swish", "RMSNormalization",
];

/// Output states of one node; an empty list (or missing entries) means unknown.
pub(super) fn infer_node(cx: &Cx) -> Result<Vec<Val>, GraphError> {
    if !cx.node.is_onnx_domain() || cx.node.has_subgraphs() {
        return Ok(vec![]);
    }
    let x0 = cx.x(0);
    Ok(match cx.node.op_type.as_str() {
        "Conv" | "ConvInteger" | "QLinearConv" => conv::conv(cx)?,
        "ConvTranspose" => conv::conv_transpose(cx)?,
        "MaxPool" | "AveragePool" | "LpPool" => conv::pool(cx)?,
        "GlobalAveragePool" | "GlobalMaxPool" | "GlobalLpPool" => conv::global_pool(cx),
        "Gemm" => conv::gemm(cx)?,
        "MatMul" | "MatMulInteger" | "QLinearMatMul" => conv::matmul(cx)?,
        "BatchNormalization" => conv::batch_norm(cx)?,
        "LayerNormalization" => conv::layer_norm(cx),
        "Identity" => vec![x0.clone()],
        "Dropout" => vec![x0.clone(), Val::new(Some(DType::BOOL), x0.shape.clone())],
        op if SAME_AS_INPUT.contains(&op) => vec![x0.like()],
        "Neg" | "Abs" => vec![unary_ints(cx)],
        "Not" => vec![unary_ints(cx)],
        "IsNaN" | "IsInf" => vec![Val::new(Some(DType::BOOL), x0.shape.clone())],
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Mod" | "Max" | "Min" | "Sum" | "Mean"
        | "BitShift" | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => vec![elementwise(cx, None)?],
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            vec![elementwise(cx, Some(DType::BOOL))?]
        }
        "Where" => vec![where_op(cx)?],
        "Cast" => vec![cast(cx, cx.node.attr_int("to").map(|t| DType(t as i32)))],
        "CastLike" => vec![cast(cx, cx.x(1).dtype)],
        "QuantizeLinear" => vec![quantize(cx)],
        "DequantizeLinear" => {
            vec![Val::new(
                Some(cx.x(1).dtype.filter(|d| d.is_float()).unwrap_or(DType::F32)),
                x0.shape.clone(),
            )]
        }
        "DynamicQuantizeLinear" => vec![
            Val::new(Some(DType::U8), x0.shape.clone()),
            Val::known(Some(DType::F32), &[]),
            Val::known(Some(DType::U8), &[]),
        ],
        "Flatten" => vec![shape_ops::flatten(cx)?],
        "Reshape" => vec![shape_ops::reshape(cx)?],
        "Transpose" => vec![shape_ops::transpose(cx)?],
        "Concat" => vec![shape_ops::concat(cx)?],
        "Split" => select::split(cx)?,
        "Slice" => vec![select::slice(cx)?],
        "Squeeze" => vec![select::squeeze(cx)?],
        "Unsqueeze" => vec![select::unsqueeze(cx)?],
        "Gather" => vec![select::gather(cx)?],
        "GatherElements" => vec![Val::new(x0.dtype, cx.x(1).shape.clone())],
        "Shape" => vec![source::shape(cx)],
        "Size" => vec![source::size(cx)],
        "Constant" => vec![source::constant(cx)?],
        "ConstantOfShape" => vec![source::constant_of_shape(cx)?],
        "Expand" => vec![misc::expand(cx)?],
        "Tile" => vec![misc::tile(cx)?],
        "Pad" => vec![misc::pad(cx)?],
        "Range" => vec![source::range(cx)],
        "Resize" | "Upsample" => vec![misc::resize(cx)?],
        "ArgMax" | "ArgMin" => vec![misc::arg_reduce(cx)?],
        "TopK" => misc::top_k(cx)?,
        "DepthToSpace" | "SpaceToDepth" => vec![misc::depth_space(cx)?],
        "NonZero" => vec![Val::new(
            Some(DType::I64),
            x0.rank().map(|r| vec![Dim::Known(r as i64), Dim::Unknown]),
        )],
        op if op.starts_with("Reduce") => vec![misc::reduce(cx)?],
        _ => vec![],
    })
}

/// Neg/Abs/Not: same type and shape, contents folded for known integers.
fn unary_ints(cx: &Cx) -> Val {
    let x = cx.x(0);
    let mut out = x.like();
    if let Some(v) = x.known_ints() {
        let f = |a: i64| match cx.node.op_type.as_str() {
            "Neg" => a.saturating_neg(),
            "Abs" => a.saturating_abs(),
            _ => (a == 0) as i64,
        };
        out = out.with_ints(v.into_iter().map(|a| Dim::Known(f(a))).collect());
    }
    out
}

/// Broadcasting ops over all inputs; `dtype` overrides the output type.
fn elementwise(cx: &Cx, dtype: Option<DType>) -> Result<Val, GraphError> {
    let n = cx.node.inputs.len();
    let present: Vec<usize> = (0..n).filter(|&i| cx.has(i)).collect();
    let shape = match present
        .iter()
        .map(|&i| cx.x(i).shape.as_deref())
        .collect::<Option<Vec<_>>>()
    {
        Some(shapes) => Some(broadcast(&shapes).map_err(|e| {
            let names: Vec<String> = present.iter().map(|&i| cx.desc(i)).collect();
            cx.err(format!("inputs {} do not broadcast: {e}", names.join(", ")))
        })?),
        None => None,
    };
    let mut out = Val::new(dtype.or(cx.x(0).dtype), shape);
    fold(cx, &present, &mut out);
    Ok(out)
}

/// Computes small integer (or float) results when every input's contents are known.
fn fold(cx: &Cx, present: &[usize], out: &mut Val) {
    let op = cx.node.op_type.as_str();
    let Some(out_shape) = out.known_shape() else {
        return;
    };
    let Some(in_shapes) = present
        .iter()
        .map(|&i| cx.x(i).known_shape())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let Some(numel) = out
        .numel()
        .filter(|&n| n <= MAX_TRACKED && !present.is_empty())
    else {
        return;
    };
    let index = |flat: usize, shape: &[i64]| -> usize {
        let (mut rem, mut idx, mut stride) = (flat, 0usize, 1usize);
        let off = out_shape.len() - shape.len();
        for ax in (0..out_shape.len()).rev() {
            let od = out_shape[ax].max(1) as usize;
            let coord = rem % od;
            rem /= od;
            if ax >= off {
                let d = shape[ax - off].max(1) as usize;
                if d > 1 {
                    idx += coord * stride;
                }
                stride *= d;
            }
        }
        idx
    };
    let ints: Option<Vec<&Vec<Dim>>> = present.iter().map(|&i| cx.x(i).ints.as_ref()).collect();
    if let Some(ints) = ints {
        let mut res = Vec::with_capacity(numel);
        for flat in 0..numel {
            let args: Option<Vec<&Dim>> = ints
                .iter()
                .zip(&in_shapes)
                .map(|(v, s)| v.get(index(flat, s)))
                .collect();
            let Some(args) = args else { return };
            let first = args[0].clone();
            res.push(args[1..].iter().fold(first, |a, b| int_op(op, cx, &a, b)));
        }
        *out = std::mem::take(out).with_ints(res);
        return;
    }
    let floats: Option<Vec<Vec<f64>>> = present.iter().map(|&i| cx.x(i).numbers()).collect();
    if let (Some(fl), true) = (floats, out.dtype.is_some_and(DType::is_float)) {
        let mut res = Vec::with_capacity(numel);
        for flat in 0..numel {
            let args: Option<Vec<f64>> = fl
                .iter()
                .zip(&in_shapes)
                .map(|(v, s)| v.get(index(flat, s)).copied())
                .collect();
            let Some(args) = args else { return };
            let r = args[1..]
                .iter()
                .try_fold(args[0], |a, &b| float_op(op, a, b));
            let Some(r) = r else { return };
            res.push(if op == "Mean" {
                r / args.len() as f64
            } else {
                r
            });
        }
        *out = std::mem::take(out).with_floats(res);
    }
}

/// One binary op on dims; symbolic operands survive identities (x*1, x+0, x==x).
fn int_op(op: &str, cx: &Cx, a: &Dim, b: &Dim) -> Dim {
    if let (Dim::Known(x), Dim::Known(y)) = (a, b) {
        let (x, y) = (*x, *y);
        let r = match op {
            "Add" | "Sum" => x.checked_add(y),
            "Sub" => x.checked_sub(y),
            "Mul" => x.checked_mul(y),
            "Div" => x.checked_div(y),
            "Mod" if cx.int("fmod", 0) != 0 => x.checked_rem(y),
            "Mod" => x.checked_rem(y).map(|r| {
                if r != 0 && (r < 0) != (y < 0) {
                    r + y
                } else {
                    r
                }
            }),
            "Max" => Some(x.max(y)),
            "Min" => Some(x.min(y)),
            "Pow" => u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
            "Equal" => Some((x == y) as i64),
            "Less" => Some((x < y) as i64),
            "Greater" => Some((x > y) as i64),
            "LessOrEqual" => Some((x <= y) as i64),
            "GreaterOrEqual" => Some((x >= y) as i64),
            "And" | "BitwiseAnd" => Some(if op == "And" {
                (x != 0 && y != 0) as i64
            } else {
                x & y
            }),
            "Or" | "BitwiseOr" => Some(if op == "Or" {
                (x != 0 || y != 0) as i64
            } else {
                x | y
            }),
            "Xor" => Some(((x != 0) != (y != 0)) as i64),
            "BitwiseXor" => Some(x ^ y),
            _ => None,
        };
        return r.map(Dim::Known).unwrap_or(Dim::Unknown);
    }
    match (op, a, b) {
        ("Mul" | "Div", _, Dim::Known(1)) | ("Add" | "Sub" | "Sum", _, Dim::Known(0)) => a.clone(),
        ("Mul", Dim::Known(1), _) | ("Add" | "Sum", Dim::Known(0), _) => b.clone(),
        ("Max" | "Min", Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => a.clone(),
        ("Equal", Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => Dim::Known(1),
        ("Sub", Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => Dim::Known(0),
        ("Div", Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => Dim::Known(1),
        _ => Dim::Unknown,
    }
}

fn float_op(op: &str, a: f64, b: f64) -> Option<f64> {
    Some(match op {
        "Add" | "Sum" | "Mean" => a + b,
        "Sub" => a - b,
        "Mul" => a * b,
        "Div" => a / b,
        "Pow" => a.powf(b),
        "Max" => a.max(b),
        "Min" => a.min(b),
        _ => return None,
    })
}

fn where_op(cx: &Cx) -> Result<Val, GraphError> {
    let shapes: Option<Vec<&[Dim]>> = (0..3).map(|i| cx.x(i).shape.as_deref()).collect();
    let shape = match shapes {
        Some(s) => Some(broadcast(&s).map_err(|e| {
            cx.err(format!(
                "inputs {}, {}, {} do not broadcast: {e}",
                cx.desc(0),
                cx.desc(1),
                cx.desc(2)
            ))
        })?),
        None => None,
    };
    let mut out = Val::new(cx.x(1).dtype.or(cx.x(2).dtype), shape);
    // Fold the common 1-D case: condition and both branches of the output's length.
    let len = out
        .numel()
        .filter(|&n| out.rank() <= Some(1) && n <= MAX_TRACKED);
    if let (Some(len), Some(c), Some(a), Some(b)) =
        (len, cx.x(0).known_ints(), &cx.x(1).ints, &cx.x(2).ints)
    {
        let pick = |v: &[Dim], i: usize| v.get(if v.len() == 1 { 0 } else { i }).cloned();
        let res: Option<Vec<Dim>> = (0..len)
            .map(|i| {
                let cond = *c.get(if c.len() == 1 { 0 } else { i })?;
                if cond != 0 {
                    pick(a, i)
                } else {
                    pick(b, i)
                }
            })
            .collect();
        if let Some(res) = res {
            out = out.with_ints(res);
        }
    }
    Ok(out)
}

fn cast(cx: &Cx, to: Option<DType>) -> Val {
    let x = cx.x(0);
    let out = Val::new(to.or(x.dtype), x.shape.clone());
    match to {
        Some(DType::BOOL) => match x.numbers() {
            Some(v) => out.with_ints(
                v.into_iter()
                    .map(|a| Dim::Known((a != 0.0) as i64))
                    .collect(),
            ),
            None => out,
        },
        Some(t) if t.is_integer() => match (&x.ints, &x.floats) {
            (Some(v), _) => out.with_ints(v.clone()),
            (None, Some(f)) => {
                out.with_ints(f.iter().map(|&a| Dim::Known(a.trunc() as i64)).collect())
            }
            _ => out,
        },
        Some(t) if t.is_float() => match x.numbers() {
            Some(v) => out.with_floats(v),
            None => out,
        },
        _ => out,
    }
}

/// QuantizeLinear: the zero point's type, else `output_dtype`, else uint8.
fn quantize(cx: &Cx) -> Val {
    let dtype = cx
        .x(2)
        .dtype
        .filter(|_| cx.has(2))
        .or_else(|| {
            cx.node
                .attr_int("output_dtype")
                .filter(|&t| t != 0)
                .map(|t| DType(t as i32))
        })
        .unwrap_or(DType::U8);
    Val::new(Some(dtype), cx.x(0).shape.clone())
}
