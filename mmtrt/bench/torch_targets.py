"""The PyTorch ways of running the joint pipeline (class probabilities, mask, saliency).

`reference` is what the published code does and the baseline every ratio is quoted against:
the saliency by autograd (an encoder pass plus a backward), then a second encoder pass for the
features, then the decoder. The other targets share one encoder pass with the explicit saliency
graph (`MultiMix.forward`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from mmtrt.bench.targets import TARGETS, Target
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


#: autocast dtype of each reduced precision
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def runs_on(target: Target, device_type: str) -> bool:
    """Whether PyTorch runs ``target`` on ``device_type``: CUDA graphs and fp16 autocast need a GPU;
    bf16 autocast runs on a CPU too, emulated where it has no bfloat16 arithmetic (so `mmtrt bench`
    offers it on cuda only, while a script may ask for it by name)."""
    return device_type == "cuda" or (target.precision != "fp16" and target.compile_mode != "reduce-overhead")


def torch_targets(
    model: MultiMix, device: torch.device, names: list[str] | None = None
) -> dict[str, Callable]:
    """name -> callable(images) -> JointOutputs for the PyTorch targets `names` of
    mmtrt.bench.targets.TARGETS (default: every one that runs on `device`). Reduced precision
    autocasts the convolutions; instance-norm statistics stay float32 inside the model whatever
    the autocast says."""
    model = model.to(device).eval()
    pytorch = {name: t for name, t in TARGETS.items() if t.runtime == "pytorch" and runs_on(t, device.type)}
    names = list(pytorch) if names is None else names
    unknown = [name for name in names if name not in pytorch]
    if unknown:
        raise ValueError(f"unknown PyTorch target(s) {unknown} on {device.type}; known: {sorted(pytorch)}")
    return {name: _target(model, device, pytorch[name]) for name in names}


def _target(model: MultiMix, device: torch.device, target: Target) -> Callable:
    if target.pipeline == "reference":
        return lambda images: reference_joint(model, images)
    forward = lambda images: joint(model, images)  # noqa: E731
    if target.compile_mode:
        forward = torch.compile(forward, mode=target.compile_mode)
    dtype = AUTOCAST.get(target.precision)
    # CUDA-graph outputs live in buffers the next replay overwrites: copy them out
    copy_out = target.compile_mode == "reduce-overhead"

    def run(images) -> JointOutputs:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            outputs = forward(images)
        if dtype:
            outputs = tuple(t.float() for t in outputs)
        return tuple(t.clone() for t in outputs) if copy_out else outputs

    return run
