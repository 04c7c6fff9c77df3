"""The training step: one encoder pass per image, the decoder only where a loss needs it.

``TrainModule(model, cfg)(batch)`` returns ``(loss, parts)``. Its forward is what DDP wraps and what
``torch.compile`` compiles (forward + losses; AOT autograd then compiles the backward too):

    segmentation streams (seg_l + seg_u, ONE concatenated batch):
        encoder forward with tape -> saliency graph (explicit forward ops reusing the tape, so
        differentiable by ordinary autograd: the loss's backward is the double backward, and
        torch.compile handles it) -> decoder -> mask logits -> Dice (seg_l) and KL_seg (seg_l vs seg_u)
    classification streams (cls_l + strong views, ONE concatenated batch):
        encoder only -> logits -> CE (cls_l) and the strong half of L_u.  No decoder, no saliency.
    weak views: encoder only, under no_grad (pseudo-labels carry no gradient), so no activations
        are kept for a backward.

Compared with the reference step (encoder twice + a backward for the saliency, and the decoder,
for all 50 images), this does 1 encoder pass for each image, the saliency graph and the decoder
for the 20 segmentation images only. ``work_per_step`` counts it.

Precision: ``autocast`` covers the whole network (``amp_scope=full``) or the decoder only
(``decoder``: encoder and saliency graph in fp32, which keeps the saliency accurate, see
docs/deployment-notes.md). Instance-norm statistics are always fp32 (mmtrt.model.instance_norm) and
the losses cast to fp32 (train.losses).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmtrt.model import MultiMix

from . import losses
from .config import TrainConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compile_step(module: nn.Module, device: torch.device, **options) -> nn.Module:
    """``torch.compile(module)``, with one fix for CPU: inductor's channels-last layout
    optimisation gives wrong input gradients for a convolution followed by instance norm on CPU
    (torch 2.13: off by 100-250% from 16 channels up; the loss is right), so every weight above
    the last decoder stage trained wrongly. Without it the compiled step matches the eager one
    (benchmarks/results/train_compile_check_cpu.md). The setting is process-wide."""
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.layout_optimization = False
    return torch.compile(module, **options)


def autocast(device_type: str, precision: str, enabled: bool = True):
    if precision == "fp32" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[precision])


def segment(
    model: MultiMix,
    images: torch.Tensor,
    *,
    bridge: bool = True,
    detach_saliency: bool = False,
    precision: str = "fp32",
    amp_scope: str = "full",
) -> torch.Tensor:
    """Mask logits (fp32) from one encoder pass; the saliency (or zeros without the bridge) feeds the
    decoder. Same function for training and validation."""
    dev = images.device.type
    with autocast(dev, precision, enabled=amp_scope == "full"):
        logits, tape = model.encoder.forward_with_tape(images)
        if bridge:
            saliency = model.encoder.input_gradient(logits, tape).abs()
            if detach_saliency:
                saliency = saliency.detach()
        else:
            saliency = torch.zeros_like(images)
    with autocast(dev, precision):
        mask = model.decoder(tape.skips, images, saliency)
    return mask.float()


def classify(
    model: MultiMix, images: torch.Tensor, *, precision: str = "fp32", amp_scope: str = "full"
) -> torch.Tensor:
    with autocast(images.device.type, precision, enabled=amp_scope == "full"):
        return model.encoder(images).logits.float()


class TrainModule(nn.Module):
    def __init__(self, model: MultiMix, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, model = self.cfg, self.model
        kw = {"precision": cfg.precision, "amp_scope": cfg.amp_scope}
        zero = next(model.parameters()).new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        loss = zero

        # ---- segmentation: one forward for labelled + unlabelled images --------------------------
        if "seg_l_img" in batch:
            seg_l = batch["seg_l_img"]
            seg_u = batch.get("seg_u_img")
            images = seg_l if seg_u is None else torch.cat([seg_l, seg_u])
            masks = segment(
                model, images, bridge=cfg.saliency_bridge, detach_saliency=cfg.detach_saliency, **kw
            )
            mask_l = masks[: seg_l.shape[0]]
            parts["dice"] = losses.soft_dice_loss(mask_l, batch["seg_l_mask"])
            loss = loss + cfg.w_dice * parts["dice"]
            if seg_u is not None:
                parts["kl_seg"] = losses.kl_seg(mask_l, masks[seg_l.shape[0] :])
                loss = loss + cfg.w_kl * parts["kl_seg"]

        # ---- classification: labelled + strong views in one encoder pass, weak views no_grad -------
        cls_parts = [batch[k] for k in ("cls_l_img", "cls_s") if k in batch]
        if cls_parts:
            logits = classify(model, torch.cat(cls_parts) if len(cls_parts) > 1 else cls_parts[0], **kw)
            n_l = batch["cls_l_img"].shape[0] if "cls_l_img" in batch else 0
            if n_l:
                parts["ce"] = losses.cross_entropy(logits[:n_l], batch["cls_l_y"])
                loss = loss + cfg.w_ce * parts["ce"]
            if "cls_s" in batch:
                with torch.no_grad():
                    weak_logits = classify(model, batch["cls_w"], **kw)
                parts["l_u"], parts["mask_rate"] = losses.pseudo_label_loss(
                    weak_logits, logits[n_l:], cfg.threshold
                )
                loss = loss + cfg.w_u * parts["l_u"]
        parts["loss"] = loss
        return loss, {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------
# Work per step
# ------------------------------------------------------------------------------------------------
def forward_flops(model: MultiMix, size: int, bridge: bool = True) -> dict[str, float]:
    """FLOPs (multiply-add = 2) of one image's forward pieces, counted by torch's FlopCounterMode
    (convolutions and matrix products), at ``size`` x ``size``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 1, size, size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as fc:
                logits, tape = model.encoder.forward_with_tape(x)
            encoder = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                saliency = model.encoder.input_gradient(logits, tape).abs()
            saliency_graph = fc.get_total_flops()
            with FlopCounterMode(display=False) as fc:
                model.decoder(tape.skips, x, saliency)
            decoder = fc.get_total_flops()
    finally:
        model.train(was_training)
    return {
        "encoder": float(encoder),
        "saliency_graph": float(saliency_graph if bridge else 0),
        "decoder": float(decoder),
    }


