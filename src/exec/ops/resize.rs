//! Resize (opsets 10 to 19) and the deprecated Upsample (opsets 7 and 9).
//!
//! Supported: modes `nearest` (nearest_mode round_prefer_floor,
//! round_prefer_ceil, floor, ceil) and `linear` (separable N-linear, any
//! rank), every coordinate_transformation_mode (half_pixel,
//! half_pixel_symmetric, pytorch_half_pixel, align_corners, asymmetric,
//! tf_half_pixel_for_nn, tf_crop_and_resize with roi and
//! extrapolation_value), `scales` or `sizes`, opset-18 `axes` and
//! keep_aspect_ratio_policy. Cubic mode and antialiased linear resizing are
//! reported unsupported by `check_resize`. Integer inputs support nearest only.
//!
//! Per axis, source coordinates and weights are computed on the host in f32
//! with onnxruntime's formulas (so ties round the same way); the data is
//! moved with `index_select` and blended with broadcast multiplies, all of
//! which backpropagate. Resize-10 and Upsample use onnxruntime's legacy
//! rules: asymmetric coordinates, and nearest truncates when upsampling and
//! rounds up when downsampling.

use candle_core::Tensor;

use super::OpCtx;
use crate::exec::error::Result;
use crate::exec::Value;
use crate::graph::Node;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Legacy (Resize-10, Upsample): truncate, or ceil when downsampling.
    Simple,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Nearest(Nearest),
    Linear,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Policy {
    Stretch,
    NotLarger,
    NotSmaller,
}

struct Settings {
    mode: Mode,
    coord: Coord,
    policy: Policy,
    extrapolation: f32,
}

fn is_legacy(node: &Node, opset: i64) -> bool {
    node.op_type == "Upsample" || opset < 11
}

fn settings(node: &Node, opset: i64) -> std::result::Result<Settings, String> {
    let legacy = is_legacy(node, opset);
    let text = |name: &str, default: &str| {
        node.attr_string(name)
            .unwrap_or_else(|| default.to_string())
    };
    let nearest = match text("nearest_mode", "round_prefer_floor").as_str() {
        _ if legacy => Nearest::Simple,
        "round_prefer_floor" => Nearest::RoundPreferFloor,
        "round_prefer_ceil" => Nearest::RoundPreferCeil,
        "floor" => Nearest::Floor,
        "ceil" => Nearest::Ceil,
        other => return Err(format!("nearest_mode '{other}'")),
    };
    let mode = match text("mode", "nearest").as_str() {
        "nearest" => Mode::Nearest(nearest),
        "linear" | "bilinear" | "trilinear" => Mode::Linear,
        "cubic" => return Err("cubic interpolation (mode 'cubic')".into()),
        other => return Err(format!("mode '{other}'")),
    };
    let coord = match text("coordinate_transformation_mode", "half_pixel").as_str() {
        _ if legacy => Coord::Asymmetric,
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        "tf_crop_and_resize" => Coord::TfCropAndResize,
        other => return Err(format!("coordinate_transformation_mode '{other}'")),
    };
    let policy = match text("keep_aspect_ratio_policy", "stretch").as_str() {
        "stretch" => Policy::Stretch,
        "not_larger" => Policy::NotLarger,
        "not_smaller" => Policy::NotSmaller,
        other => return Err(format!("keep_aspect_ratio_policy '{other}'")),
    };
    if node.int_or("antialias", 0) != 0 && mode == Mode::Linear {
        return Err("antialiased linear resizing (antialias=1)".into());
    }
    Ok(Settings {
        mode,
        coord,
        policy,
        extrapolation: node.float_or("extrapolation_value", 0.0),
    })
}

pub fn check_resize(node: &Node) -> std::result::Result<(), String> {
    settings(node, 19).map(|_| ())
}

/// Where one axis' output positions read from.
struct AxisPlan {
    lo: Vec<i64>,
    hi: Vec<i64>,
    w_lo: Vec<f32>,
    w_hi: Vec<f32>,
    /// Positions outside the input (tf_crop_and_resize extrapolation).
    outside: Vec<bool>,
}

impl AxisPlan {
    /// True when every position just copies one input element.
    fn is_selection(&self) -> bool {
        (0..self.lo.len()).all(|i| self.lo[i] == self.hi[i] || self.w_hi[i] == 0.0)
    }

