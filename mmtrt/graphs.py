"""The four deployable graphs of a MultiMix model, with their tensor names.

Each graph is a small nn.Module over the parts of one `MultiMix`, returning a tuple in the order
of its `outputs` (ONNX and TensorRT speak positional tensors with names). All share the batch as
their first, dynamic axis; images are float32 [B, 1, 256, 256] in [0, 1].

    encoder    image -> logits, probs, skip1..skip5          (classification-only requests)
    saliency   image -> logits, probs, skip1..skip5, saliency (one encoder pass + its input-gradient)
    decoder    image, saliency, skip1..skip5 -> mask_logits, mask
    multimix   image -> probs, mask, saliency                (the fused joint pipeline)

`saliency` + `decoder` is the split joint pipeline (what a Triton ensemble of engines runs);
`multimix` is the same computation in one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtrt.model import MultiMix

SKIPS = ("skip1", "skip2", "skip3", "skip4", "skip5")


class EncoderGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor):
        logits, skips = self.encoder(image)
        return (logits, logits.softmax(dim=1), *skips)


class SaliencyGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor):
        logits, tape = self.encoder.forward_with_tape(image)
        saliency = self.encoder.input_gradient(logits, tape).abs()
        return (logits, logits.softmax(dim=1), *tape.skips, saliency)


class DecoderGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, image, saliency, skip1, skip2, skip3, skip4, skip5):
        mask_logits = self.decoder((skip1, skip2, skip3, skip4, skip5), image, saliency)
        return (mask_logits, mask_logits.sigmoid())


class FusedGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model(image)
        return (out["logits"].softmax(dim=1), out["mask"].sigmoid(), out["saliency"])


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: type[nn.Module]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def build(self, model: MultiMix) -> nn.Module:
        return self.module(model).eval()


GRAPHS: dict[str, GraphSpec] = {
    spec.name: spec
    for spec in (
        GraphSpec("encoder", EncoderGraph, ("image",), ("logits", "probs", *SKIPS)),
        GraphSpec("saliency", SaliencyGraph, ("image",), ("logits", "probs", *SKIPS, "saliency")),
        GraphSpec("decoder", DecoderGraph, ("image", "saliency", *SKIPS), ("mask_logits", "mask")),
        GraphSpec("multimix", FusedGraph, ("image",), ("probs", "mask", "saliency")),
    )
}
