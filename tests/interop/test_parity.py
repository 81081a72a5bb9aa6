"""`amct infer` matches onnxruntime's reference outputs on every ORT-runnable
fixture, at batch 1 and batch 8: max|amct - ort| <= 1e-4 * max|ort| per output
(integer outputs therefore must match exactly).

QDQ models are compared with onnxruntime's literal evaluation of the graph
(graph optimizations off): with optimizations on, onnxruntime fuses
Q/DQ + Conv into integer kernels whose requantization rounds differently,
which is a deployment effect, not the model's ONNX semantics."""
from __future__ import annotations

import numpy as np
import pytest

from amctlib import all_meta, fixture_dir, load_npz, model_path, ort_run, run_amct

REL_TOL = 1e-4
CASES = [(name, b) for name, meta in all_meta().items() if meta["ort_runnable"] for b in meta["batches"]]


@pytest.mark.parametrize("name,batch", CASES, ids=[f"{n}-b{b}" for n, b in CASES])
def test_infer_matches_onnxruntime(name, batch, tmp_path):
    d = fixture_dir(name)
    out = tmp_path / "out.npz"
    run_amct("infer", model_path(name), "--input", d / f"in_b{batch}.npz", "--output", out)
    if "QuantizeLinear" in all_meta()[name]["ops"] or "DequantizeLinear" in all_meta()[name]["ops"]:
        ref = ort_run(model_path(name), load_npz(d / f"in_b{batch}.npz"), optimize=False)
    else:
        ref = load_npz(d / f"out_b{batch}.npz")
    got = load_npz(out)
    assert sorted(got) == sorted(ref), f"output names differ: amct {sorted(got)} vs onnxruntime {sorted(ref)}"
    report, failed = [], False
    for key, r in ref.items():
        g = got[key]
        assert g.dtype == r.dtype, f"{key}: dtype {g.dtype}, expected {r.dtype}"
        assert g.shape == r.shape, f"{key}: shape {g.shape}, expected {r.shape}"
        diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(r.astype(np.float64)), initial=0.0))
        ratio = diff / scale if scale > 0 else diff
        ok = ratio <= REL_TOL  # False for NaN
        failed |= not ok
        report.append((ratio, f"{key}: max|diff|={diff:.3e} max|ref|={scale:.3e} ratio={ratio:.3e}"
                              f"{'' if ok else ' FAIL'}"))
    worst = max(report, key=lambda x: (np.nan_to_num(x[0], nan=np.inf), x[1]))
    assert not failed, (f"{name} b{batch}: worst ratio {worst[0]:.3e} > {REL_TOL:g}\n"
                        + "\n".join(line for _, line in report))
