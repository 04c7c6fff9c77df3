"""The PyTorch ways of running the joint pipeline (class probabilities, mask, saliency).

`reference` is what the published code does and the baseline every ratio is quoted against:
the saliency by autograd (an encoder pass plus a backward), then a second encoder pass for the
features, then the decoder. The other targets share one encoder pass with the explicit saliency
graph (`MultiMix.forward`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmtrt.model import MultiMix, reference_saliency

JointOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # probs, mask probabilities, saliency


def reference_joint(model: MultiMix, images: torch.Tensor) -> JointOutputs:
    saliency = reference_saliency(model.encoder, images)
    with torch.no_grad():
        logits, skips = model.encoder(images)
        mask = model.decoder(skips, images, saliency)
    return logits.softmax(dim=1), mask.sigmoid(), saliency


def joint(model: MultiMix, images: torch.Tensor) -> JointOutputs:
    out = model(images)
    return out["logits"].softmax(dim=1), out["mask"].sigmoid(), out["saliency"]


def torch_targets(
    model: MultiMix, device: torch.device, names: list[str] | None = None
) -> dict[str, Callable]:
    """name -> callable(images) -> JointOutputs. Reduced precision autocasts the convolutions;
    instance-norm statistics stay float32 inside the model whatever the autocast says."""
    model = model.to(device).eval()

    def eager(images):
        with torch.no_grad():
            return joint(model, images)

    def autocast(dtype):
        def run(images):
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                probs, mask, saliency = joint(model, images)
            return probs.float(), mask.float(), saliency.float()

        return run

    compiled_forward = torch.compile(lambda images: joint(model, images))
    targets = {
        "reference": lambda images: reference_joint(model, images),
        "eager": eager,
        "compiled": lambda images: _no_grad(compiled_forward, images),
        "eager-bf16": autocast(torch.bfloat16),
    }
    if device.type == "cuda":
        graphed_forward = torch.compile(lambda images: joint(model, images), mode="reduce-overhead")
        targets["cuda-graphs"] = lambda images: _no_grad(graphed_forward, images, clone=True)
        targets["eager-fp16"] = autocast(torch.float16)
        fp16_compiled = torch.compile(lambda images: joint(model, images))

        def compiled_fp16(images):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                return tuple(t.float() for t in fp16_compiled(images))

        targets["compiled-fp16"] = compiled_fp16
    if names:
        unknown = set(names) - set(targets)
        if unknown:
            raise ValueError(
                f"unknown PyTorch target(s) {sorted(unknown)} on {device.type}; known: {sorted(targets)}"
            )
        targets = {name: targets[name] for name in names}
    return targets


def _no_grad(fn, images, clone=False):
    with torch.no_grad():
        out = fn(images)
    # CUDA-graph outputs live in buffers the next replay overwrites: copy them out.
    return tuple(t.clone() for t in out) if clone else out
