#!/usr/bin/env python3
"""Forward throughput, amct vs onnxruntime, on the resnet50 and mobilenetv2
fixtures at batch 8.  Builds nothing: needs AMCT_BIN (a release binary) and
the generated fixtures (AMCT_FIXTURES, default tests/fixtures/gen).  amct is
timed by its own `bench-forward` subcommand (prints {"images_per_s": x});
onnxruntime in a child Python process (default session options, intra_op
threads = 2) with the same warmup (1) and iteration count. Each tool runs in
its own process, so the peak resident memory of each (from wait4) is
reported too. With --rounds R (default 3) the pair runs R times back to
back, amct then onnxruntime, and the table gives the median of the R
per-round ratios (this 2-core virtual machine's speed drifts by 10-30%
from minute to minute; a ratio of adjacent runs is steadier than either
figure). Prints a markdown table.
Usage: AMCT_BIN=target/release/amct .venv/bin/python benches/forward_throughput.py [--iters N] [--rounds R]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
BATCH, WARMUP = 8, 1


def run_measured(cmd: list[str]) -> tuple[dict, float]:
    """Runs `cmd` (prints one JSON object); returns it and the child's own peak RSS in MiB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{err}")
    return json.loads(out), usage.ru_maxrss / 1024


def amct_ips(amct: str, model: Path, iters: int) -> tuple[float, float]:
    cmd = [amct, "bench-forward", str(model), "--batch", str(BATCH), "--iters", str(iters), "--warmup", str(WARMUP)]
    r, rss = run_measured(cmd)
    return float(r["images_per_s"]), rss


def ort_worker(model: str, npz: str, iters: int) -> int:
    with np.load(npz) as z:
        feeds = {k: z[k] for k in z.files}
    print(json.dumps({"images_per_s": ort_ips(Path(model), feeds, iters)}))
    return 0


def ort_child(model: Path, npz: Path, iters: int) -> tuple[float, float]:
    r, rss = run_measured([sys.executable, __file__, "--ort-worker", str(model), str(npz), str(iters)])
    return float(r["images_per_s"]), rss


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["resnet50", "mobilenetv2"])
    ap.add_argument("--ort-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ort_worker:
        model, npz, iters = args.ort_worker
        return ort_worker(model, npz, int(iters))
    amct = os.environ.get("AMCT_BIN")
    if not amct or not Path(amct).is_file():
        sys.exit("set AMCT_BIN to the amct release binary (cargo build --release -> target/release/amct)")
    fixtures = Path(os.environ.get("AMCT_FIXTURES", ROOT / "tests" / "fixtures" / "gen"))
    print(f"batch {BATCH}, {args.iters} iterations after {WARMUP} warmup, onnxruntime {ort.__version__} "
          f"(intra_op threads 2), {os.cpu_count()} CPUs\n")
    print("| model | amct img/s | ORT img/s | amct/ORT per round | amct/ORT median | amct peak RSS MiB "
          "| ORT peak RSS MiB | amct/ORT memory |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models:
        model = fixtures / name / "model.onnx"
        rounds = []
        for _ in range(max(1, args.rounds)):
            a, a_rss = amct_ips(amct, model, args.iters)
            o, o_rss = ort_child(model, fixtures / name / f"in_b{BATCH}.npz", args.iters)
            rounds.append((a, o, a_rss, o_rss))
        a, o, a_rss, o_rss = (statistics.median(r[i] for r in rounds) for i in range(4))
        ratios = [r[0] / r[1] for r in rounds]
        per_round = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"| {name} | {a:.2f} | {o:.2f} | {per_round} | {statistics.median(ratios):.2f} | {a_rss:.0f} "
              f"| {o_rss:.0f} | {a_rss / o_rss:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
