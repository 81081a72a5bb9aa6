//! fold_batch_norm: Conv/ConvTranspose/Gemm → BN, BN → Conv, and the cases
//! that must stay.

use super::*;
use crate::passes::fold_batch_norm;

fn conv_bn(group: i64, bias: bool) -> Model {
    let mut rng = Rng::new(1);
    let mut inits = bn_params(&mut rng, "bn", 6);
    inits.push(init(&mut rng, "c.weight", &[6, 4 / group, 3, 3], 0.0));
    let mut ins = vec!["x", "c.weight"];
    if bias {
        inits.push(init(&mut rng, "c.b", &[6], 0.0));
        ins.push("c.b");
    }
    let mut conv = node("c", "Conv", &ins, &["t"]);
    conv.set_int("group", group);
    conv.set_ints("pads", &[1, 1, 1, 1]);
    model(
        vec![conv, bn("bn", "t", "y")],
        &[("x", &[2, 4, 6, 6])],
        &["y"],
        inits,
        17,
    )
}

#[test]
fn conv_bn_folds_with_and_without_bias_and_groups() {
    for (group, bias) in [(1, true), (1, false), (2, true), (2, false)] {
        let m = conv_bn(group, bias);
        let (out, n) = fold_batch_norm(&m, &none()).unwrap();
        assert_eq!((n, count(&out, "BatchNormalization")), (1, 0));
        let conv = &out.graph.nodes[0];
        assert_eq!(conv.outputs, vec!["y".to_string()]);
        assert_eq!(conv.inputs.len(), 3);
        if !bias {
            assert_eq!(conv.inputs[2], "c.bias", "new bias named after the weight");
        }
        assert!(
            !out.graph.initializers.contains_key("bn.scale"),
            "BN params removed"
        );
        assert_equivalent(&m, &out);
    }
}

#[test]
fn conv_transpose_bn_with_groups() {
    for group in [1i64, 2] {
        let mut rng = Rng::new(2);
        let mut inits = bn_params(&mut rng, "bn", 6);
        inits.push(init(&mut rng, "w", &[4, 6 / group, 3, 3], 0.0));
        inits.push(init(&mut rng, "b", &[6], 0.0));
        let mut ct = node("ct", "ConvTranspose", &["x", "w", "b"], &["t"]);
        ct.set_int("group", group);
        ct.set_ints("strides", &[2, 2]);
        let m = model(
            vec![ct, bn("bn", "t", "y")],
            &[("x", &[1, 4, 5, 5])],
            &["y"],
            inits,
            17,
        );
        let (out, n) = fold_batch_norm(&m, &none()).unwrap();
        assert_eq!((n, count(&out, "BatchNormalization")), (1, 0));
        assert_equivalent(&m, &out);
    }
}

#[test]
fn gemm_bn_all_c_shapes_and_trans() {
    let cs: [Option<&[i64]>; 5] = [None, Some(&[4]), Some(&[1, 4]), Some(&[]), Some(&[3, 1])];
    for trans_b in [0, 1] {
        for c in cs {
            let mut rng = Rng::new(3);
            let mut inits = bn_params(&mut rng, "bn", 4);
            let bdims: &[i64] = if trans_b == 1 { &[4, 5] } else { &[5, 4] };
            inits.push(init(&mut rng, "B", bdims, 0.0));
            let mut ins = vec!["x", "B"];
            if let Some(d) = c {
                inits.push(init(&mut rng, "C", d, 0.0));
                ins.push("C");
            }
            let mut g = node("g", "Gemm", &ins, &["t"]);
            g.set_int("transB", trans_b);
            g.set_float("alpha", 1.5);
            g.set_float("beta", 0.5);
            let m = model(
                vec![g, bn("bn", "t", "y")],
                &[("x", &[3, 5])],
                &["y"],
                inits,
                13,
            );
            let (out, n) = fold_batch_norm(&m, &none()).unwrap();
            assert_eq!(
                (n, count(&out, "BatchNormalization")),
                (1, 0),
                "transB={trans_b} C={c:?}"
            );
            assert_eq!(out.graph.nodes[0].float_or("beta", 1.0), 1.0);
            assert_equivalent(&m, &out);
        }
    }
}

fn bn_conv(group: i64, pads: &[i64]) -> Model {
    let mut rng = Rng::new(4);
    let mut inits = bn_params(&mut rng, "bn", 4);
    inits.push(init(&mut rng, "w", &[8, 4 / group, 3, 3], 0.0));
    inits.push(init(&mut rng, "b", &[8], 0.0));
    let mut conv = node("c", "Conv", &["t", "w", "b"], &["y"]);
    conv.set_int("group", group);
    conv.set_ints("pads", pads);
    model(
        vec![bn("bn", "x", "t"), conv],
        &[("x", &[2, 4, 7, 7])],
        &["y"],
        inits,
        17,
    )
}

