//! The block plan on small MobileNetV2-style graphs, and fused runs against plain ones.

use super::*;
use crate::exec::{ExecOptions, Executor, Value};
use crate::graph::{topological_order, DType};
use crate::passes::tests as t;
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap as Map};

/// Input channels of `block_model`'s input `[2, C, S, S]`: with an expansion, and without.
fn channels(expand: bool) -> i64 {
    if expand {
        8
    } else {
        64
    }
}
const S: i64 = 48;

/// `x [2, C, S, S] -> [1x1 Conv C->64 -> Clip] -> depthwise 3x3 (stride) -> Clip -> 1x1 Conv
/// 64->C -> (Add x when stride 1 | Relu)`; without `expand`, the depthwise convolution reads
/// `x` (C = 64). The expanded activations (576 KiB per image) are large enough to fuse.
fn block_model(expand: bool, stride: i64) -> Model {
    let mut rng = t::Rng::new(17);
    let (c, hidden) = (channels(expand), 64);
    let mut inits = vec![
        t::init(&mut rng, "wd", &[hidden, 1, 3, 3], 0.0),
        t::init(&mut rng, "bd", &[hidden], 0.0),
        t::init(&mut rng, "wp", &[c, hidden, 1, 1], 0.0),
        t::init(&mut rng, "bp", &[c], 0.0),
        crate::graph::Tensor::from_f32("lo", vec![], &[0.0]).unwrap(),
        crate::graph::Tensor::from_f32("hi", vec![], &[0.8]).unwrap(),
    ];
    let mut nodes = Vec::new();
    let mut dw_in = "x";
    if expand {
        inits.push(t::init(&mut rng, "we", &[hidden, c, 1, 1], 0.0));
        inits.push(t::init(&mut rng, "be", &[hidden], 0.0));
        nodes.push(t::node("e", "Conv", &["x", "we", "be"], &["e_out"]));
        nodes.push(t::node("e_act", "Clip", &["e_out", "lo", "hi"], &["e_act"]));
        dw_in = "e_act";
    }
    let mut dw = t::node("d", "Conv", &[dw_in, "wd", "bd"], &["d_out"]);
    dw.set_int("group", hidden);
    dw.set_ints("pads", &[1, 1, 1, 1]);
    dw.set_ints("strides", &[stride, stride]);
    nodes.push(dw);
    nodes.push(t::node("d_act", "Clip", &["d_out", "lo", "hi"], &["d_act"]));
    nodes.push(t::node("p", "Conv", &["d_act", "wp", "bp"], &["p_out"]));
    match stride {
        1 => nodes.push(t::node("add", "Add", &["p_out", "x"], &["y"])),
        _ => nodes.push(t::node("relu", "Relu", &["p_out"], &["y"])),
    }
    t::model(nodes, &[("x", &[2, c, S, S])], &["y"], inits, 13)
}

fn blocks(m: &Model, trainable: bool) -> Vec<Option<BlockFusion>> {
    let order = topological_order(&m.graph).unwrap();
    let nodes: Vec<Node> = order.iter().map(|&i| m.graph.nodes[i].clone()).collect();
    let fusions = super::super::fusion::plan(m, &nodes, trainable);
    plan(m, &nodes, &fusions, trainable)
}

#[test]
fn plans_the_whole_block_from_its_first_convolution() {
    let plan = blocks(&block_model(true, 1), false);
    let b = plan[0].clone().expect("a block at the expansion");
    assert_eq!((b.expand, b.depthwise, b.project), (Some(0), 2, 4));
    assert_eq!(b.residual, Some((5, 1)));
    assert_eq!(b.output, "y");
    let mut absorbed = b.absorbed.clone();
    absorbed.sort();
    assert_eq!(absorbed, [1, 2, 3, 4, 5]);
    let mut unproduced = b.unproduced.clone();
    unproduced.sort();
    assert_eq!(unproduced, ["d_act", "d_out", "e_act", "e_out", "p_out"]);
    assert!(plan[1..].iter().all(Option::is_none));
    // Without an expansion the block starts at the depthwise convolution.
    let plan = blocks(&block_model(false, 2), false);
    let b = plan[0]
        .clone()
        .expect("a block at the depthwise convolution");
    assert_eq!(
        (b.expand, b.depthwise, b.project, b.residual),
        (None, 0, 2, None)
    );
    assert_eq!(b.activations[2], FusedActivation::Relu);
    // Training executors never fuse blocks.
    assert!(blocks(&block_model(true, 1), true)
        .iter()
        .all(Option::is_none));
}

