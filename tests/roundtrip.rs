//! Round trip on every generated fixture: import → export → import gives an
//! identical IR; the custom-domain node re-encodes to identical bytes.

mod common;

use prost::Message;

use amct::onnx::{load_model, model_from_proto, model_to_proto, proto::ModelProto};

#[test]
fn import_export_import_is_identity() {
    let dir = common::fixtures_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path().join("model.onnx");
        if !path.exists() {
            continue;
        }
        let first = load_model(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let bytes = model_to_proto(&first).encode_to_vec();
        let proto = ModelProto::decode(bytes.as_slice()).expect("our own encoding decodes");
        let second = model_from_proto(&proto, None)
            .unwrap_or_else(|e| panic!("{}: re-import: {e}", path.display()));
        assert!(
            first == second,
            "{}: IR differs after a round trip",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 15,
        "only {checked} fixtures found in {}",
        dir.display()
    );
}

#[test]
fn custom_node_bytes_survive() {
    let dir = common::fixtures_dir().join("custom_op");
    let model = load_model(&dir.join("model.onnx")).expect("custom_op loads");
    let original = std::fs::read(dir.join("custom_node.bin")).expect("custom_node.bin");
    let proto = model_to_proto(&model);
    let graph = proto.graph.expect("graph");
    let node = graph
        .node
        .iter()
        .find(|n| {
            n.domain
                .as_deref()
                .is_some_and(|d| !d.is_empty() && d != "ai.onnx")
        })
        .expect("custom-domain node kept");
    assert_eq!(node.encode_to_vec(), original, "custom node bytes changed");
    assert!(!proto.functions.is_empty(), "local functions dropped");
    assert!(!proto.metadata_props.is_empty(), "model metadata dropped");
}
