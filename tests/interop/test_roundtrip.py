"""`amct convert` (amct's own ONNX writer) round-trips every fixture: the
re-exported model passes onnx.checker, keeps its ops and I/O, and runs in
onnxruntime to bit-identical outputs; custom ops, metadata, functions, doc
strings, value_info, external data and sparse initializers survive."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from amctlib import all_meta, fixture_dir, load_npz, model_path, ort_run, run_amct

NAMES = list(all_meta())


def _convert(src, out_dir, *flags):
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "model.onnx"
    run_amct("convert", src, dst, *flags)
    assert dst.is_file(), f"amct convert wrote no {dst}"
    return dst


def _assert_same_outputs(name, src, dst):
    feeds = load_npz(fixture_dir(name) / "in_b1.npz")
    a, b = ort_run(src, feeds, optimize=False), ort_run(dst, feeds, optimize=False)
    assert sorted(a) == sorted(b), f"outputs differ: {sorted(a)} vs {sorted(b)}"
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (
            f"{k}: onnxruntime output of the re-exported model differs "
            f"(max|diff|={np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))):.3e})")


@pytest.mark.parametrize("name", NAMES)
def test_convert_roundtrip(name, tmp_path):
    meta = all_meta()[name]
    dst = _convert(model_path(name), tmp_path)
    onnx.checker.check_model(str(dst), full_check=meta["full_check"])
    src_m, dst_m = onnx.load(str(model_path(name))), onnx.load(str(dst))
    # Import turns Constant nodes holding weights into initializers (paddle2onnx
    # style); every other op must survive unchanged.
    got = Counter(n.op_type for n in dst_m.graph.node)
    want = Counter(meta["ops"])
    assert got["Constant"] <= want["Constant"], "Constant nodes were added"
    del got["Constant"], want["Constant"]
    assert got == want, "op histogram changed"
    inits = {t.name for t in dst_m.graph.initializer} | {s.values.name for s in dst_m.graph.sparse_initializer}
    assert [i.name for i in dst_m.graph.input if i.name not in inits] == meta["inputs"]
    assert [o.name for o in dst_m.graph.output] == meta["outputs"]
    assert {(o.domain, o.version) for o in dst_m.opset_import} >= {(o.domain, o.version) for o in src_m.opset_import}
    if meta["ort_runnable"]:
        _assert_same_outputs(name, model_path(name), dst)


def test_custom_op_preserved(tmp_path):
    d = fixture_dir("custom_op")
    src, dst = onnx.load(str(d / "model.onnx")), onnx.load(str(_convert(d / "model.onnx", tmp_path)))
    fancy = [n for n in dst.graph.node if n.op_type == "FancyNorm"]
    assert len(fancy) == 1, "FancyNorm node missing"
    assert fancy[0].SerializeToString() == (d / "custom_node.bin").read_bytes(), (
        f"FancyNorm NodeProto not byte-identical:\n{fancy[0]}")
    assert {p.key: p.value for p in dst.metadata_props} == {p.key: p.value for p in src.metadata_props}
    assert list(dst.functions) == list(src.functions), "model.functions changed"
    assert dst.doc_string == src.doc_string and dst.graph.doc_string == src.graph.doc_string
    docs = lambda m: {n.name: n.doc_string for n in m.graph.node if n.doc_string}
    assert docs(dst) == docs(src), "node doc strings changed"
    vi = {v.name: v for v in dst.graph.value_info}
    for v in src.graph.value_info:
        assert vi.get(v.name) == v, f"value_info {v.name} lost or changed"
    assert {(o.domain, o.version) for o in dst.opset_import} == {(o.domain, o.version) for o in src.opset_import}


@pytest.mark.parametrize("name", ["external_data", "mnist_cnn"])
def test_external_data_roundtrip(name, tmp_path):
    dst = _convert(model_path(name), tmp_path / "a", "--external-data")
    data = dst.with_name("model.onnx.data")
    assert data.is_file(), "--external-data wrote no OUT.onnx.data"
    # the location must be relative: move the pair elsewhere and load it there
    moved = tmp_path / "b"
    moved.mkdir()
    for f in (dst, data):
        shutil.move(str(f), moved / f.name)
    dst = moved / "model.onnx"
    m = onnx.load(str(dst), load_external_data=False)
    ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert ext, "no initializer stored as external data"
    for t in ext:
        loc = {e.key: e.value for e in t.external_data}.get("location")
        assert loc == "model.onnx.data", f"{t.name}: external location {loc!r}"
    onnx.checker.check_model(str(dst), full_check=True)
    _assert_same_outputs(name, model_path(name), dst)
    # and back to a single file
    single = _convert(dst, tmp_path / "c")
    assert not single.with_name("model.onnx.data").exists()
    _assert_same_outputs(name, model_path(name), single)


def test_sparse_initializer_kept(tmp_path):
    src = onnx.load(str(model_path("sparse_init")))
    dst = onnx.load(str(_convert(model_path("sparse_init"), tmp_path)))
    assert len(dst.graph.sparse_initializer) == 1, "sparse initializer was not kept sparse"
    a, b = src.graph.sparse_initializer[0], dst.graph.sparse_initializer[0]
    assert b.values.name == a.values.name and list(b.dims) == list(a.dims)
    assert np.array_equal(_densify(a), _densify(b))


def _densify(s: onnx.SparseTensorProto) -> np.ndarray:
    vals, idx = numpy_helper.to_array(s.values), numpy_helper.to_array(s.indices)
    out = np.zeros(int(np.prod(s.dims)), vals.dtype)
    flat = idx if idx.ndim == 1 else np.ravel_multi_index(idx.T, list(s.dims))
    out[flat] = vals
    return out.reshape(list(s.dims))
