#!/usr/bin/env python3
"""Generate the interop test fixtures into tests/fixtures/gen/ (gitignored).

For each model NAME: NAME/model.onnx (plus model.onnx.data for the
external-data model), in_b1.npz / in_b8.npz (graph inputs; b8 only when the
batch dim is dynamic), out_b1.npz / out_b8.npz (onnxruntime references, only
for models onnxruntime can run) and meta.json (name, ort_runnable,
batch_dim_dynamic, macs, params, ops, ...).  Deterministic (fixed seeds).
Skips all work when the stamp (hash of these scripts + package versions)
matches; --force regenerates.  Run with the .venv interpreter.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

from count_macs import count_macs  # noqa: E402
from fixtures import cnn, light, misc, mnist_cnn, opset_mix, transformer  # noqa: E402
from fixtures.common import Fixture  # noqa: E402

MODULES = [cnn, mnist_cnn, light, transformer, opset_mix, misc]
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


def stamp() -> str:
    h = hashlib.sha256()
    files = [SCRIPTS / "gen_fixtures.py", SCRIPTS / "count_macs.py", SCRIPTS / "requirements.txt",
             SCRIPTS / "requirements-nodeps.txt", *sorted((SCRIPTS / "fixtures").glob("*.py"))]
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    h.update(f"{sys.version_info[:2]} {onnx.__version__} {ort.__version__} {np.__version__}".encode())
    return h.hexdigest()


def real_inputs(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
    return [i for i in model.graph.input if i.name not in inits]


def default_inputs(fx: Fixture, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(fx.name.encode()) * 16 + batch)
    feeds = {}
    for vi in real_inputs(fx.model):
        t = vi.type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT, f"{fx.name}: non-float input {vi.name}"
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def param_count(model: onnx.ModelProto) -> int:
    """Element count of float initializers (sparse ones counted dense)."""
    g = model.graph
    n = sum(int(np.prod(t.dims)) for t in g.initializer if t.data_type in FLOAT_TYPES)
    return n + sum(int(np.prod(s.dims)) for s in g.sparse_initializer if s.values.data_type in FLOAT_TYPES)


def write_fixture(fx: Fixture, d: Path) -> dict:
    d.mkdir(parents=True)
    path = d / "model.onnx"
    if fx.raw is not None:
        path.write_bytes(fx.raw)
    elif fx.external_data:
        onnx.save_model(fx.model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
    else:
        onnx.save_model(fx.model, str(path))
    onnx.checker.check_model(str(path), full_check=fx.full_check)
    for name, data in fx.extra_files.items():
        (d / name).write_bytes(data)
    batches = [1, 8] if fx.batch_dim_dynamic else [1]
    sess = None
    if fx.ort_runnable:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for b in batches:
        feeds = fx.make_inputs(b) if fx.make_inputs else default_inputs(fx, b)
        np.savez(d / f"in_b{b}.npz", **feeds)
        if sess is not None:
            names = [o.name for o in sess.get_outputs()]
            outs = sess.run(names, feeds)
            for n, o in zip(names, outs):
                assert np.isfinite(o).all() if o.dtype.kind == "f" else True, f"{fx.name}: {n} not finite"
            np.savez(d / f"out_b{b}.npz", **dict(zip(names, outs)))
    meta = {
        "name": fx.name,
        "ort_runnable": fx.ort_runnable,
        "batch_dim_dynamic": fx.batch_dim_dynamic,
        "batches": batches,
        "macs": count_macs(onnx.load(str(path), load_external_data=False)),
        "params": param_count(fx.model),
        "ops": dict(sorted(Counter(n.op_type for n in fx.model.graph.node).items())),
        "inputs": [i.name for i in real_inputs(fx.model)],
        "outputs": [o.name for o in fx.model.graph.output],
        "ir_version": fx.model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in fx.model.opset_import},
        "full_check": fx.full_check,
        "external_data": fx.external_data,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if fx.check is not None:
        fx.check(str(path))
    return meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "gen")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    want = stamp()
    stamp_file = args.out / ".stamp"
    if not args.force and stamp_file.is_file() and stamp_file.read_text().strip() == want:
        print(f"gen_fixtures: {args.out} is up to date")
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for mod in MODULES:
        for fx in mod.fixtures():
            meta = write_fixture(fx, tmp / fx.name)
            print(f"gen_fixtures: {fx.name:<22} macs={meta['macs']:>14,d} params={meta['params']:>11,d} "
                  f"ort_runnable={fx.ort_runnable} batches={meta['batches']}", flush=True)
    (tmp / ".stamp").write_text(want + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