    fn is_identity(&self, len_in: usize) -> bool {
        self.lo.len() == len_in
            && self.is_selection()
            && self.lo.iter().enumerate().all(|(i, &l)| l == i as i64)
            && !self.outside.contains(&true)
    }
}

/// onnxruntime's coordinate transforms, in f32.
fn original_coord(c: Coord, x: f32, scale: f32, len_out: f32, len_in: f32, roi: (f32, f32)) -> f32 {
    match c {
        Coord::HalfPixel => (x + 0.5) / scale - 0.5,
        Coord::HalfPixelSymmetric => {
            let adjustment = len_out / (scale * len_in);
            let center = len_in / 2.0;
            let offset = center * (1.0 - adjustment);
            // onnxruntime finishes this one in f64.
            (offset as f64 + (x as f64 + 0.5) / scale as f64 - 0.5) as f32
        }
        Coord::PytorchHalfPixel if len_out > 1.0 => (x + 0.5) / scale - 0.5,
        Coord::PytorchHalfPixel => 0.0,
        Coord::AlignCorners if len_out == 1.0 => 0.0,
        Coord::AlignCorners => x * (len_in - 1.0) / (len_out - 1.0),
        Coord::Asymmetric => x / scale,
        Coord::TfHalfPixelForNn => (x + 0.5) / scale,
        Coord::TfCropAndResize if len_out > 1.0 => {
            roi.0 * (len_in - 1.0) + (x * (roi.1 - roi.0) * (len_in - 1.0)) / (len_out - 1.0)
        }
        Coord::TfCropAndResize => (0.5 * (roi.0 + roi.1) as f64 * (len_in - 1.0) as f64) as f32,
    }
}

/// onnxruntime's nearest-pixel rules (before clamping).
fn nearest_index(n: Nearest, x: f32, downsampling: bool) -> i64 {
    let half_tie = x == (x as i64) as f32 + 0.5;
    match n {
        Nearest::RoundPreferFloor if half_tie => x.floor() as i64,
        Nearest::RoundPreferFloor | Nearest::RoundPreferCeil => x.round() as i64,
        Nearest::Floor => x.floor() as i64,
        Nearest::Ceil => x.ceil() as i64,
        Nearest::Simple if downsampling => x.ceil() as i64,
        Nearest::Simple => x as i64,
    }
}

fn plan_axis(s: &Settings, len_in: usize, len_out: usize, scale: f32, roi: (f32, f32)) -> AxisPlan {
    let last = len_in as i64 - 1;
    let mut p = AxisPlan {
        lo: Vec::with_capacity(len_out),
        hi: Vec::with_capacity(len_out),
        w_lo: Vec::with_capacity(len_out),
        w_hi: Vec::with_capacity(len_out),
        outside: Vec::with_capacity(len_out),
    };
    for x in 0..len_out {
        let orig = original_coord(s.coord, x as f32, scale, len_out as f32, len_in as f32, roi);
        p.outside
            .push(s.coord == Coord::TfCropAndResize && (orig < 0.0 || orig > last as f32));
        match s.mode {
            Mode::Nearest(n) => {
                let i = nearest_index(n, orig, scale < 1.0).max(0).min(last);
                p.lo.push(i);
                p.hi.push(i);
                p.w_lo.push(1.0);
                p.w_hi.push(0.0);
            }
            Mode::Linear => {
                let xo = orig.max(0.0).min(last as f32);
                let x1 = (xo as i64).min(last);
                let x2 = (x1 + 1).min(last);
                let (d1, d2) = if x1 == x2 {
                    (0.5, 0.5)
                } else {
                    ((xo - x1 as f32).abs(), (xo - x2 as f32).abs())
                };
                p.lo.push(x1);
                p.hi.push(x2);
                p.w_lo.push(d2);
                p.w_hi.push(d1);
            }
        }
    }
    p
}

/// A non-empty optional input, read as f32.
fn floats_input(ctx: &OpCtx, i: usize) -> Result<Option<Vec<f32>>> {
    match ctx.opt_input(i) {
        Some(v) if v.tensor.elem_count() > 0 => Ok(Some(
            v.to_f64_vec()?.into_iter().map(|x| x as f32).collect(),
        )),
        _ => Ok(None),
    }
}

