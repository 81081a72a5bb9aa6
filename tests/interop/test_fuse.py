"""`amct convert MODEL OUT --fuse` (the exact `fuse` rewrites): OUT passes
onnx.checker's full check, has no BatchNormalization left, keeps the graph
inputs and outputs, and onnxruntime's outputs of OUT agree with those of the
original on in_b1.npz within 1e-5 relative (max|diff| <= 1e-5 * max|ref|).
Both models run with onnxruntime's graph optimizations off, so the comparison
measures amct's folding, not onnxruntime's."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from amctlib import all_meta, fixture_dir, load_npz, model_path, ort_run, run_amct

REL_TOL = 1e-5
NAMES = ["resnet50", "mobilenetv2", "mnist_cnn"]


@pytest.mark.parametrize("name", NAMES)
def test_convert_fuse(name, tmp_path):
    meta = all_meta()[name]
    dst = tmp_path / "fused.onnx"
    run_amct("convert", model_path(name), dst, "--fuse")
    onnx.checker.check_model(str(dst), full_check=True)
    m = onnx.load(str(dst))
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["BatchNormalization"] == 0, f"BatchNormalization left: {ops}"
    want = Counter(meta["ops"])
    assert ops["Conv"] == want["Conv"], "every Conv survives"
    inits = {t.name for t in m.graph.initializer}
    assert [i.name for i in m.graph.input if i.name not in inits] == meta["inputs"]
    assert [o.name for o in m.graph.output] == meta["outputs"]

    feeds = load_npz(fixture_dir(name) / "in_b1.npz")
    ref = ort_run(model_path(name), feeds, optimize=False)
    got = ort_run(dst, feeds, optimize=False)
    assert sorted(got) == sorted(ref)
    lines, worst = [], 0.0
    for k, r in ref.items():
        g = got[k]
        assert g.shape == r.shape and g.dtype == r.dtype, f"{k}: {g.shape} {g.dtype} vs {r.shape} {r.dtype}"
        diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(r.astype(np.float64)), initial=0.0))
        ratio = diff / scale if scale > 0 else diff
        worst = max(worst, ratio) if ratio == ratio else float("inf")
        lines.append(f"{k}: max|diff|={diff:.3e} max|ref|={scale:.3e} ratio={ratio:.3e}")
    print(f"{name}: worst ratio {worst:.3e}")
    assert worst <= REL_TOL, f"{name}: worst ratio {worst:.3e} > {REL_TOL:g}\n" + "\n".join(lines)
