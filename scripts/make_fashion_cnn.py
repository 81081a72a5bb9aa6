#!/usr/bin/env python3
"""Writes models/fashion_cnn.onnx, the untrained fixture that the recipe
recipes/fashion_mnist.toml trains with amct itself: three 3x3 conv +
BatchNormalization + ReLU blocks (16, 32, 64 channels; 2x2 max pooling after
the second and third), then Flatten, Gemm 3136->64, ReLU, Gemm 64->10.
He-initialised from a fixed seed, BatchNormalization at identity (scale 1,
bias 0, running mean 0, variance 1), opset 13, dynamic batch. Run with the
project's .venv interpreter:
    .venv/bin/python scripts/make_fashion_cnn.py
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def block(x, cin, cout, name, pool):
        fan_in = cin * 9
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / fan_in)
        nodes.append(helper.make_node("Conv", [x, init(f"{name}.weight", w)], [f"{name}.conv"],
                                      name=f"{name}.conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        bn = [init(f"{name}.bn.{p}", v) for p, v in
              (("weight", np.ones(cout)), ("bias", np.zeros(cout)),
               ("running_mean", np.zeros(cout)), ("running_var", np.ones(cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"],
                                      name=f"{name}.bn", epsilon=1e-5, momentum=0.9))
        nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"], name=f"{name}.relu"))
        if not pool:
            return f"{name}.relu"
        nodes.append(helper.make_node("MaxPool", [f"{name}.relu"], [f"{name}.pool"],
                                      name=f"{name}.pool", kernel_shape=[2, 2], strides=[2, 2]))
        return f"{name}.pool"

    def fc(x, cin, cout, name):
        bound = 1.0 / np.sqrt(cin)
        w = rng.uniform(-bound, bound, (cout, cin)) * np.sqrt(3.0)  # He-uniform for ReLU inputs
        b = np.zeros(cout)
        nodes.append(helper.make_node("Gemm", [x, init(f"{name}.weight", w), init(f"{name}.bias", b)],
                                      [name], name=name, transB=1))
        return name

    x = block("input", 1, 16, "block1", pool=False)
    x = block(x, 16, 32, "block2", pool=True)
    x = block(x, 32, 64, "block3", pool=True)
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x = fc("flat", 64 * 7 * 7, 64, "fc1")
    nodes.append(helper.make_node("Relu", [x], ["fc1.relu"], name="fc1.relu"))
    fc("fc1.relu", 64, 10, "logits")
    graph = helper.make_graph(
        nodes, "fashion_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="amct scripts/make_fashion_cnn.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    out = ROOT / "models" / "fashion_cnn.onnx"
    onnx.save(build(), out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