pub fn resize(ctx: &OpCtx) -> Result<Vec<Value>> {
    let s = settings(ctx.node, ctx.opset).map_err(|r| ctx.unsupported(&r))?;
    let x = ctx.input(0)?;
    let rank = x.rank();
    let dims = x.dims().to_vec();
    let legacy = is_legacy(ctx.node, ctx.opset);
    let axes: Vec<usize> = match ctx.node.attr_ints("axes") {
        Some(a) if !legacy => {
            let axes: Vec<usize> = a
                .iter()
                .map(|&a| ctx.axis(a, rank))
                .collect::<Result<_>>()?;
            if (1..axes.len()).any(|i| axes[..i].contains(&axes[i])) {
                return Err(ctx.err(&format!("repeated axes {a:?}")));
            }
            axes
        }
        _ => (0..rank).collect(),
    };
    let (roi, scales, sizes) = if ctx.node.op_type == "Upsample" {
        let scales = match ctx.node.attr_floats("scales") {
            Some(f) => Some(f.to_vec()),
            None => floats_input(ctx, 1)?,
        };
        (None, scales, None)
    } else if ctx.opset < 11 {
        (None, floats_input(ctx, 1)?, None)
    } else {
        let sizes = ctx.ints_input(3)?.filter(|v| !v.is_empty());
        (floats_input(ctx, 1)?, floats_input(ctx, 2)?, sizes)
    };
    let n = axes.len();
    let mut scale = vec![1f32; rank];
    let mut out = dims.clone();
    match (scales, sizes) {
        (Some(_), Some(_)) => return Err(ctx.err("only one of 'scales' and 'sizes' may be given")),
        (None, None) => return Err(ctx.err("one of 'scales' and 'sizes' must be given")),
        (Some(sc), None) => {
            if sc.len() != n {
                return Err(ctx.err(&format!("{} scales for {n} axes", sc.len())));
            }
            for (k, &a) in axes.iter().enumerate() {
                if sc[k].is_nan() || sc[k] <= 0.0 {
                    return Err(ctx.err(&format!("scale {} must be positive", sc[k])));
                }
                scale[a] = sc[k];
                out[a] = (dims[a] as f32 * sc[k]) as usize;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != n || sz.iter().any(|&v| v < 0) {
                return Err(ctx.err(&format!("sizes {sz:?} do not fit {n} axes")));
            }
            let ratio = |k: usize| sz[k] as f32 / dims[axes[k]] as f32;
            let shared = match s.policy {
                Policy::Stretch => None,
                Policy::NotLarger => Some((0..n).map(ratio).fold(f32::MAX, f32::min)),
                Policy::NotSmaller => Some((0..n).map(ratio).fold(f32::MIN, f32::max)),
            };
            for (k, &a) in axes.iter().enumerate() {
                match shared {
                    None => {
                        scale[a] = ratio(k);
                        out[a] = sz[k] as usize;
                    }
                    Some(r) => {
                        scale[a] = r;
                        out[a] = (r * dims[a] as f32).round() as usize;
                    }
                }
            }
        }
    }
    let mut roi_of = vec![(0f32, 1f32); rank];
    if let (Coord::TfCropAndResize, Some(r)) = (s.coord, roi.as_ref()) {
        if r.len() == 2 * rank {
            (0..rank).for_each(|a| roi_of[a] = (r[a], r[a + rank]));
        } else if r.len() == 2 * n {
            axes.iter()
                .enumerate()
                .for_each(|(k, &a)| roi_of[a] = (r[k], r[k + n]));
        } else {
            return Err(ctx.err(&format!("roi has {} values for rank {rank}", r.len())));
        }
    }
    let is_float = x.tensor.dtype().is_float();
    if !is_float && s.mode == Mode::Linear {
        return Err(ctx.unsupported("linear resizing of integer tensors"));
    }
    let mut t = x.tensor.clone();
    // Like onnxruntime: an unchanged shape copies the input, and an axis
    // with scale 1 maps one to one (except nearest on rank-1 inputs).
    if out == dims {
        return Ok(vec![x.clone()]);
    }
    let mut mask: Option<Tensor> = None;
    for a in 0..rank {
        if out[a] == 0 {
            t = t.narrow(a, 0, 0)?;
            continue;
        }
        if dims[a] == 0 {
            return Err(ctx.err(&format!("cannot resize an empty axis {a} to {}", out[a])));
        }
        if scale[a] == 1.0 && out[a] == dims[a] && (s.mode == Mode::Linear || rank > 1) {
            continue;
        }
        let p = plan_axis(&s, dims[a], out[a], scale[a], roi_of[a]);
        if p.is_identity(dims[a]) {
            continue;
        }
        t = apply_axis(&t, a, &p)?;
        if p.outside.contains(&true) {
            let m: Vec<u8> = p.outside.iter().map(|&o| o as u8).collect();
            let mut shape = vec![1usize; rank];
            shape[a] = out[a];
            let m = Tensor::from_vec(m, shape, ctx.device)?;
            mask = Some(match mask {
                Some(prev) => prev.broadcast_maximum(&m)?,
                None => m,
            });
        }
    }
    if let Some(m) = mask {
        let fill = if is_float {
            Tensor::full(s.extrapolation as f64, t.shape(), ctx.device)?.to_dtype(t.dtype())?
        } else {
            Tensor::full(s.extrapolation as i64, t.shape(), ctx.device)?
        };
        t = m.broadcast_as(t.shape())?.where_cond(&fill, &t)?;
    }
    Ok(vec![Value::new(t, x.dtype)])
}

/// Resamples `t` along `axis` per `p`.
fn apply_axis(t: &Tensor, axis: usize, p: &AxisPlan) -> Result<Tensor> {
    let t = t.contiguous()?;
    let len = p.lo.len();
    let lo = Tensor::from_vec(p.lo.clone(), len, t.device())?;
    let t_lo = t.index_select(&lo, axis)?;
    if p.is_selection() {
        return Ok(t_lo);
    }
    let hi = Tensor::from_vec(p.hi.clone(), len, t.device())?;
    let t_hi = t.index_select(&hi, axis)?;
    let mut shape = vec![1usize; t.rank()];
    shape[axis] = len;
    let weights = |w: &[f32]| -> Result<Tensor> {
        Ok(Tensor::from_vec(w.to_vec(), shape.as_slice(), t.device())?.to_dtype(t.dtype())?)
    };
    Ok((t_lo.broadcast_mul(&weights(&p.w_lo)?)? + t_hi.broadcast_mul(&weights(&p.w_hi)?)?)?)
}

#[cfg(test)]
mod tests {
    use super::super::op_test_util::*;
    use crate::exec::Value;
    use crate::graph::{DType, Node};

    fn resize_node(attrs: &[(&str, &str)]) -> Node {
        let mut n = node("Resize", &["x", "roi", "scales", "sizes"]);
        for (k, v) in attrs {
            n.set_string(k, v);
        }
        n
    }

    fn x5() -> Value {
        f32v(&[1, 1, 1, 5], &[1., 2., 3., 4., 5.])
    }

    fn fl(v: &[f32]) -> Value {
        f32v(&[v.len()], v)
    }

    fn by_scales(n: &Node, opset: i64, x: &Value, scales: &[f32]) -> Value {
        let mut n = n.clone();
        n.inputs = vec!["x".into(), "".into(), "scales".into()];
        run1(&n, opset, &[("x", x), ("scales", &fl(scales))])
    }

    fn by_sizes(n: &Node, opset: i64, x: &Value, sizes: &[i64]) -> Value {
        let mut n = n.clone();
        n.inputs = vec!["x".into(), "".into(), "".into(), "sizes".into()];
        run1(&n, opset, &[("x", x), ("sizes", &ints(sizes))])
    }

    #[track_caller]
    fn expect(y: &Value, shape: &[usize], want: &[f32]) {
        assert_eq!(y.dims(), shape);
        assert_close(&f32s(y), want, 1e-6);
    }

    #[test]
    fn nearest_modes() {
        let hp = resize_node(&[("mode", "nearest")]);
        expect(
            &by_scales(&hp, 13, &x5(), &[1., 1., 1., 1.7]),
            &[1, 1, 1, 8],
            &[1., 1., 2., 3., 3., 4., 4., 5.],
        );
        let asym = |nm: &str| {
            resize_node(&[
                ("mode", "nearest"),
                ("coordinate_transformation_mode", "asymmetric"),
                ("nearest_mode", nm),
            ])
        };
        expect(
            &by_scales(&asym("floor"), 13, &x5(), &[1., 1., 1., 0.6]),
            &[1, 1, 1, 3],
            &[1., 2., 4.],
        );
        expect(
            &by_scales(&asym("round_prefer_ceil"), 13, &x5(), &[1., 1., 1., 1.7]),
            &[1, 1, 1, 8],
            &[1., 2., 2., 3., 3., 4., 5., 5.],
        );
        expect(
            &by_scales(&asym("ceil"), 13, &x5(), &[1., 1., 1., 1.7]),
            &[1, 1, 1, 8],
            &[1., 2., 3., 3., 4., 4., 5., 5.],
        );
        let ac = |nm: &str| {
            resize_node(&[
                ("mode", "nearest"),
                ("coordinate_transformation_mode", "align_corners"),
                ("nearest_mode", nm),
            ])
        };
        // Exact .5 ties: prefer floor vs prefer ceil.
        expect(
            &by_sizes(&ac("round_prefer_floor"), 13, &x5(), &[1, 1, 1, 9]),
            &[1, 1, 1, 9],
            &[1., 1., 2., 2., 3., 3., 4., 4., 5.],
        );
        expect(
            &by_sizes(&ac("round_prefer_ceil"), 13, &x5(), &[1, 1, 1, 9]),
            &[1, 1, 1, 9],
            &[1., 2., 2., 3., 3., 4., 4., 5., 5.],
        );
        let sym = resize_node(&[
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "half_pixel_symmetric"),
        ]);
        expect(
            &by_scales(&sym, 19, &x5(), &[1., 1., 1., 0.7]),
            &[1, 1, 1, 3],
            &[2., 3., 4.],
        );
        let tfnn = resize_node(&[
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "tf_half_pixel_for_nn"),
        ]);
        expect(
            &by_scales(&tfnn, 11, &x5(), &[1., 1., 1., 1.5]),
            &[1, 1, 1, 7],
            &[1., 2., 3., 3., 4., 5., 5.],
        );
    }

    #[test]
    fn legacy_resize10_and_upsample() {
        let mut n = node("Resize", &["x", "scales"]);
        n.set_string("mode", "nearest");
        let run = |n: &Node, sc: &[f32]| run1(n, 10, &[("x", &x5()), ("scales", &fl(sc))]);
        expect(&run(&n, &[1., 1., 1., 0.6]), &[1, 1, 1, 3], &[1., 3., 5.]);
        expect(
            &run(&n, &[1., 1., 1., 2.]),
            &[1, 1, 1, 10],
            &[1., 1., 2., 2., 3., 3., 4., 4., 5., 5.],
        );
        n.set_string("mode", "linear");
        expect(
            &run(&n, &[1., 1., 1., 0.6]),
            &[1, 1, 1, 3],
            &[1., 2.666_666_5, 4.333_333],
        );
        let x22 = f32v(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let mut up = node("Upsample", &["x", "scales"]);
        up.set_string("mode", "nearest");
        let y = run1(&up, 9, &[("x", &x22), ("scales", &fl(&[1., 1., 2., 3.]))]);
        let want = [
            1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 3., 3., 3., 4.,
            4., 4.,
        ];
        expect(&y, &[1, 1, 4, 6], &want);
        let mut up7 = node("Upsample", &["x"]);
        up7.set_string("mode", "linear");
        up7.attributes.push(crate::onnx::proto::AttributeProto {
            name: Some("scales".into()),
            floats: vec![1.0, 1.0, 2.0, 2.0],
            r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Floats as i32),
            ..Default::default()
        });
        let y = run1(&up7, 7, &[("x", &x22)]);
        expect(
            &y,
            &[1, 1, 4, 4],
            &[
                1., 1.5, 2., 2., 2., 2.5, 3., 3., 3., 3.5, 4., 4., 3., 3.5, 4., 4.,
            ],
        );
    }

    #[test]
    fn linear_coordinate_modes() {
        let x23 = f32v(&[1, 1, 2, 3], &[1., 2., 4., 3., 7., 5.]);
        let hp = resize_node(&[("mode", "linear")]);
        let want = [
            1.0, 1.4000001, 2.0, 3.2000003, 4.0, 2.0, 3.0, 4.5, 4.5, 4.5, 3.0, 4.6000004, 7.0,
            5.7999997, 5.0,
        ];
        expect(
            &by_sizes(&hp, 13, &x23, &[1, 1, 3, 5]),
            &[1, 1, 3, 5],
            &want,
        );
        let x22 = f32v(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
        let ac = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "align_corners"),
        ]);
        let want = [
            1.0, 1.3333333, 1.6666667, 2.0, 1.6666666, 2.0, 2.3333335, 2.6666667, 2.3333333,
            2.6666665, 3.0, 3.3333335, 3.0, 3.3333333, 3.6666665, 4.0,
        ];
        expect(
            &by_sizes(&ac, 13, &x22, &[1, 1, 4, 4]),
            &[1, 1, 4, 4],
            &want,
        );
        let pt = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "pytorch_half_pixel"),
        ]);
        expect(
            &by_sizes(&pt, 13, &x23, &[1, 1, 1, 4]),
            &[1, 1, 1, 4],
            &[1.0, 1.625, 2.75, 4.0],
        );
        let sym = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "half_pixel_symmetric"),
        ]);
        let want = [
            1.0, 1.5294118, 2.1176472, 2.7058823, 3.2941175, 3.8823528, 4.470588, 5.0,
        ];
        expect(
            &by_scales(&sym, 19, &x5(), &[1., 1., 1., 1.7]),
            &[1, 1, 1, 8],
            &want,
        );
        let asym = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "asymmetric"),
        ]);
        let want = [1.0, 1.4, 1.8, 2.2, 2.6, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0, 5.0];
        expect(
            &by_scales(&asym, 13, &x5(), &[1., 1., 1., 2.5]),
            &[1, 1, 1, 12],
            &want,
        );
    }

    #[test]
    fn tf_crop_and_resize() {
        let x16 = f32v(
            &[1, 1, 4, 4],
            &(1..=16).map(|v| v as f32).collect::<Vec<_>>(),
        );
        let mut lin = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "tf_crop_and_resize"),
        ]);
        lin.set_float("extrapolation_value", 10.0);
        let roi = fl(&[0., 0., -0.2, 0.6, 1., 1., 0.6, 1.3]);
        let mut n = lin.clone();
        n.inputs = vec!["x".into(), "roi".into(), "".into(), "sizes".into()];
        let y = run1(
            &n,
            13,
            &[("x", &x16), ("roi", &roi), ("sizes", &ints(&[1, 1, 3, 3]))],
        );
        expect(
            &y,
            &[1, 1, 3, 3],
            &[10.0, 10.0, 10.0, 5.2000003, 6.25, 10.0, 10.0, 11.05, 10.0],
        );
        n.set_string("mode", "nearest");
        let y = run1(
            &n,
            13,
            &[("x", &x16), ("roi", &roi), ("sizes", &ints(&[1, 1, 3, 3]))],
        );
        expect(
            &y,
            &[1, 1, 3, 3],
            &[10., 10., 10., 7., 8., 10., 11., 12., 10.],
        );
        // Scales: output size ignores the roi (onnxruntime).
        let mut n = lin.clone();
        n.inputs = vec!["x".into(), "roi".into(), "scales".into()];
        let roi = fl(&[0., 0., 0.4, 0.6, 1., 1., 0.6, 0.8]);
        let y = run1(
            &n,
            13,
            &[
                ("x", &x16),
                ("roi", &roi),
                ("scales", &fl(&[1., 1., 2., 2.])),
            ],
        );
        assert_eq!(y.dims(), &[1, 1, 8, 8]);
        let got = f32s(&y);
        assert_close(
            &got[..8],
            &[
                7.600001, 7.685714, 7.771429, 7.857143, 7.9428573, 8.028572, 8.114285, 8.2,
            ],
            1e-6,
        );
        assert_close(
            &got[56..],
            &[
                10.0, 10.085714, 10.171429, 10.257144, 10.342857, 10.428572, 10.514286, 10.6,
            ],
            1e-6,
        );
        // Opset 18 axes with a per-axis roi.
        let mut n = resize_node(&[
            ("mode", "nearest"),
            ("coordinate_transformation_mode", "tf_crop_and_resize"),
        ]);
        n.set_float("extrapolation_value", 10.0);
        n.set_ints("axes", &[3]);
        n.inputs = vec!["x".into(), "roi".into(), "".into(), "sizes".into()];
        let y = run1(
            &n,
            18,
            &[
                ("x", &x16),
                ("roi", &fl(&[0.6, 1.3])),
                ("sizes", &ints(&[3])),
            ],
        );
        expect(
            &y,
            &[1, 1, 4, 3],
            &[3., 4., 10., 7., 8., 10., 11., 12., 10., 15., 16., 10.],
        );
    }

    #[test]
    fn axes_and_keep_aspect_ratio() {
        let x30 = f32v(
            &[1, 1, 5, 6],
            &(0..30).map(|v| v as f32).collect::<Vec<_>>(),
        );
        let mut n = resize_node(&[
            ("mode", "linear"),
            ("keep_aspect_ratio_policy", "not_larger"),
        ]);
        n.set_ints("axes", &[2, 3]);
        let y = by_sizes(&n, 18, &x30, &[9, 10]);
        assert_eq!(y.dims(), &[1, 1, 8, 10]);
        let got = f32s(&y);
        // Rows use the shared scale 10/6, not 8/5.
        let col0: Vec<f32> = (0..8).map(|r| got[r * 10]).collect();
        assert_close(&col0, &[0.0, 2.4, 6.0, 9.6, 13.2, 16.8, 20.4, 24.0], 1e-6);
        assert_close(
            &got[..10],
            &[0.0, 0.4, 1.0, 1.6, 2.2, 2.8, 3.4, 4.0, 4.6, 5.0],
            1e-6,
        );
        let mut n = resize_node(&[
            ("mode", "nearest"),
            ("keep_aspect_ratio_policy", "not_smaller"),
        ]);
        n.set_ints("axes", &[-2, -1]);
        let y = by_sizes(&n, 18, &x30, &[3, 3]);
        expect(
            &y,
            &[1, 1, 3, 4],
            &[0., 2., 4., 5., 12., 14., 16., 17., 24., 26., 28., 29.],
        );
        let x23 = f32v(&[1, 1, 2, 3], &[1., 2., 4., 3., 7., 5.]);
        let mut n = resize_node(&[("mode", "linear")]);
        n.set_ints("axes", &[3]);
        let y = by_scales(&n, 18, &x23, &[2.0]);
        expect(
            &y,
            &[1, 1, 2, 6],
            &[1.0, 1.25, 1.75, 2.5, 3.5, 4.0, 3.0, 4.0, 6.0, 6.5, 5.5, 5.0],
        );
    }

    #[test]
    fn integer_nearest_and_unsupported() {
        let xi = intv(&[1, 1, 2, 2], &[1, 2, 3, 4], DType::I32);
        let n = resize_node(&[("mode", "nearest")]);
        let y = by_scales(&n, 13, &xi, &[1., 1., 1.5, 2.]);
        assert_eq!(y.dtype, DType::I32);
        assert_eq!(y.dims(), &[1, 1, 3, 4]);
        assert_eq!(i64s(&y), vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert!(super::check_resize(&resize_node(&[("mode", "cubic")])).is_err());
        let mut aa = resize_node(&[("mode", "linear")]);
        aa.set_int("antialias", 1);
        assert!(super::check_resize(&aa).is_err());
        assert!(super::check_resize(&resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "bogus")
        ]))
        .is_err());
        let lin = resize_node(&[("mode", "linear")]);
        let mut n = lin.clone();
        n.inputs = vec!["x".into(), "".into(), "scales".into()];
        assert!(run_node(&n, 13, &[("x", &xi), ("scales", &fl(&[1., 1., 2., 2.]))]).is_err());
        // Identity scales return the input unchanged.
        let y = by_scales(&lin, 13, &x5(), &[1., 1., 1., 1.]);
        expect(&y, &[1, 1, 1, 5], &[1., 2., 3., 4., 5.]);
    }

    #[test]
    fn gradients_flow() {
        let x = f32v(&[1, 1, 2, 3], &[0.5, -1.0, 2.0, 1.5, 0.25, -0.75]);
        for mode in ["linear", "nearest"] {
            let mut n = resize_node(&[("mode", mode)]);
            n.inputs = vec!["x".into(), "".into(), "scales".into()];
            grad_check(
                &n,
                13,
                &[("x", &x), ("scales", &fl(&[1., 1., 1.7, 2.5]))],
                "x",
            );
        }
        let mut n = resize_node(&[
            ("mode", "linear"),
            ("coordinate_transformation_mode", "tf_crop_and_resize"),
        ]);
        n.inputs = vec!["x".into(), "roi".into(), "".into(), "sizes".into()];
        let roi = fl(&[0., 0., -0.2, 0.1, 1., 1., 1.2, 0.9]);
        grad_check(
            &n,
            13,
            &[("x", &x), ("roi", &roi), ("sizes", &ints(&[1, 1, 4, 4]))],
            "x",
        );
    }
}
