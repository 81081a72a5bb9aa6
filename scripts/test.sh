#!/usr/bin/env bash
# The project's whole test command: pinned Python env, fixtures, debug build,
# Rust tests, then the onnxruntime interop tests against target/debug/amct.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup_venv.sh
scripts/setup_datasets.sh
.venv/bin/python scripts/gen_fixtures.py
cargo build
export AMCT_FIXTURES="$PWD/tests/fixtures/gen"
export AMCT_VENV_PYTHON="$PWD/.venv/bin/python"
export AMCT_BIN="${AMCT_BIN:-$PWD/target/debug/amct}"
cargo test
.venv/bin/python -m pytest -q tests/interop
