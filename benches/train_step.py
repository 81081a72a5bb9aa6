#!/usr/bin/python3
"""Training step, amct vs PyTorch CPU, on the same networks and batches, in one script.

The networks are defined here in PyTorch and exported to ONNX (BatchNormalization kept as
a node), so amct trains exactly the graph PyTorch trains: a ResNet-18-shaped model at
112x112 (batch 32, 1000 classes) and a small BatchNorm CNN for 28x28 inputs (batch 64,
10 classes). One step is forward in training mode (batch statistics), softmax
cross-entropy on fixed labels, backward and SGD with momentum 0.9, for both tools.
PyTorch runs in this process with `torch.set_num_threads(2)`; amct runs its
`bench-train` subcommand (its own process, both cores). Same warm-up and iterations.

Needs Debian's python3-torch (`benches/setup_torch.sh`) and a release build of amct.
Usage: /usr/bin/python3 benches/train_step.py --amct target/release/amct [--iters 5] [--rounds 5]
With `--rounds R` the two tools alternate R times (this machine's speed drifts by 10-30%
from minute to minute) and the table gives each round's ratio and the medians.
With `--device cuda` (an amct built with `--features cuda`, a CUDA PyTorch) both tools
train on the GPU instead; PyTorch's steps are timed up to a device synchronisation.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class Basic(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity or 1x1 strided shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


def resnet18(classes: int = 1000) -> nn.Module:
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def small_bn_cnn(classes: int = 10) -> nn.Module:
    def cbr(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*cbr(1, 32), *cbr(32, 32), nn.MaxPool2d(2), *cbr(32, 64), *cbr(64, 64),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                         nn.Linear(128, classes))


CASES = [
    # name, builder, input shape without batch, batch, classes
    ("resnet18 112x112", resnet18, (3, 112, 112), 32, 1000),
    ("small BN CNN 28x28", small_bn_cnn, (1, 28, 28), 64, 10),
]


def export(model: nn.Module, shape, path: Path) -> None:
    # Training mode keeps BatchNormalization as a node (training_mode = 1: batch statistics);
    # an eval-mode export folds it into the convolutions.
    model.train()
    # Newer PyTorch defaults to the dynamo exporter, which has no training-mode export.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(model, torch.randn(2, *shape), str(path), opset_version=15,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, **legacy)
    text = path.read_bytes()
    if b"BatchNormalization" not in text:
        sys.exit(f"{path}: the export folded BatchNormalization away; the comparison would be unfair")


def torch_ips(model: nn.Module, shape, batch: int, classes: int, warmup: int, iters: int,
              device: str) -> float:
    model.to(device).train()
    x = torch.randn(batch, *shape, device=device)
    y = torch.tensor([i * 7919 % classes for i in range(batch)], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return batch * iters / (time.perf_counter() - t0)


def amct_ips(amct: str, model: Path, batch: int, warmup: int, iters: int, device: str) -> dict:
    cmd = [amct, "bench-train", str(model), "--batch", str(batch), "--iters", str(iters),
           "--warmup", str(warmup), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amct", default=os.environ.get("AMCT_BIN", str(ROOT / "target/release/amct")))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the two tools this many times; the table gives medians")
    args = ap.parse_args()
    if not Path(args.amct).is_file():
        sys.exit(f"no amct binary at {args.amct} (cargo build --release)")
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"device {args.device}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, "
          f"{args.iters} steps after {args.warmup} warm-up\n")
    print("| model | batch | amct img/s | PyTorch img/s | amct/PyTorch per round | amct/PyTorch median | amct loss first -> last |")
    print("|---|---:|---:|---:|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, shape, batch, classes in CASES:
            net = build(classes)
            path = Path(tmp) / (name.split()[0] + ".onnx")
            export(net, shape, path)
            ours, theirs, first = [], [], None
            for _ in range(args.rounds):
                a = amct_ips(args.amct, path, batch, args.warmup, args.iters, args.device)
                ours.append(a["images_per_s"])
                theirs.append(torch_ips(net, shape, batch, classes, args.warmup, args.iters, args.device))
                first = first or a
            ratios = [o / t for o, t in zip(ours, theirs)]
            print(f"| {name} | {batch} | {statistics.median(ours):.1f} | {statistics.median(theirs):.1f} | "
                  f"{', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} | "
                  f"{first['loss_first']:.3f} -> {first['loss_last']:.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
