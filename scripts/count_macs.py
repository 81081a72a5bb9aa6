#!/usr/bin/env python3
"""Independent MAC counter for ONNX models (used for fixtures' meta.json).

Shapes come from onnx shape inference with every symbolic dim (the batch
dims of our models) set to 1 in graph inputs, outputs and value_info.
Convention (amct `inspect` must agree within 1%):
  Conv:          N*Cout*Hout*Wout * (Cin/group)*kh*kw  = prod(out) * prod(W[1:])
  ConvTranspose: N*Cin*Hin*Win * (Cout/group)*kh*kw    = prod(in)  * prod(W[1:])
  Gemm:          M*N*K
  MatMul:        prod(broadcast batch dims)*M*N*K
  anything else: 0
Usage: count_macs.py MODEL.onnx [--layers]
"""
from __future__ import annotations

import sys
from math import prod

import numpy as np
import onnx
from onnx import helper, shape_inference


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    g = model.graph
    shapes: dict[str, list] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else vi.type.sparse_tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in t.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for s in g.sparse_initializer:
        shapes[s.values.name] = list(s.dims)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute[0].name in ("value", "sparse_value"):
            shapes[n.output[0]] = list(helper.get_attribute_value(n.attribute[0]).dims)
    return shapes


def layer_macs(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """[(node name, op_type, MACs at batch 1)] for every node of the main graph."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):  # symbolic (batch) dims -> 1
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(model)

    def shape(name, node):
        s = shapes.get(name)
        if s is None or any(not isinstance(d, int) or d <= 0 for d in s):
            raise ValueError(f"count_macs: unknown shape {s} of '{name}' (input of {node.op_type} '{node.name}')")
        return s

    out = []
    for n in model.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        macs = 0
        if n.op_type == "Conv":
            macs = prod(shape(n.output[0], n)) * prod(shape(n.input[1], n)[1:])
        elif n.op_type == "ConvTranspose":
            macs = prod(shape(n.input[0], n)) * prod(shape(n.input[1], n)[1:])
        elif n.op_type == "Gemm":
            sa, sb = shape(n.input[0], n), shape(n.input[1], n)
            m, k = (sa[1], sa[0]) if a.get("transA", 0) else (sa[0], sa[1])
            nn = sb[0] if a.get("transB", 0) else sb[1]
            macs = m * nn * k
        elif n.op_type == "MatMul":
            sa, sb = shape(n.input[0], n), shape(n.input[1], n)
            m = sa[-2] if len(sa) > 1 else 1
            nn = sb[-1] if len(sb) > 1 else 1
            batch = np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
            macs = prod(batch) * m * nn * sa[-1]
        out.append((n.name, n.op_type, int(macs)))
    return out


def count_macs(model_or_path) -> int:
    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model_or_path, load_external_data=False)
    return sum(m for _, _, m in layer_macs(model))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    m = onnx.load(sys.argv[1], load_external_data=False)
    layers = layer_macs(m)
    if "--layers" in sys.argv:
        for name, op, macs in layers:
            if macs:
                print(f"{macs:>14,d}  {op:<14} {name}")
    print(f"total MACs (batch 1): {sum(x for _, _, x in layers):,d}")