#[test]
fn a_second_reader_of_an_intermediate_stops_the_block() {
    let mut m = block_model(true, 1);
    m.graph
        .nodes
        .push(t::node("peek", "Relu", &["e_act"], &["peek"]));
    m.graph.outputs.push(crate::graph::ValueInfo {
        name: "peek".into(),
        ..Default::default()
    });
    // No block through `e_act`: the only one left starts at the depthwise convolution.
    let plan: Vec<BlockFusion> = blocks(&m, false).into_iter().flatten().collect();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].expand, None);
    assert!(!plan[0].unproduced.contains(&"e_act".to_string()));
}

/// A deterministic input for `block_model` with `c` channels.
fn input(c: usize) -> Map<String, Value> {
    let s = S as usize;
    let v = t::Rng::new(5).vec(2 * c * s * s);
    let x = Tensor::from_vec(v, (2, c, s, s), &Device::Cpu).unwrap();
    Map::from([("x".to_string(), Value::new(x, DType::F32))])
}

/// The output of `m` on `input()`, and the ops the run timed; with `watch`, a run that
/// observes that value (and checks that it was seen).
fn run(m: &Model, options: ExecOptions, watch: Option<&str>) -> (Vec<f32>, Vec<String>) {
    let c = m.graph.initializers["bp"].dims[0] as usize;
    let exec = Executor::new(m, options).unwrap();
    let mut times = Vec::new();
    let y = match watch {
        None => {
            exec.run_timed(&input(c), &mut times)
                .unwrap()
                .remove(0)
                .tensor
        }
        Some(w) => {
            let mut seen = BTreeMap::new();
            let out = exec
                .run_observed(&input(c), &|n| n == w, &mut |n, v| {
                    seen.insert(n.to_string(), v.dims().to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(seen.keys().collect::<Vec<_>>(), [w]);
            out.into_iter().next().unwrap().tensor
        }
    };
    let y = y.detach().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (y, times.into_iter().map(|t| t.op).collect())
}

fn assert_same_bits(a: &[f32], b: &[f32], case: &str) {
    assert_eq!(a.len(), b.len(), "{case}");
    let bad = a
        .iter()
        .zip(b)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(bad, None, "{case}: first differing value");
}

#[test]
fn fused_blocks_give_the_bits_of_the_plain_run() {
    assert!(
        crate::exec::kernels::inverted_residual::available(),
        "the tests run on x86-64 with AVX2 and FMA"
    );
    for (expand, stride) in [(true, 1), (true, 2), (false, 1), (false, 2)] {
        let m = block_model(expand, stride);
        let case = format!("expand {expand}, stride {stride}");
        let (fused, ops) = run(&m, ExecOptions::inference(&Device::Cpu), None);
        assert_eq!(ops, ["InvertedResidual"], "{case}");
        let (plain, plain_ops) = run(&m, ExecOptions::default(), None);
        assert!(!plain_ops.iter().any(|o| o == "InvertedResidual"), "{case}");
        assert_same_bits(&fused, &plain, &case);
    }
}

#[test]
fn watching_an_intermediate_runs_the_nodes_one_by_one() {
    let m = block_model(true, 1);
    let (fused, _) = run(&m, ExecOptions::inference(&Device::Cpu), None);
    // The observer sees `d_act`, which the fused block never produces.
    let (observed, _) = run(&m, ExecOptions::inference(&Device::Cpu), Some("d_act"));
    assert_same_bits(&observed, &fused, "observed");
}

#[test]
fn small_blocks_run_unfused() {
    // 8 x 8 images: the expanded activations fit the cache, the separate kernels run.
    let mut m = block_model(true, 1);
    m.graph.inputs[0] = crate::graph::ValueInfo::tensor("x", DType::F32, &[2, 8, 8, 8]);
    let exec = Executor::new(&m, ExecOptions::inference(&Device::Cpu)).unwrap();
    let v = t::Rng::new(5).vec(2 * 8 * 8 * 8);
    let x = Tensor::from_vec(v, (2, 8, 8, 8), &Device::Cpu).unwrap();
    let feeds = Map::from([("x".to_string(), Value::new(x, DType::F32))]);
    let mut times = Vec::new();
    exec.run_timed(&feeds, &mut times).unwrap();
    let ops: Vec<&str> = times.iter().map(|t| t.op.as_str()).collect();
    assert_eq!(ops, ["Conv+Clip", "Conv+Clip", "Conv+Add"]);
}

/// `x [2, 3, 96, 96] -> 3x3 stride-2 Conv 3->64 -> Relu -> depthwise 3x3 -> Clip -> 1x1 Conv
/// 64->16`: MobileNetV2's stem and first block.
fn stem_model() -> Model {
    let mut rng = t::Rng::new(23);
    let inits = vec![
        t::init(&mut rng, "ws", &[64, 3, 3, 3], 0.0),
        t::init(&mut rng, "wd", &[64, 1, 3, 3], 0.0),
        t::init(&mut rng, "wp", &[16, 64, 1, 1], 0.0),
        t::init(&mut rng, "bp", &[16], 0.0),
        crate::graph::Tensor::from_f32("lo", vec![], &[0.0]).unwrap(),
        crate::graph::Tensor::from_f32("hi", vec![], &[0.8]).unwrap(),
    ];
    let mut stem = t::node("s", "Conv", &["x", "ws"], &["s_out"]);
    stem.set_ints("pads", &[1, 1, 1, 1]);
    stem.set_ints("strides", &[2, 2]);
    let mut dw = t::node("d", "Conv", &["s_act", "wd"], &["d_out"]);
    dw.set_int("group", 64);
    dw.set_ints("pads", &[1, 1, 1, 1]);
    let nodes = vec![
        stem,
        t::node("s_act", "Relu", &["s_out"], &["s_act"]),
        dw,
        t::node("d_act", "Clip", &["d_out", "lo", "hi"], &["d_act"]),
        t::node("p", "Conv", &["d_act", "wp", "bp"], &["y"]),
    ];
    t::model(nodes, &[("x", &[2, 3, 96, 96])], &["y"], inits, 13)
}

#[test]
fn a_stem_convolution_leads_a_fused_block() {
    let m = stem_model();
    let b = blocks(&m, false)[0].clone().expect("a block at the stem");
    assert_eq!((b.expand, b.depthwise, b.project), (Some(0), 2, 4));
    let v = t::Rng::new(9).vec(2 * 3 * 96 * 96);
    let x = Tensor::from_vec(v, (2, 3, 96, 96), &Device::Cpu).unwrap();
    let feeds = Map::from([("x".to_string(), Value::new(x, DType::F32))]);
    let run = |options: ExecOptions| {
        let exec = Executor::new(&m, options).unwrap();
        let mut times = Vec::new();
        let y = exec.run_timed(&feeds, &mut times).unwrap().remove(0).tensor;
        let y = y.detach().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (y, times.into_iter().map(|t| t.op).collect::<Vec<_>>())
    };
    let (fused, ops) = run(ExecOptions::inference(&Device::Cpu));
    assert_eq!(ops, ["InvertedResidual"]);
    let (plain, _) = run(ExecOptions::default());
    assert_same_bits(&fused, &plain, "stem");
}

#[test]
fn operands_the_kernel_cannot_take_are_reported_by_their_own_nodes() {
    let feeds = input(8);
    let run = |m: &Model| {
        let exec = Executor::new(m, ExecOptions::inference(&Device::Cpu)).unwrap();
        exec.run(&feeds).map(|_| ()).unwrap_err().to_string()
    };
    // A projection weight with as many values but the wrong input channels.
    let mut m = block_model(true, 1);
    m.graph.initializers.get_mut("wp").unwrap().dims = vec![16, 32, 1, 1];
    let err = run(&m);
    assert!(err.contains("'p'") || err.contains("p:"), "{err}");
    // A zero stride on the expansion: an error, not a division by zero.
    let mut m = block_model(true, 1);
    m.graph.nodes[0].set_ints("strides", &[0, 0]);
    let err = run(&m);
    assert!(err.contains("stride"), "{err}");
}
