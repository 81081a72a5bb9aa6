"""Malformed models and inputs: amct exits non-zero with a one-line-ish
"error: ..." on stderr that names the problem, and never panics.  The bad
files are built here, in tmp dirs, with onnx.helper and numpy."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from amctlib import fixture_dir, model_path, run_amct


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(tmp_path, model_or_bytes, name="model.onnx"):
    p = tmp_path / name
    p.write_bytes(model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString())
    return p


def _npz(tmp_path, **arrays):
    p = tmp_path / "in.npz"
    np.savez(p, **arrays)
    return p


def assert_error(proc, *any_of, must=()):
    err = proc.stderr
    ctx = f"exit {proc.returncode}\nstderr:\n{err[-3000:]}"
    assert proc.returncode > 0, f"expected a non-zero exit (not a signal): {ctx}"
    assert "panicked" not in err, f"amct panicked: {ctx}"
    assert err.startswith("error:"), f"stderr must start with 'error:': {ctx}"
    low = err.lower()
    if any_of:
        assert any(w.lower() in low for w in any_of), f"stderr names none of {any_of}: {ctx}"
    for w in must:
        assert w in err, f"stderr does not mention {w!r}: {ctx}"


def _infer_and_inspect(model, npz, tmp_path, *any_of, must=()):
    assert_error(run_amct("infer", model, "--input", npz, "--output", tmp_path / "out.npz", expect_ok=False),
                 *any_of, must=must)
    assert not (tmp_path / "out.npz").exists(), "infer wrote an output despite the error"
    assert_error(run_amct("inspect", model, "--json", expect_ok=False), *any_of, must=must)


X = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_truncated_model(tmp_path):
    data = model_path("resnet50").read_bytes()
    model = _save(tmp_path, data[: len(data) // 2])
    _infer_and_inspect(model, fixture_dir("resnet50") / "in_b1.npz", tmp_path,
                       "truncated", "decode", "unexpected end", "eof")


def test_random_bytes(tmp_path):
    from onnx import ModelProto

    data = np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(Exception):
        ModelProto.FromString(data)  # precondition: not decodable by protobuf either
    _infer_and_inspect(_save(tmp_path, data), _npz(tmp_path, x=X), tmp_path,
                       "decode", "invalid", "protobuf", "truncated", "parse", "wire")


def test_raw_data_shorter_than_shape(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "short_weight")
    w.raw_data = w.raw_data[:100]  # 432 bytes needed
    m = _model([helper.make_node("Conv", ["x", "short_weight"], ["y"], name="conv", pads=[1, 1, 1, 1])],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], [w])
    _infer_and_inspect(_save(tmp_path, m), _npz(tmp_path, x=X), tmp_path,
                       "shorter", "expected", "size", "length", "bytes")


def test_dangling_input(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("Add", ["r", "ghost_tensor_42"], ["y"], name="add")],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 3, 8, 8])])
    _infer_and_inspect(_save(tmp_path, m), _npz(tmp_path, x=X), tmp_path, must=("ghost_tensor_42",))


def test_cycle(tmp_path):
    m = _model([helper.make_node("Add", ["x", "loop_b"], ["loop_a"], name="node_a"),
                helper.make_node("Relu", ["loop_a"], ["loop_b"], name="node_b"),
                helper.make_node("Identity", ["loop_b"], ["y"], name="out")],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 3, 8, 8])])
    _infer_and_inspect(_save(tmp_path, m), _npz(tmp_path, x=X), tmp_path, "cycle", "cyclic")


def test_missing_model_file(tmp_path):
    missing = tmp_path / "does_not_exist.onnx"
    _infer_and_inspect(missing, _npz(tmp_path, x=X), tmp_path, must=("does_not_exist.onnx",))


def test_missing_input_file(tmp_path):
    proc = run_amct("infer", model_path("mnist_cnn"), "--input", tmp_path / "no_such_input.npz",
                    "--output", tmp_path / "out.npz", expect_ok=False)
    assert_error(proc, must=("no_such_input.npz",))


def _two_input_model(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    m = _model([helper.make_node("Conv", ["pixels_in", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                helper.make_node("Add", ["c", "bias_in"], ["y"], name="add")],
               [_vi("pixels_in", ["N", 1, 4, 4]), _vi("bias_in", ["N", 2, 4, 4])], [_vi("y", ["N", 2, 4, 4])], [w])
    return _save(tmp_path, m)


def test_input_shape_mismatch(tmp_path):
    model = _two_input_model(tmp_path)
    npz = _npz(tmp_path, pixels_in=np.zeros((1, 3, 4, 4), np.float32), bias_in=np.zeros((1, 2, 4, 4), np.float32))
    proc = run_amct("infer", model, "--input", npz, "--output", tmp_path / "out.npz", expect_ok=False)
    assert_error(proc, "shape", "expected", "mismatch", must=("pixels_in",))


def test_input_missing_from_npz(tmp_path):
    model = _two_input_model(tmp_path)
    npz = _npz(tmp_path, pixels_in=np.zeros((1, 1, 4, 4), np.float32))
    proc = run_amct("infer", model, "--input", npz, "--output", tmp_path / "out.npz", expect_ok=False)
    assert_error(proc, "missing", "required", "not found", "no input", must=("bias_in",))
