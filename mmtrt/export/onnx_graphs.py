"""Write one graph of `mmtrt.graphs` as an ONNX file with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from mmtrt.graphs import GraphSpec
from mmtrt.model import MultiMix

DEFAULT_OPSET = 18
# Ops the graphs are written to avoid: TensorRT cannot run Scatter* with reductions, MaxUnpool or
# MaxPool's Indices output, and Gather* would mean the class pick or the max-pool backward is
# index-based. The max-pool backward uses masks, the class pick a one-hot multiply.
FORBIDDEN_OPS = frozenset(
    {"Scatter", "ScatterND", "ScatterElements", "MaxUnpool", "Gather", "GatherElements", "GatherND"}
)


def example_inputs(
    spec: GraphSpec, model: MultiMix, batch: int = 2, size: int = 256
) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for tracing `spec` (values do not matter for the trace)."""
    image = torch.rand(batch, model.config["in_channels"], size, size)
    if spec.inputs == ("image",):
        return (image,)
    with torch.no_grad():
        logits, tape = model.encoder.forward_with_tape(image)
        saliency = model.encoder.input_gradient(logits, tape).abs()
    return (image, saliency, *tape.skips)


def export_onnx(
    spec: GraphSpec, model: MultiMix, path: Path, *, opset: int = DEFAULT_OPSET, max_batch: int = 64
) -> onnx.ModelProto:
    """Export `spec` over `model` (in eval mode) to `path`, check it, and return the loaded model."""
    graph = spec.build(model)
    batch = torch.export.Dim("batch", min=1, max=max(max_batch, 2))
    dynamic_shapes = {name: {0: batch} for name in spec.inputs}
    # The exporter narrates every step and warns about optional packages it does not need;
    # keep that out of the user's terminal (errors still raise).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example_inputs(spec, model),
            dynamo=True,
            opset_version=opset,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
        )
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    used = {node.op_type for node in proto.graph.node} & FORBIDDEN_OPS
    if any(node.op_type == "MaxPool" and len(node.output) > 1 for node in proto.graph.node):
        used.add("MaxPool(Indices)")
    if used:
        raise RuntimeError(
            f"the {spec.name} graph uses ops it must not (TensorRT, index-free saliency): {sorted(used)}"
        )
    return proto


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
