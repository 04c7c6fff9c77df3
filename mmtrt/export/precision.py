"""Reduced precision (fp16 / bf16): which parts of a graph may leave float32, and the ONNX copy
in which they do (what a strongly typed TensorRT 11 build takes its precision from).

The policy, one rule for every graph: a convolution may run in the reduced type when the saliency
output does not depend on it; everything else stays float32. So:

* instance-norm statistics, every reduction (ReduceMean), softmax/sigmoid, resize and the graph
  inputs/outputs stay float32 (reduced-precision variance is a well-known source of wrong results);
* the saliency graph stays float32 entirely, and so does the encoder half of the fused graph: the
  saliency is decided by LeakyReLU and max-pool gates in the forward pass, and a reduced-precision
  forward flips enough of them to move it by 18% (fp16) to 45% (bf16) (docs/deployment-notes.md);
* the encoder graph (classification only) and the decoder run their convolutions in fp16/bf16.

A reduced convolution reads a cast copy of its float32 input, holds its weights in the reduced
type and hands a float32 result on (TensorRT fuses such casts into the convolution kernels).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRECISIONS = ("fp32", "fp16", "bf16")
_LOW_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# ONNX Conv accepts bfloat16 only from opset 22 on.
MIN_OPSET = {"fp32": 18, "fp16": 18, "bf16": 22}

KEPT_FP32 = (
    "instance-norm statistics and every reduction (ReduceMean)",
    "LeakyReLU / max-pool gates, softmax, sigmoid, resize, graph inputs and outputs",
    "every operation the saliency output depends on: the whole saliency graph and the encoder "
    "half of the fused graph (a reduced-precision forward flips saliency gates: 18% (fp16) to "
    "45% (bf16) error measured)",
)


def reduced_convolutions(proto: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that may run in reduced precision: those the `saliency` output (if
    the graph has one) does not depend on, in graph order."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    protected: set[str] = set()
    stack = [o.name for o in proto.graph.output if o.name == "saliency"]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in protected:
            continue
        protected.add(node.name)
        stack.extend(i for i in node.input if i)
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in protected]


def policy(precision: str) -> dict:
    """The precision policy as printed and written to the manifest."""
    if precision == "fp32":
        return {"precision": "fp32", "rule": "everything in float32"}
    return {
        "precision": precision,
        "rule": f"a convolution runs in {precision} when the saliency output does not depend on it; "
        "everything else stays float32",
        "reduced": f"Conv inputs, weights and outputs ({precision}, accumulation as the runtime does it)",
        "kept_fp32": list(KEPT_FP32),
    }


def mixed_precision(proto: onnx.ModelProto, precision: str, *, emulate: bool = False) -> onnx.ModelProto:
    """A copy of `proto` whose `reduced_convolutions` run in `precision`.

    With `emulate=True` the reduced type only rounds values (Cast to it and back, float32 Conv on
    rounded weights): onnxruntime's CPU provider has no bfloat16 Conv, so this is how a bf16 graph
    is measured here; it reproduces the storage rounding with float32 accumulation.
    """
    low = _LOW_TYPES[precision]
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    selected = set(reduced_convolutions(model))
    initializers = {init.name: init for init in graph.initializer}
    added: dict[str, str] = {}  # float32 tensor -> its reduced (or rounded) copy
    nodes = []

    def lowered(name: str) -> str:
        """The reduced-type copy of `name` (an initializer is converted, an activation cast)."""
        if name in added:
            return added[name]
        target = f"{name}__{precision}"
        if name in initializers:
            values = _round(numpy_helper.to_array(initializers[name]), precision, emulate)
            graph.initializer.append(numpy_helper.from_array(values, target))
        else:
            nodes.append(
                helper.make_node(
                    "Cast", [name], [target + ("_rounded" if emulate else "")], name=f"{target}__cast", to=low
                )
            )
            if emulate:
                nodes.append(
                    helper.make_node(
                        "Cast",
                        [target + "_rounded"],
                        [target],
                        name=f"{target}__cast_back",
                        to=TensorProto.FLOAT,
                    )
                )
        added[name] = target
        return target

    for node in list(graph.node):
        if node.name not in selected:
            nodes.append(node)
            continue
        node.input[:] = [lowered(i) if i else i for i in node.input]
        out = node.output[0]
        node.output[0] = f"{out}__{precision}"
        nodes.append(node)
        if emulate:
            nodes.append(
                helper.make_node(
                    "Cast",
                    [node.output[0]],
                    [f"{out}__{precision}_rounded"],
                    name=f"{node.name}__round",
                    to=low,
                )
            )
            source = f"{out}__{precision}_rounded"
        else:
            source = node.output[0]
        nodes.append(
            helper.make_node("Cast", [source], [out], name=f"{node.name}__to_float32", to=TensorProto.FLOAT)
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def _round(values: np.ndarray, precision: str, emulate: bool) -> np.ndarray:
    if precision == "fp16":
        low = values.astype(np.float16)
    else:
        import ml_dtypes  # (installed with onnx; numpy has no bfloat16)

        low = values.astype(ml_dtypes.bfloat16)
    return low.astype(np.float32) if emulate else low
