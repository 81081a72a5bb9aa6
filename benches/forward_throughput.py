#!/usr/bin/env python3
"""Forward throughput, amct vs onnxruntime, on the resnet50 and mobilenetv2
fixtures at batch 8.  Builds nothing: needs AMCT_BIN (a release binary) and
the generated fixtures (AMCT_FIXTURES, default tests/fixtures/gen).  amct is
timed by its own `bench-forward` subcommand (prints {"images_per_s": x});
onnxruntime in-process (default session options, intra_op threads = 2) with
the same warmup (1) and iteration count.  Prints a markdown table.
Usage: AMCT_BIN=target/release/amct .venv/bin/python benches/forward_throughput.py [--iters N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
BATCH, WARMUP = 8, 1


def amct_ips(amct: str, model: Path, iters: int) -> float:
    cmd = [amct, "bench-forward", str(model), "--batch", str(BATCH), "--iters", str(iters), "--warmup", str(WARMUP)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
    return float(json.loads(proc.stdout)["images_per_s"])


def ort_ips(model: Path, feeds: dict, iters: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    for _ in range(WARMUP):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(iters):
        sess.run(None, feeds)
    return BATCH * iters / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenetv2"])
    args = ap.parse_args()
    amct = os.environ.get("AMCT_BIN")
    if not amct or not Path(amct).is_file():
        sys.exit("set AMCT_BIN to the amct release binary (cargo build --release -> target/release/amct)")
    fixtures = Path(os.environ.get("AMCT_FIXTURES", ROOT / "tests" / "fixtures" / "gen"))
    print(f"batch {BATCH}, {args.iters} iterations after {WARMUP} warmup, onnxruntime {ort.__version__} "
          f"(intra_op threads 2), {os.cpu_count()} CPUs\n")
    print("| model | amct img/s | ORT img/s | amct/ORT |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        model = fixtures / name / "model.onnx"
        with np.load(fixtures / name / f"in_b{BATCH}.npz") as z:
            feeds = {k: z[k] for k in z.files}
        a = amct_ips(amct, model, args.iters)
        o = ort_ips(model, feeds, args.iters)
        print(f"| {name} | {a:.2f} | {o:.2f} | {a / o:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
