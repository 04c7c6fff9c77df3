"""Reduced precision (fp16 / bf16): which parts of a graph may leave float32, and the ONNX copy
in which they do (what a strongly typed TensorRT 11 build and OpenVINO's CPU plugin take their
precision from).

The policy, one rule for every graph: in a graph that computes the saliency, its forward pass
(everything the class outputs depend on) stays float32; every other convolution may run in the
reduced type. So:

* the encoder forward of the saliency and fused graphs stays float32: the saliency is decided by
  the LeakyReLU and max-pool gates of that pass, and a reduced-precision forward flips enough of
  them to move it by 18% (fp16) to 45-61% (bf16) (docs/deployment-notes.md);
* the convolutions of the saliency's backward half run reduced: their gates are read from the
  float32 forward, so their rounding error stays smooth (no gate flips);
* the decoder and the encoder graph (classification only, no saliency) run their convolutions
  reduced;
* instance-norm statistics, every reduction (ReduceMean), softmax/sigmoid, resize and the graph
  inputs/outputs stay float32 (reduced-precision variance is a well-known source of wrong results).

A reduced convolution reads a cast copy of its float32 input, holds its weights in the reduced
type and hands a float32 result on (TensorRT fuses such casts into the convolution kernels;
OpenVINO's CPU plugin, compiled with a float32 hint, runs exactly these convolutions in bf16).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRECISIONS = ("fp32", "fp16", "bf16")
_LOW_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# ONNX Conv accepts bfloat16 only from opset 22 on.
MIN_OPSET = {"fp32": 18, "fp16": 18, "bf16": 22}

#: the outputs of the forward pass: in a graph that also computes the saliency, all they depend on
#: stays float32
FORWARD_OUTPUTS = ("logits", "probs")
KEPT_FP32 = (
    "the forward pass of every graph that computes the saliency (the saliency and fused graphs' "
    "encoder: a reduced-precision forward flips saliency gates, 18% (fp16) to 45% (bf16) error "
    "measured)",
    "instance-norm statistics and every reduction (ReduceMean)",
    "LeakyReLU / max-pool gates, softmax, sigmoid, resize, graph inputs and outputs",
)


def reduced_convolutions(proto: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that may run in reduced precision, in graph order: all of them,
    except, in a graph with a ``saliency`` output, those its class outputs (the forward pass)
    depend on."""
    outputs = {o.name for o in proto.graph.output}
    protected = _ancestors(proto, outputs & set(FORWARD_OUTPUTS)) if "saliency" in outputs else set()
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in protected]


def _ancestors(proto: onnx.ModelProto, tensors) -> set[str]:
    """Names of the nodes that `tensors` depend on."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    found: set[str] = set()
    stack = list(tensors)
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in found:
            continue
        found.add(node.name)
        stack.extend(i for i in node.input if i)
    return found


def policy(precision: str) -> dict:
    """The precision policy as printed and written to the manifest."""
    if precision == "fp32":
        return {"precision": "fp32", "rule": "everything in float32"}
    return {
        "precision": precision,
        "rule": f"convolutions run in {precision} except in the forward pass of a graph that "
        "computes the saliency; everything else stays float32",
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
        """The reduced-type copy of `name`: a constant (an initializer, or computed from
        initializers only, like the backward half's flipped weights) is rounded here, an
        activation is cast in the graph."""
        if name in added:
            return added[name]
        target = f"{name}__{precision}"
        values = _constant_value(model, name, initializers)
        if values is not None:
            graph.initializer.append(numpy_helper.from_array(_round(values, precision, emulate), target))
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
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    used = {i for n in graph.node for i in n.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def _live(nodes: list, outputs: set[str]) -> list:
    """`nodes` without those nothing reads (a weight transform replaced by its folded value)."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    return live[::-1]


def _constant_value(model: onnx.ModelProto, name: str, initializers: dict) -> np.ndarray | None:
    """The value of `name` if it depends on initializers only (None otherwise), computed with
    ONNX's reference evaluator. Rounding such a weight here, to nearest even, rather than casting
    it in the graph matters: OpenVINO folds a weight's Cast to bf16 by truncation, which moved the
    saliency of a bf16 backward half by 2.7% instead of 1.8%."""
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    nodes = list(model.graph.node)  # (one list: its items are the ones compared below)
    producers = {out: node for node in nodes for out in node.output}
    needed, stack, used = {}, [name], set()
    while stack:
        tensor = stack.pop()
        if tensor in initializers:
            used.add(tensor)
            continue
        node = producers.get(tensor)
        if node is None:  # a graph input
            return None
        if id(node) not in needed:
            needed[id(node)] = node
            stack.extend(i for i in node.input if i)
    from onnx.reference import ReferenceEvaluator

    sub = helper.make_graph(
        [n for n in nodes if id(n) in needed],
        "constant",
        [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
        [initializers[i] for i in sorted(used)],
    )
    return ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})[0]


def _round(values: np.ndarray, precision: str, emulate: bool) -> np.ndarray:
    if precision == "fp16":
        low = values.astype(np.float16)
    else:
        import ml_dtypes  # (installed with onnx; numpy has no bfloat16)

        low = values.astype(ml_dtypes.bfloat16)
    return low.astype(np.float32) if emulate else low
