"""Validation metrics, from torchmetrics where it has them.

Classification (held-out classification images, eval mode, fp32):
    accuracy (BinaryAccuracy on the argmax), f1_normal / f1_pneumonia (MulticlassF1Score,
    average=None), auroc (BinaryAUROC on P(PNEUMONIA)).
Segmentation (held-out pairs, mask = sigmoid > 0.5):
    dice (segmentation.DiceScore, per sample then averaged), jaccard (segmentation.MeanIoU, per
    sample then averaged), ssim (StructuralSimilarityIndexMeasure between the foreground
    probability map and the mask, data_range 1), precision / recall (BinaryPrecision /
    BinaryRecall over all pixels), avg_hausdorff.
torchmetrics has no *average* Hausdorff distance (its HausdorffDistance is the maximum one), so
avg_hausdorff is computed from scipy.ndimage's Euclidean distance transform:
    AHD(P, T) = max(mean_{p in P} d(p, T), mean_{t in T} d(t, P))   in pixels
(the symmetric "max of directed averages" form); when exactly one of P, T is empty it is the image
diagonal (the worst possible), when both are, 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from mmtrt.model import MultiMix

from .step import segment

# Validation runs on one process (rank 0) of a DDP run: no cross-process sync of metric states.
LOCAL = {"sync_on_compute": False}


def _torchmetrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchmetrics.classification import (
            BinaryAccuracy,
            BinaryAUROC,
            BinaryPrecision,
            BinaryRecall,
            MulticlassF1Score,
        )
        from torchmetrics.image import StructuralSimilarityIndexMeasure
        from torchmetrics.segmentation import DiceScore, MeanIoU
    return {
        m.__name__: m
        for m in (
            BinaryAccuracy,
            BinaryAUROC,
            BinaryPrecision,
            BinaryRecall,
            MulticlassF1Score,
            StructuralSimilarityIndexMeasure,
            DiceScore,
            MeanIoU,
        )
    }


def average_hausdorff(pred: np.ndarray, target: np.ndarray) -> float:
    """Symmetric average Hausdorff distance (pixels) between two boolean masks [H, W]."""
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float(math.hypot(*pred.shape))
    d_to_target = ndimage.distance_transform_edt(~target)
    d_to_pred = ndimage.distance_transform_edt(~pred)
    return float(max(d_to_target[pred].mean(), d_to_pred[target].mean()))


@torch.no_grad()
def evaluate_classification(
    model: MultiMix, dataset, device: torch.device, batch_size: int = 32
) -> dict[str, float]:
    tm = _torchmetrics()
    acc, auroc = tm["BinaryAccuracy"](**LOCAL).to(device), tm["BinaryAUROC"](**LOCAL).to(device)
    f1 = tm["MulticlassF1Score"](num_classes=2, average=None, **LOCAL).to(device)
    model.eval()
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        images, labels = images.to(device), labels.to(device)
        logits = model.encoder(images).logits.float()
        pred = logits.argmax(1)
        acc.update(pred, labels)
        f1.update(pred, labels)
        auroc.update(torch.softmax(logits, 1)[:, 1], labels)
    f1s = f1.compute()
    return {
        "accuracy": float(acc.compute()),
        "f1_normal": float(f1s[0]),
        "f1_pneumonia": float(f1s[1]),
        "auroc": float(auroc.compute()),
    }


@torch.no_grad()
def evaluate_segmentation(
    model: MultiMix, dataset, device: torch.device, bridge: bool = True, batch_size: int = 16
) -> dict[str, float]:
    tm = _torchmetrics()
    with warnings.catch_warnings():  # (a deprecation notice about the default of `average`, which we set)
        warnings.simplefilter("ignore")
        dice = tm["DiceScore"](
            num_classes=1, average="micro", aggregation_level="samplewise", input_format="one-hot", **LOCAL
        ).to(device)
    iou = tm["MeanIoU"](num_classes=1, input_format="one-hot", **LOCAL).to(device)
    ssim = tm["StructuralSimilarityIndexMeasure"](data_range=1.0, **LOCAL).to(device)
    prec, rec = tm["BinaryPrecision"](**LOCAL).to(device), tm["BinaryRecall"](**LOCAL).to(device)
    ahd = []
    model.eval()
    for images, masks in DataLoader(dataset, batch_size=batch_size):
        images, masks = images.to(device), masks.to(device)
        # (the saliency graph is explicit forward ops: no autograd needed, so no_grad is fine)
        probs = torch.sigmoid(segment(model, images, bridge=bridge))
        pred, target = (probs > 0.5).long(), masks.long()
        dice.update(pred, target)
        iou.update(pred, target)
        ssim.update(probs, masks.float())
        prec.update(pred, target)
        rec.update(pred, target)
        for p, t in zip(pred[:, 0].cpu().numpy(), target[:, 0].cpu().numpy()):
            ahd.append(average_hausdorff(p, t))
    return {
        "dice": float(dice.compute()),
        "jaccard": float(iou.compute()),
        "ssim": float(ssim.compute()),
        "avg_hausdorff": float(np.mean(ahd)),
        "precision": float(prec.compute()),
        "recall": float(rec.compute()),
    }


def selection_score(metrics: dict[str, float], select: str) -> float:
    """Higher is better. auto: mean of accuracy and dice, over those present."""
    if select == "auto":
        vals = [metrics[k] for k in ("accuracy", "dice") if k in metrics]
        return float(np.mean(vals)) if vals else float("nan")
    if select not in metrics:
        raise KeyError(f"--select-metric {select!r} is not among the validation metrics {sorted(metrics)}")
    v = metrics[select]
    return -v if select == "avg_hausdorff" else v
