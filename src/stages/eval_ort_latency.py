"""Median latency of an ONNX model in onnxruntime, for amct's eval stage.

Usage: python eval_ort_latency.py MODEL BATCHES ITERS THREADS
BATCHES is comma-separated (e.g. "1,8"). Inputs are random (float) or zero
(other types) with the model's input shapes; the first dynamic dimension is
the batch, other dynamic dimensions are 1. Prints one JSON object mapping
each batch to the median milliseconds of ITERS timed runs after two warm-up
runs, or to null when the model's batch dimension is fixed to another size.
Exit code 3 with {"missing": ...} when numpy or onnxruntime cannot be imported.
Exits at once when amct (the parent process) goes away, e.g. after Ctrl-C,
removing amct's temporary folder that holds MODEL.
"""

import json
import os
import shutil
import sys
import threading
import time


def exit_with_parent(model_dir):
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)
    if os.path.basename(model_dir).startswith("amct-ort-"):
        shutil.rmtree(model_dir, ignore_errors=True)
    os._exit(1)


if len(sys.argv) > 1:
    MODEL_DIR = os.path.dirname(os.path.abspath(sys.argv[1]))
    threading.Thread(target=exit_with_parent, args=(MODEL_DIR,), daemon=True).start()

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:
    print(json.dumps({"missing": str(exc)}))
    sys.exit(3)

TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def feeds_for(session, batch, rng):
    feeds = {}
    for inp in session.get_inputs():
        dims = list(inp.shape)
        if dims and isinstance(dims[0], int) and dims[0] > 0 and dims[0] != batch:
            return None
        shape = [
            d if isinstance(d, int) and d > 0 else (batch if k == 0 else 1)
            for k, d in enumerate(dims)
        ]
        dtype = TYPES.get(inp.type)
        if dtype is None:
            raise SystemExit(f"input '{inp.name}' has type {inp.type}, not supported for latency")
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def main():
    path, batches, iters, threads = sys.argv[1:5]
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    result = {}
    for batch in (int(b) for b in batches.split(",")):
        feeds = feeds_for(session, batch, rng)
        if feeds is None:
            result[str(batch)] = None
            continue
        for _ in range(2):
            session.run(None, feeds)
        times = []
        for _ in range(int(iters)):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - start) * 1e3)
        times.sort()
        result[str(batch)] = times[len(times) // 2]
    print(json.dumps(result))


main()
