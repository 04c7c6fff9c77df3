"""Validation metrics: the definitions of mmtrt.metrics (the same code `mmtrt evaluate` runs).

Classification (held-out classification images, eval mode, fp32): accuracy (argmax),
f1_normal / f1_pneumonia, auroc (on P(PNEUMONIA)) over the whole set.
Segmentation (held-out pairs, mask = sigmoid > 0.5), each metric per image, then averaged:
dice, jaccard, precision, recall, ssim (foreground-probability map vs mask), hd95 and assd (MONAI's
surface distances, pixels) and avg_hausdorff (the region-based average Hausdorff distance,
pixels; about 10x smaller than assd, see mmtrt/metrics.py for which one the papers' "HD" is).
Empty-mask cases are defined (mmtrt/metrics.py), so no metric is NaN except auroc over a
single class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmtrt.metrics import SEG_LOWER_IS_BETTER, average_hausdorff, classification_metrics, segmentation_metrics
from mmtrt.model import MultiMix

from .step import segment

__all__ = ["average_hausdorff", "evaluate_classification", "evaluate_segmentation", "selection_score"]

SEG_MEAN_KEYS = ("dice", "jaccard", "ssim", "avg_hausdorff", "hd95", "assd", "precision", "recall")


@torch.no_grad()
def evaluate_classification(
    model: MultiMix, dataset, device: torch.device, batch_size: int = 32
) -> dict[str, float]:
    model.eval()
    labels, probs = [], []
    for images, y in DataLoader(dataset, batch_size=batch_size):
        logits = model.encoder(images.to(device)).logits.float()
        probs.append(torch.softmax(logits, 1).cpu().numpy())
        labels.append(np.asarray(y))
    return classification_metrics(np.concatenate(labels), np.concatenate(probs))


@torch.no_grad()
def evaluate_segmentation(
    model: MultiMix, dataset, device: torch.device, bridge: bool = True, batch_size: int = 16
) -> dict[str, float]:
    model.eval()
    per_image: list[dict[str, float]] = []
    for images, masks in DataLoader(dataset, batch_size=batch_size):
        images = images.to(device)
        # (the saliency graph is explicit forward ops: no autograd needed, so no_grad is fine)
        probs = torch.sigmoid(segment(model, images, bridge=bridge)).float().cpu().numpy()
        for p, t in zip(probs[:, 0], masks[:, 0].numpy()):
            per_image.append(segmentation_metrics(p > 0.5, t > 0.5, prob=p))
    return {k: float(np.mean([m[k] for m in per_image])) for k in SEG_MEAN_KEYS}


def selection_score(metrics: dict[str, float], select: str) -> float:
    """Higher is better. auto: mean of accuracy and dice, over those present."""
    if select == "auto":
        vals = [metrics[k] for k in ("accuracy", "dice") if k in metrics]
        return float(np.mean(vals)) if vals else float("nan")
    if select not in metrics:
        raise KeyError(f"--select-metric {select!r} is not among the validation metrics {sorted(metrics)}")
    v = metrics[select]
    return -v if select in SEG_LOWER_IS_BETTER else v
