"""Helpers shared by the interop tests: locating the amct binary and the
generated fixtures, running amct, and running onnxruntime."""
from __future__ import annotations

import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
AMCT_BIN = Path(os.environ.get("AMCT_BIN", ROOT / "target" / "debug" / "amct"))
FIXTURES = Path(os.environ.get("AMCT_FIXTURES", ROOT / "tests" / "fixtures" / "gen"))
TIMEOUT = float(os.environ.get("AMCT_TIMEOUT", "900"))


@lru_cache(maxsize=None)
def all_meta() -> dict[str, dict]:
    """{fixture name: meta.json} for every generated fixture (sorted by name)."""
    metas = {p.parent.name: json.loads(p.read_text()) for p in FIXTURES.glob("*/meta.json")}
    return dict(sorted(metas.items()))


def fixture_dir(name: str) -> Path:
    return FIXTURES / name


def model_path(name: str) -> Path:
    return FIXTURES / name / "model.onnx"


def run_amct(*args, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Run the amct binary; with expect_ok, fail the test (showing stderr) on a non-zero exit."""
    cmd = [str(AMCT_BIN), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def ort_run(model: Path, feeds: dict[str, np.ndarray], optimize: bool = True) -> dict[str, np.ndarray]:
    """Run onnxruntime on CPU, single-threaded; optimize=False disables graph rewrites
    so that two equivalent graphs execute the very same kernels."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
