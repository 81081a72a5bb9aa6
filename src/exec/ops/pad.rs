//! Pad: `pads`/`value` (or opset-1 `paddings`) attributes before opset 11;
//! `pads`, `constant_value` and (opset 18) `axes` inputs from opset 11.
//!
//! Modes: constant (any value; zero uses `pad_with_zeros`), reflect, edge
//! and wrap (opset 19). Negative pads crop first, then the cropped tensor is
//! padded, as onnxruntime does. Reflect, edge and wrap gather rows with
//! `index_select` along each axis, so every mode backpropagates. Reflect
//! pads wider than the axis keep reflecting (numpy's behaviour; onnxruntime
//! returns unspecified values there).

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::Node;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

fn mode_of(node: &Node) -> std::result::Result<Mode, String> {
    match node.attr_string("mode").as_deref().unwrap_or("constant") {
        "constant" => Ok(Mode::Constant),
        "reflect" => Ok(Mode::Reflect),
        "edge" => Ok(Mode::Edge),
        "wrap" => Ok(Mode::Wrap),
        other => Err(format!("pad mode '{other}'")),
    }
}

pub fn check_pad(node: &Node) -> std::result::Result<(), String> {
    mode_of(node).map(|_| ())
}

pub fn pad(ctx: &OpCtx) -> Result<Vec<Value>> {
    let v = ctx.input(0)?;
    let rank = v.rank();
    let mode = mode_of(ctx.node).map_err(|m| ctx.unsupported(&m))?;
    let attr_pads = ctx
        .node
        .attr_ints("pads")
        .or_else(|| ctx.node.attr_ints("paddings"));
    let (pads, value, axes) = match attr_pads {
        Some(p) if ctx.opset < 11 || ctx.opt_input(1).is_none() => {
            (p.to_vec(), ctx.node.float_or("value", 0.0) as f64, None)
        }
        _ => {
            let pads = ctx
                .ints_input(1)?
                .ok_or_else(|| ctx.err("missing 'pads' input"))?;
            let value = match ctx.opt_input(2) {
                Some(c) => c.to_f64_vec()?.first().copied().unwrap_or(0.0),
                None => 0.0,
            };
            (pads, value, ctx.ints_input(3)?)
        }
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| ctx.axis(a, rank))
            .collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(ctx.err(&format!("{} pads for {n} axes", pads.len())));
    }
    let mut before = vec![0i64; rank];
    let mut after = vec![0i64; rank];
    for (k, &a) in axes.iter().enumerate() {
        before[a] = pads[k];
        after[a] = pads[k + n];
    }
    let mut t = v.tensor.clone();
    // Negative pads crop.
    for a in 0..rank {
        let d = t.dims()[a] as i64;
        let (cb, ca) = ((-before[a]).max(0), (-after[a]).max(0));
        if cb + ca > d {
            return Err(ctx.err(&format!(
                "pads {pads:?} crop more than axis {a} of size {d}"
            )));
        }
        if cb + ca > 0 {
            t = t.narrow(a, cb as usize, (d - cb - ca) as usize)?;
        }
    }
    for a in 0..rank {
        let (b, e) = (before[a].max(0) as usize, after[a].max(0) as usize);
        if b == 0 && e == 0 {
            continue;
        }
        t = match mode {
            Mode::Constant if value == 0.0 => t.pad_with_zeros(a, b, e)?,
            Mode::Constant => pad_constant(&t, a, b, e, value)?,
            _ => {
                let d = t.dims()[a];
                if d == 0 {
                    return Err(ctx.err(&format!("cannot {} pad an empty axis", mode_name(mode))));
                }
                let ids = source_indices(mode, d, b, e);
                let len = ids.len();
                t.contiguous()?
                    .index_select(&Tensor::from_vec(ids, len, ctx.device)?, a)?
            }
        };
    }
    Ok(vec![Value::new(t, v.dtype)])
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Constant => "constant",
        Mode::Reflect => "reflect",
        Mode::Edge => "edge",
        Mode::Wrap => "wrap",
    }
}

