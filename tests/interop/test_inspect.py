"""`amct inspect --json` agrees with the independent numbers in each fixture's
meta.json (scripts/count_macs.py convention): MACs within 1%, parameter count
and op histogram exact; custom ops are reported as unsupported."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from amctlib import all_meta, model_path, run_amct

NAMES = list(all_meta())
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def constant_float_elements(name) -> int:
    """Float elements held by Constant nodes' tensor values in the fixture."""
    model = onnx.load(str(model_path(name)), load_external_data=False)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                    total += int(np.prod(a.t.dims))
    return total


def inspect(name) -> dict:
    proc = run_amct("inspect", model_path(name), "--json")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"inspect --json printed invalid JSON ({e}):\n{proc.stdout[:2000]}")


@pytest.mark.parametrize("name", NAMES)
def test_inspect_matches_meta(name):
    meta, info = all_meta()[name], inspect(name)
    want, got = meta["macs"], info["macs"]
    if want == 0:
        assert got == 0, f"macs {got}, expected 0"
    else:
        assert abs(got - want) <= 0.01 * want, f"macs {got:,} vs independent count {want:,} ({got / want - 1:+.2%})"
    # amct imports Constant nodes holding tensors as initializers: their float
    # elements count as parameters and the nodes leave the histogram.
    want_params = meta["params"] + constant_float_elements(name)
    assert info["parameters"] == want_params, f"parameters {info['parameters']:,} vs {want_params:,}"
    want_ops = {k: v for k, v in meta["ops"].items() if k != "Constant"}
    assert {k: v for k, v in info["op_histogram"].items() if k != "Constant"} == want_ops
    assert sum(layer["macs"] for layer in info["layers"]) == got, "per-layer MACs do not add up to macs"
    assert info["ir_version"] == meta["ir_version"]
    assert {(o["domain"] or "ai.onnx", o["version"]) for o in info["opsets"]} == \
        {(d, v) for d, v in meta["opsets"].items()}
    assert {i["name"] for i in info["inputs"]} >= set(meta["inputs"])
    assert [o["name"] for o in info["outputs"]] == meta["outputs"]
    assert isinstance(info["size_bytes"], int) and info["size_bytes"] > 0
    if meta["ort_runnable"]:
        assert info["unsupported"] == [], f"ops onnxruntime runs are reported unsupported: {info['unsupported']}"


@pytest.mark.parametrize("name", [n for n, m in all_meta().items() if m["batch_dim_dynamic"]])
def test_inspect_io_types(name):
    meta, info = all_meta()[name], inspect(name)
    ins = {i["name"]: i for i in info["inputs"]}
    for n in meta["inputs"]:
        assert ins[n]["dtype"] == "float32"
        assert isinstance(ins[n]["shape"][0], str), f"{n}: dynamic batch dim shown as {ins[n]['shape'][0]!r}"
        assert all(isinstance(d, int) for d in ins[n]["shape"][1:])


def test_inspect_reports_custom_op():
    info = inspect("custom_op")
    hits = [u for u in info["unsupported"] if u["op_type"] == "FancyNorm"]
    assert hits and hits[0]["node"] == "fancy_norm_0", f"unsupported: {info['unsupported']}"
    assert hits[0]["reason"], "empty reason"
