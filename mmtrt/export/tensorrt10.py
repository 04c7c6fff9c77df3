"""TensorRT 10's reduced precision ("weak typing"): the float32 graph, the builder flag FP16/BF16,
and per-layer constraints that keep every layer in float32 except the convolutions the precision
policy lets go. TensorRT 11 removed all of it (the precision flags, OBEY_PRECISION_CONSTRAINTS,
ILayer.precision and ILayer.set_output_type), so this module is type-checked against TensorRT 10
only (scripts/tensorrt_api.py), and mmtrt/export/tensorrt.py calls it for TensorRT 10 only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorrt as trt


def allow_reduced_precision(
    config: trt.IBuilderConfig, network: trt.INetworkDefinition, flag: str, reduced_layers: frozenset[str]
) -> int:
    """Allow the builder precision `flag` ("FP16" / "BF16") and constrain every layer with float
    outputs to float32, except the convolutions named in `reduced_layers` (TensorRT's ONNX parser
    names a layer after its ONNX node). Returns how many convolutions were left free."""
    import tensorrt as trt

    config.set_flag({"FP16": trt.BuilderFlag.FP16, "BF16": trt.BuilderFlag.BF16}[flag])
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    free = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.CONVOLUTION and layer.name in reduced_layers:
            free += 1
            continue
        floats = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype == trt.float32]
        if floats:
            layer.precision = trt.float32
            for j in floats:
                layer.set_output_type(j, trt.float32)
    return free