/// Concatenates blocks filled with `value` before and after `t` along `axis`.
fn pad_constant(
    t: &Tensor,
    axis: usize,
    before: usize,
    after: usize,
    value: f64,
) -> Result<Tensor> {
    let block = |len: usize| -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        dims[axis] = len;
        Ok(if t.dtype().is_float() {
            Tensor::full(value, dims, t.device())?.to_dtype(t.dtype())?
        } else {
            Tensor::full(value as i64, dims, t.device())?.to_dtype(t.dtype())?
        })
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(t.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Ok(Tensor::cat(&parts, axis)?)
}

/// For output positions -before..d+after, the input index each one copies.
fn source_indices(mode: Mode, d: usize, before: usize, after: usize) -> Vec<i64> {
    let d = d as i64;
    let period = 2 * (d - 1);
    (-(before as i64)..d + after as i64)
        .map(|i| match mode {
            Mode::Edge | Mode::Constant => i.max(0).min(d - 1),
            Mode::Wrap => i.rem_euclid(d),
            Mode::Reflect if d == 1 => 0,
            Mode::Reflect => {
                let j = i.rem_euclid(period);
                if j >= d {
                    period - j
                } else {
                    j
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::graph::DType;

    fn x34() -> crate::exec::Value {
        f32v(&[3, 4], &(0..12).map(|v| v as f32).collect::<Vec<_>>())
    }

    fn pad_node(mode: &str, inputs: &[&str]) -> crate::graph::Node {
        let mut n = node("Pad", inputs);
        n.set_string("mode", mode);
        n
    }

    fn flat(rows: &[&[f32]]) -> Vec<f32> {
        rows.iter().flat_map(|r| r.iter().copied()).collect()
    }

    #[test]
    fn constant_value_input() {
        let n = pad_node("constant", &["x", "p", "v"]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x34()),
                ("p", &ints(&[1, 2, 0, 1])),
                ("v", &f32v(&[], &[2.5])),
            ],
        );
        assert_eq!(y.dims(), &[4, 7]);
        let want = flat(&[
            &[2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5],
            &[2.5, 2.5, 0.0, 1.0, 2.0, 3.0, 2.5],
            &[2.5, 2.5, 4.0, 5.0, 6.0, 7.0, 2.5],
            &[2.5, 2.5, 8.0, 9.0, 10.0, 11.0, 2.5],
        ]);
        assert_eq!(f32s(&y), want);
        // Without a value: zeros.
        let n = pad_node("constant", &["x", "p"]);
        let y = run1(&n, 13, &[("x", &x34()), ("p", &ints(&[0, 1, 0, 0]))]);
        assert_eq!(f32s(&y)[..5], [0.0, 0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn edge_reflect_wrap() {
        let n = pad_node("edge", &["x", "p"]);
        let y = run1(&n, 13, &[("x", &x34()), ("p", &ints(&[2, 1, 1, 3]))]);
        let want = flat(&[
            &[0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0],
            &[0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0],
            &[0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0],
            &[4.0, 4.0, 5.0, 6.0, 7.0, 7.0, 7.0, 7.0],
            &[8.0, 8.0, 9.0, 10.0, 11.0, 11.0, 11.0, 11.0],
            &[8.0, 8.0, 9.0, 10.0, 11.0, 11.0, 11.0, 11.0],
        ]);
        assert_eq!(f32s(&y), want);
        let n = pad_node("reflect", &["x", "p"]);
        let y = run1(&n, 13, &[("x", &x34()), ("p", &ints(&[2, 1, 1, 3]))]);
        let want = flat(&[
            &[9.0, 8.0, 9.0, 10.0, 11.0, 10.0, 9.0, 8.0],
            &[5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0],
            &[1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0],
            &[5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0],
            &[9.0, 8.0, 9.0, 10.0, 11.0, 10.0, 9.0, 8.0],
            &[5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0],
        ]);
        assert_eq!(f32s(&y), want);
        let n = pad_node("wrap", &["x", "p"]);
        let y = run1(&n, 19, &[("x", &x34()), ("p", &ints(&[1, 3, 2, 5]))]);
        assert_eq!(y.dims(), &[6, 12]);
        let rows: [[f32; 12]; 3] = [
            [
                9.0, 10.0, 11.0, 8.0, 9.0, 10.0, 11.0, 8.0, 9.0, 10.0, 11.0, 8.0,
            ],
            [1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0],
            [5.0, 6.0, 7.0, 4.0, 5.0, 6.0, 7.0, 4.0, 5.0, 6.0, 7.0, 4.0],
        ];
        let want: Vec<f32> = (0..6).flat_map(|r| rows[r % 3]).collect();
        assert_eq!(f32s(&y), want);
    }

    #[test]
    fn negative_pads_crop_then_pad() {
        // onnxruntime: pads [-1, 2, 1, -1] reflect.
        let n = pad_node("reflect", &["x", "p"]);
        let y = run1(&n, 13, &[("x", &x34()), ("p", &ints(&[-1, 2, 1, -1]))]);
        let want = flat(&[
            &[6.0, 5.0, 4.0, 5.0, 6.0],
            &[10.0, 9.0, 8.0, 9.0, 10.0],
            &[6.0, 5.0, 4.0, 5.0, 6.0],
        ]);
        assert_eq!(f32s(&y), want);
        // Integer data, constant 7, crop the last row.
        let xi = i64v(&[3, 4], &(0..12).collect::<Vec<_>>());
        let n = pad_node("constant", &["x", "p", "v"]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &xi),
                ("p", &ints(&[0, 1, -1, 0])),
                ("v", &intv(&[], &[7], DType::I32)),
            ],
        );
        assert_eq!(y.dims(), &[2, 5]);
        assert_eq!(i64s(&y), vec![7, 0, 1, 2, 3, 7, 4, 5, 6, 7]);
        assert!(run_node(
            &n,
            13,
            &[
                ("x", &xi),
                ("p", &ints(&[-2, 0, -2, 0])),
                ("v", &intv(&[], &[7], DType::I32))
            ]
        )
        .is_err());
    }

    #[test]
    fn opset18_axes_and_opset2_attributes() {
        let n = pad_node("reflect", &["x", "p", "", "a"]);
        let y = run1(
            &n,
            18,
            &[("x", &x34()), ("p", &ints(&[1, 3])), ("a", &ints(&[-1]))],
        );
        let want = flat(&[
            &[1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0],
            &[5.0, 4.0, 5.0, 6.0, 7.0, 6.0, 5.0, 4.0],
            &[9.0, 8.0, 9.0, 10.0, 11.0, 10.0, 9.0, 8.0],
        ]);
        assert_eq!(f32s(&y), want);
        let mut n = pad_node("constant", &["x"]);
        n.set_ints("pads", &[0, 1, 1, 0]);
        n.set_float("value", -1.0);
        let y = run1(&n, 9, &[("x", &x34())]);
        let want = flat(&[
            &[-1.0, 0.0, 1.0, 2.0, 3.0],
            &[-1.0, 4.0, 5.0, 6.0, 7.0],
            &[-1.0, 8.0, 9.0, 10.0, 11.0],
            &[-1.0, -1.0, -1.0, -1.0, -1.0],
        ]);
        assert_eq!(f32s(&y), want);
    }

    #[test]
    fn wide_reflect_and_bad_mode() {
        // Reflect wider than the axis keeps reflecting (numpy).
        let x = f32v(&[3], &[1.0, 2.0, 3.0]);
        let n = pad_node("reflect", &["x", "p"]);
        let y = run1(&n, 13, &[("x", &x), ("p", &ints(&[3, 4]))]);
        assert_eq!(
            f32s(&y),
            vec![2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]
        );
        let n = pad_node("mirror", &["x", "p"]);
        assert!(super::check_pad(&n).is_err());
    }

    #[test]
    fn gradients_flow() {
        let x = f32v(&[2, 3], &[0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
        for mode in ["constant", "reflect", "edge", "wrap"] {
            let n = pad_node(mode, &["x", "p", "v"]);
            let feeds = [
                ("x", &x),
                ("p", &ints(&[1, 2, -1, 1])),
                ("v", &f32v(&[], &[0.5])),
            ];
            grad_check(&n, 19, &feeds, "x");
        }
    }
}
