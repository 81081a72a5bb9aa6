//! Operator implementations, one file per op family, and the dispatch table.
//!
//! Every op is written with differentiable candle operations (or amct's own
//! custom ops with a backward), so the same code serves inference and
//! training. `check` reports, without running anything, whether a node's op
//! and attributes are supported; `run` computes a node's outputs.

mod activation;
mod compare;
mod context;
mod conv;
mod conv_block;
mod conv_taps;
mod elementwise;
mod generate;
mod matmul;
mod norm;
#[cfg(test)]
mod op_test_util;
mod pad;
mod pool;
pub(crate) mod quant;
mod reduce;
mod resize;
mod shape;
mod slice_gather;
mod unary_extra;

pub use context::OpCtx;
pub(in crate::exec) use conv_block::{inverted_residual, BlockRun};

use super::error::Result;
use super::Value;
use crate::graph::Node;

type OpFn = fn(&OpCtx) -> Result<Vec<Value>>;
type CheckFn = fn(&Node) -> std::result::Result<(), String>;

/// (op type, implementation, attribute check) for every supported ONNX op.
fn table() -> &'static [(&'static str, OpFn, CheckFn)] {
    use activation as a;
    use compare as c;
    use elementwise as e;
    use shape as s;
    use unary_extra as u;
    &[
        ("Conv", conv::conv, conv::check_conv),
        (
            "ConvTranspose",
            conv::conv_transpose,
            conv::check_conv_transpose,
        ),
        ("Gemm", matmul::gemm, ok),
        ("MatMul", matmul::matmul, ok),
        (
            "BatchNormalization",
            norm::batch_norm,
            norm::check_batch_norm,
        ),
        ("LayerNormalization", norm::layer_norm, ok),
        ("LRN", norm::lrn, ok),
        ("Relu", a::relu, ok),
        ("LeakyRelu", a::leaky_relu, ok),
        ("PRelu", a::prelu, ok),
        ("Clip", a::clip, ok),
        ("Sigmoid", a::sigmoid, ok),
        ("HardSigmoid", a::hard_sigmoid, ok),
        ("HardSwish", a::hard_swish, ok),
        ("Tanh", a::tanh, ok),
        ("Erf", a::erf, ok),
        ("Gelu", a::gelu, ok),
        ("Softmax", a::softmax, ok),
        ("LogSoftmax", a::log_softmax, ok),
        ("Add", e::add, ok),
        ("Sub", e::sub, ok),
        ("Mul", e::mul, ok),
        ("Div", e::div, ok),
        ("Pow", e::pow, ok),
        ("Sqrt", e::sqrt, ok),
        ("Max", e::max, ok),
        ("Min", e::min, ok),
        ("Sum", e::sum, ok),
        ("Mean", e::mean, ok),
        ("Where", e::where_op, ok),
        ("MaxPool", pool::max_pool, pool::check_pool),
        ("AveragePool", pool::average_pool, pool::check_pool),
        ("GlobalAveragePool", pool::global_average_pool, ok),
        ("GlobalMaxPool", pool::global_max_pool, ok),
        ("Flatten", s::flatten, ok),
        ("Reshape", s::reshape, ok),
        ("Transpose", s::transpose, ok),
        ("Concat", s::concat, ok),
        ("Split", s::split, ok),
        ("Squeeze", s::squeeze, ok),
        ("Unsqueeze", s::unsqueeze, ok),
        ("Shape", s::shape, ok),
        ("Cast", s::cast, s::check_cast),
        ("Identity", s::identity, ok),
        ("Dropout", s::identity, ok),
        ("Constant", s::constant, ok),
        ("ConstantOfShape", s::constant_of_shape, ok),
        ("Expand", s::expand, ok),
        ("Slice", slice_gather::slice, ok),
        ("Gather", slice_gather::gather, ok),
        ("GatherElements", slice_gather::gather_elements, ok),
        ("Range", generate::range, ok),
        ("Tile", generate::tile, ok),
        ("Pad", pad::pad, pad::check_pad),
        ("Resize", resize::resize, resize::check_resize),
        ("Upsample", resize::resize, resize::check_resize),
        ("ReduceSum", reduce::reduce_sum, ok),
        ("ReduceMean", reduce::reduce_mean, ok),
        ("ReduceMax", reduce::reduce_max, ok),
        ("ReduceMin", reduce::reduce_min, ok),
        ("ReduceProd", reduce::reduce_prod, ok),
        ("ReduceL1", reduce::reduce_l1, ok),
        ("ReduceL2", reduce::reduce_l2, ok),
        ("ReduceSumSquare", reduce::reduce_sum_square, ok),
        ("ReduceLogSum", reduce::reduce_log_sum, ok),
        ("ReduceLogSumExp", reduce::reduce_log_sum_exp, ok),
        ("ArgMax", reduce::arg_max, ok),
        ("ArgMin", reduce::arg_min, ok),
        (
            "QuantizeLinear",
            quant::quantize_linear,
            quant::check_quantize,
        ),
        (
            "DequantizeLinear",
            quant::dequantize_linear,
            quant::check_dequantize,
        ),
        ("DynamicQuantizeLinear", quant::dynamic_quantize_linear, ok),
        ("Neg", u::neg, ok),
        ("Abs", u::abs, ok),
        ("Sign", u::sign, ok),
        ("Exp", u::exp, ok),
        ("Log", u::log, ok),
        ("Reciprocal", u::reciprocal, ok),
        ("Sin", u::sin, ok),
        ("Cos", u::cos, ok),
        ("Floor", u::floor, ok),
        ("Ceil", u::ceil, ok),
        ("Round", u::round, ok),
        ("Softplus", u::softplus, ok),
        ("Softsign", u::softsign, ok),
        ("Mish", u::mish, ok),
        ("Elu", u::elu, ok),
        ("Selu", u::selu, ok),
        ("Celu", u::celu, ok),
        ("ThresholdedRelu", u::thresholded_relu, ok),
        ("Equal", c::equal, ok),
        ("Less", c::less, ok),
        ("LessOrEqual", c::less_or_equal, ok),
        ("Greater", c::greater, ok),
        ("GreaterOrEqual", c::greater_or_equal, ok),
        ("And", c::and, ok),
        ("Or", c::or, ok),
        ("Xor", c::xor, ok),
        ("Not", c::not, ok),
        ("IsNaN", c::is_nan, ok),
        ("IsInf", c::is_inf, ok),
    ]
}

fn ok(_: &Node) -> std::result::Result<(), String> {
    Ok(())
}

fn find(node: &Node) -> Option<&'static (&'static str, OpFn, CheckFn)> {
    if !node.is_onnx_domain() {
        return None;
    }
    table().iter().find(|(name, _, _)| *name == node.op_type)
}

/// Whether the executor can run `node`; the error says why not.
pub fn check(node: &Node) -> std::result::Result<(), String> {
    match find(node) {
        Some((_, _, check)) => check(node),
        None if node.is_onnx_domain() => Err("no implementation for this op".into()),
        None => Err(format!(
            "custom domain '{}' has no implementation",
            node.domain
        )),
    }
}

/// Runs one node on its inputs.
pub fn run(ctx: &OpCtx) -> Result<Vec<Value>> {
    match find(ctx.node) {
        Some((_, f, check)) => {
            check(ctx.node).map_err(|reason| ctx.unsupported(&reason))?;
            f(ctx)
        }
        None => Err(ctx.unsupported(&check(ctx.node).err().unwrap_or_default())),
    }
}

/// Names of all supported ONNX ops.
pub fn supported_ops() -> Vec<&'static str> {
    table().iter().map(|(n, _, _)| *n).collect()
}
