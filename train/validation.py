"""Validation during training and the test of the selected checkpoint: which held-out sets a run
has, and the metrics of a model on them."""

from __future__ import annotations

from pathlib import Path

from mmtrt.data import ClassificationFolder, SegmentationPairs
from mmtrt.model import MultiMix

from . import data as tdata
from .config import TrainConfig
from .metrics import evaluate_classification, evaluate_segmentation


def validate(model: MultiMix, cfg: TrainConfig, cls_set, seg_set, device) -> dict[str, float]:
    """The metrics of ``model`` on the sets given (None: skipped); leaves its mode as it was."""
    metrics: dict[str, float] = {}
    was_training = model.training
    try:
        if cls_set is not None:
            metrics.update(
                evaluate_classification(model, cls_set, device, batch_size=max(cfg.batch_size, 16))
            )
        if seg_set is not None:
            metrics.update(
                evaluate_segmentation(
                    model, seg_set, device, bridge=cfg.saliency_bridge, batch_size=max(cfg.batch_size, 8)
                )
            )
    finally:
        model.train(was_training)
    return metrics


def eval_sets(cfg: TrainConfig, cls_root: Path, seg_root: Path, split: str):
    """(classification set, segmentation set) of ``split`` that the run's objective uses and the
    data has; None for each that is not there."""
    cls_set = seg_set = None
    if cfg.trains_classifier and tdata.has_split(cls_root, split):
        cls_set = ClassificationFolder(cls_root, split, size=cfg.image_size)
    if cfg.uses_seg and tdata.has_split(seg_root, split):
        seg_set = SegmentationPairs(seg_root, split, size=cfg.image_size)
    return cls_set, seg_set