#[test]
fn bn_before_unpadded_conv_folds() {
    for group in [1, 2, 4] {
        let m = bn_conv(group, &[0, 0, 0, 0]);
        let (out, n) = fold_batch_norm(&m, &none()).unwrap();
        assert_eq!(
            (n, count(&out, "BatchNormalization")),
            (1, 0),
            "group {group}"
        );
        assert_eq!(out.graph.nodes[0].inputs[0], "x");
        assert_equivalent(&m, &out);
    }
}

#[test]
fn bn_before_padded_conv_stays() {
    let m = bn_conv(1, &[1, 1, 1, 1]);
    let (out, n) = fold_batch_norm(&m, &none()).unwrap();
    assert_eq!((n, count(&out, "BatchNormalization")), (0, 1));
    assert_eq!(out, m);
}

#[test]
fn standalone_bn_and_excluded_and_shared_output_stay() {
    let mut rng = Rng::new(5);
    let inits = bn_params(&mut rng, "bn", 4);
    let m = model(
        vec![bn("bn", "x", "t"), node("r", "Relu", &["t"], &["y"])],
        &[("x", &[1, 4, 3, 3])],
        &["y"],
        inits,
        17,
    );
    assert_eq!(fold_batch_norm(&m, &none()).unwrap().1, 0);
    // Conv output also read elsewhere: no fold; excluded BN: no fold.
    let m = conv_bn(1, true);
    let mut shared = m.clone();
    shared.graph.nodes.push(node("r", "Relu", &["t"], &["z"]));
    shared.graph.outputs.push(ValueInfo {
        name: "z".into(),
        ..Default::default()
    });
    assert_eq!(fold_batch_norm(&shared, &none()).unwrap().1, 0);
    let excluded: HashSet<String> = ["bn".to_string()].into();
    assert_eq!(fold_batch_norm(&m, &excluded).unwrap().1, 0);
    let excluded: HashSet<String> = ["c".to_string()].into();
    assert_eq!(fold_batch_norm(&m, &excluded).unwrap().1, 0);
    let mut training = m.clone();
    training.graph.nodes[1].set_int("training_mode", 1);
    assert_eq!(fold_batch_norm(&training, &none()).unwrap().1, 0);
}

#[test]
fn shared_weight_is_copied_under_a_fresh_name() {
    let mut m = conv_bn(1, true);
    m.graph
        .nodes
        .push(node("c2", "Conv", &["x", "c.weight"], &["z"]));
    m.graph.outputs.push(ValueInfo {
        name: "z".into(),
        ..Default::default()
    });
    m.graph
        .initializers
        .insert("c.weight_bnfold".into(), ints("c.weight_bnfold", &[1]));
    let (out, n) = fold_batch_norm(&m, &none()).unwrap();
    assert_eq!(n, 1);
    let conv = &out.graph.nodes[0];
    assert_eq!(
        conv.inputs[1], "c.weight_bnfold_1",
        "fresh name avoids the taken one"
    );
    assert_eq!(
        out.graph.initializers["c.weight"],
        m.graph.initializers["c.weight"]
    );
    assert_equivalent(&m, &out);
}

#[test]
fn chained_bns_fold_one_after_another() {
    let mut m = conv_bn(1, true);
    let mut rng = Rng::new(6);
    for t in bn_params(&mut rng, "bn2", 6) {
        m.graph.initializers.insert(t.name.clone(), t);
    }
    m.graph.nodes[1].outputs[0] = "u".into();
    m.graph.nodes.push(bn("bn2", "u", "y"));
    let (out, n) = fold_batch_norm(&m, &none()).unwrap();
    assert_eq!((n, out.graph.nodes.len()), (2, 1));
    assert_equivalent(&m, &out);
}

#[test]
fn bn_on_both_sides_of_a_conv_folds_in_place() {
    let mut m = bn_conv(1, &[0, 0, 0, 0]);
    let mut rng = Rng::new(7);
    for t in bn_params(&mut rng, "bn2", 8) {
        m.graph.initializers.insert(t.name.clone(), t);
    }
    m.graph.nodes[1].inputs.truncate(2); // no conv bias: one gets created
    m.graph.initializers.remove("b");
    m.graph.nodes[1].outputs[0] = "u".into();
    m.graph.nodes.push(bn("bn2", "u", "y"));
    let (out, n) = fold_batch_norm(&m, &none()).unwrap();
    assert_eq!((n, out.graph.nodes.len()), (2, 1));
    assert_eq!(out.graph.nodes[0].inputs, ["x", "w", "w_bias"]);
    let mut inits: Vec<&String> = out.graph.initializers.keys().collect();
    inits.sort();
    assert_eq!(inits, ["w", "w_bias"]);
    assert_equivalent(&m, &out);
}
