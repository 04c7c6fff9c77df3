"""The deployable graphs of :mod:`mmtrt.graphs` as nn.Modules over the parts of one `MultiMix`.

Each returns a tuple in the order of its spec's ``outputs`` (ONNX and TensorRT speak positional
tensors with names); :meth:`mmtrt.graphs.GraphSpec.build` makes one.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtrt.model import MultiMix


class EncoderGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.encoder, self.ood = model.encoder, model.ood

    def forward(self, image: torch.Tensor):
        logits, skips = self.encoder(image)
        return (logits, logits.softmax(dim=1), *skips, *self.ood(skips))


class SaliencyGraph(nn.Module):
    def __init__(self, model: MultiMix):
        super().__init__()
        self.encoder, self.ood = model.encoder, model.ood

    def forward(self, image: torch.Tensor):
        logits, tape = self.encoder.forward_with_tape(image)
        saliency = self.encoder.input_gradient(logits, tape).abs()
        return (logits, logits.softmax(dim=1), *tape.skips, saliency, *self.ood(tape.skips))


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
        model = self.model
        logits, tape = model.encoder.forward_with_tape(image)  # MultiMix.forward, with its skips
        saliency = model.encoder.input_gradient(logits, tape).abs()
        mask_logits = model.decoder(tape.skips, image, saliency)
        return (logits.softmax(dim=1), mask_logits.sigmoid(), saliency, *model.ood(tape.skips))
