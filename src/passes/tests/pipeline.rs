//! fuse_pipeline: all passes together, options and the report.

use super::*;
use crate::passes::{fuse_pipeline, FuseOptions};

/// Conv → BN → Identity → Reshape(Shape-derived target) → Dropout → output.
fn mixed() -> Model {
    let mut rng = Rng::new(30);
    let mut inits = bn_params(&mut rng, "bn", 4);
    inits.push(init(&mut rng, "w", &[4, 3, 3, 3], 0.0));
    inits.push(ints("zero", &[0]));
    inits.push(ints("minus1", &[-1]));
    let nodes = vec![
        node("conv", "Conv", &["x", "w"], &["c"]),
        bn("bn", "c", "b"),
        node("id", "Identity", &["b"], &["i"]),
        node("shape", "Shape", &["i"], &["s"]),
        node("gather", "Gather", &["s", "zero"], &["n"]),
        node("concat", "Concat", &["n", "minus1"], &["target"]),
        node("reshape", "Reshape", &["i", "target"], &["r"]),
        node("drop", "Dropout", &["r"], &["y"]),
    ];
    let mut m = model(nodes, &[("x", &[2, 3, 6, 6])], &["y"], inits, 17);
    m.graph.nodes[5].set_int("axis", 0);
    m
}

#[test]
fn pipeline_fuses_everything_and_reports_counts() {
    let m = mixed();
    let (out, report) = fuse_pipeline(&m, &FuseOptions::default()).unwrap();
    let ops: Vec<&str> = out.graph.nodes.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Conv", "Reshape"]);
    assert_eq!(out.graph.nodes[1].outputs, vec!["y".to_string()]);
    assert_eq!(report.count("fold_batch_norm"), 1);
    assert_eq!(report.count("remove_identity"), 2);
    assert_eq!(report.count("fold_constants"), 3);
    assert_eq!((report.nodes_before, report.nodes_after), (8, 2));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passes"][0]["pass"], "constants_to_initializers");
    assert_equivalent(&m, &out);
}

#[test]
fn options_switch_passes_off_and_exclude_nodes() {
    let m = mixed();
    let options = FuseOptions {
        fold_batch_norm: false,
        fold_constants: false,
        exclude: vec!["drop".into()],
    };
    let (out, report) = fuse_pipeline(&m, &options).unwrap();
    assert_eq!(count(&out, "BatchNormalization"), 1);
    assert_eq!(count(&out, "Shape"), 1);
    assert_eq!(count(&out, "Dropout"), 1);
    assert_eq!(report.count("fold_constants"), 0);
    assert!(report.passes.iter().all(|p| p.pass != "fold_batch_norm"));
    assert_equivalent(&m, &out);
}
