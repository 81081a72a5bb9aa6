#!/usr/bin/env python3
"""Accuracy of post-training quantization, QAT and distillation on the two
training fixtures, from the reports of their recipes:

    recipes/fashion_mnist.toml  (trains the fixture, then PTQ, QAT, distill)
    recipes/mnist_qat.toml      (the pretrained MNIST CNN; PTQ, QAT, distill)

Usage (after `cargo build --release` and `.venv/bin/python scripts/make_mnist_data.py`):
    python3 benches/qat_distill.py --amct target/release/amct [--set KEY=VALUE ...]
Runs both recipes (cached stages are reused) into runs/bench-qat-distill/ and
prints a markdown table: float, PTQ, QAT and distill top-1 on the test sets,
the PTQ drop, how far QAT is from float and the share of the drop distill
recovers. `--set` overrides apply to both recipes (e.g. 4-bit weights:
`--set stages.quantize.weight.bits=4`)."""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    ("Fashion-MNIST fixture (trained by amct)", "fashion_mnist.toml", "train"),
    ("pretrained MNIST CNN", "mnist_qat.toml", "fuse"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--amct", default=str(ROOT / "target" / "release" / "amct"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-qat-distill"))
    args = ap.parse_args()
    rows = []
    for title, recipe, float_stage in RECIPES:
        out = Path(args.out) / Path(recipe).stem
        cmd = [args.amct, "run", str(ROOT / "recipes" / recipe), "--out", str(out)]
        for s in args.set:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True)
        report = json.loads((out / "report.json").read_text())
        stages = {s["name"]: s for s in report["stages"]}
        top1 = stages["eval"]["metrics"]
        f, p, q, d = (100 * top1[k]["top1"] for k in (float_stage, "quantize", "qat", "distill"))
        drop = f - p
        recovered = (d - p) / drop if drop > 0 else float("nan")
        seconds = {k: stages[k]["seconds"] for k in ("qat", "distill")}
        rows.append((title, f, p, q, d, drop, f - q, recovered, seconds))
    print("| model | float | PTQ | QAT (1 epoch) | distill (1 epoch) | PTQ drop | float - QAT | drop recovered by distill | QAT s | distill s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, f, p, q, d, drop, gap, rec, sec in rows:
        rec_s = "n/a (no drop)" if rec != rec else f"{100 * rec:.0f}%"
        print(f"| {t} | {f:.2f} | {p:.2f} | {q:.2f} | {d:.2f} | {drop:+.2f} | {gap:+.2f} | {rec_s} | {sec['qat']:.0f} | {sec['distill']:.0f} |")


if __name__ == "__main__":
    main()
