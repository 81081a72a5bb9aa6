#!/usr/bin/env bash
# Regenerates src/onnx/proto.rs from proto/onnx.proto.
# proto/onnx.proto is copied verbatim from the onnx 1.19.1 wheel (onnx/onnx.proto, IR version 12).
# Needs only cargo: the protogen tool compiles the .proto with protox (no system protoc).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --manifest-path tools/protogen/Cargo.toml -- "$PWD"
rustfmt --edition 2021 src/onnx/proto.rs
echo "wrote src/onnx/proto.rs"