def work_per_step(model: MultiMix, cfg: TrainConfig, n_seg: int, n_cls_grad: int, n_cls_nograd: int) -> dict:
    """Forward GFLOP per step of this step vs the reference's (50 images, each: encoder twice + an
    input-gradient backward (~ one encoder) + decoder), at the training size and scaled to 256x256."""
    f = forward_flops(model, cfg.image_size, cfg.saliency_bridge)
    ours = (
        n_seg * (f["encoder"] + f["saliency_graph"] + f["decoder"])
        + (n_cls_grad + n_cls_nograd) * f["encoder"]
    )
    per_image_ref = 3 * f["encoder"] + f["decoder"]
    ref_images = 5 * cfg.batch_size
    scale = (256 / cfg.image_size) ** 2
    return {
        "image_size": cfg.image_size,
        "images_per_step": n_seg + n_cls_grad + n_cls_nograd,
        "decoder_images_per_step": n_seg,
        "forward_gflop_per_step": ours / 1e9,
        "forward_gflop_per_step_at_256": ours * scale / 1e9,
        "reference_images_per_step": ref_images,
        "reference_forward_gflop_per_step": ref_images * per_image_ref / 1e9,
        "reference_forward_gflop_per_step_at_256": ref_images * per_image_ref * scale / 1e9,
        "reference_gflop_per_image_at_256": per_image_ref * scale / 1e9,
        "per_image_gflop_at_256": {k: v * scale / 1e9 for k, v in f.items()},
        "note": "forward FLOPs of convolutions and matrix products (FlopCounterMode); the backward "
        "of training costs about twice the forward for both pipelines",
    }
