"""The image gate: an out-of-distribution score computed inside the exported graphs.

Method: the Mahalanobis distance of the encoder's features to class-conditional Gaussians with a
shared covariance, fitted on training images (Lee et al., "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018), on the features of
every encoder stage (their "feature ensemble"), without input pre-processing (it needs a gradient
step per image) and without the logistic-regression weights of the stages (they are fitted on
out-of-distribution examples, which a clinic does not have): each stage's squared distance is
divided by its dimension and the stages are averaged, so a typical training image scores about 1.

    f_s        = spatial mean of max_pool(skip_s, 2) of stage s  (the 5th is the classifier's feature)
    score      = min over classes c of  mean over stages s of  |W_s (f_s - mu_cs)|^2 / D_s
    W_s        = Sigma_s^(-1/2), Sigma_s the within-class covariance of stage s (Ledoit-Wolf
                 shrinkage: a few hundred images and up to 256 dimensions)
    in_distribution = score <= threshold, the ``quantile`` of held-out in-distribution scores

:class:`OODGate` is that computation as torch ops over the skips (a MatMul, a ReduceSum and a
ReduceMin in ONNX: every runtime and TensorRT run it, in float32 in every precision's copy); it is
part of :class:`mmtrt.model.MultiMix` but not of its checkpoints: ``mmtrt export`` fits it
(:func:`fit_gate`) and stores it in the export as ``ood.npz`` (sha256 in the manifest) and inside
the graphs. Until fitted, every image scores and passes (threshold +inf).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STATS_FILE = "ood.npz"
MANIFEST_KEY = "ood"
MAX_FIT_IMAGES = 4000  # per split: a bound on export time; the covariance is shrunk anyway
METHOD = (
    "Mahalanobis distance to class-conditional Gaussians with a shared covariance (Lee et al., "
    "NeurIPS 2018), averaged over the five encoder stages (each divided by its dimension; "
    "Ledoit-Wolf shrinkage)"
)


class OODError(ValueError):
    """Images or statistics the gate cannot be fitted or loaded from."""


def stage_features(skips: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, sum of stage widths]: each stage's max-pooled activations, averaged over space (row by
    row, then over the rows, as mmtrt.model.spatial_mean: no runtime sums a whole plane into one
    float32 accumulator)."""
    return torch.cat([F.max_pool2d(s, 2).mean(dim=3).mean(dim=2) for s in skips], dim=1)


class OODGate(nn.Module):
    """skips -> (ood_score [B, 1] float32, in_distribution [B, 1] bool)."""

    def __init__(self, widths: Sequence[int], num_classes: int):
        super().__init__()
        dims = sum(widths)
        self.widths = tuple(int(w) for w in widths)
        # not in checkpoints (persistent=False): an export carries them
        self.register_buffer("centers", torch.zeros(num_classes, dims), persistent=False)
        self.register_buffer("whitening", torch.eye(dims) / math.sqrt(dims), persistent=False)
        self.register_buffer("threshold", torch.tensor(math.inf), persistent=False)

    @property
    def fitted(self) -> bool:
        return bool(torch.isfinite(self.threshold))

    def forward(self, skips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        features = stage_features(skips)
        diff = features[:, None, :] - self.centers[None]  # [B, C, D]: centred before whitening
        z = diff @ self.whitening
        score = torch.amin((z * z).sum(dim=2), dim=1, keepdim=True)  # ReduceMin: no ArgMin
        return score, score <= self.threshold

    def load(self, stats: dict[str, np.ndarray]) -> OODGate:
        """Take the fitted statistics (as :func:`fit_statistics` gives them); checked first."""
        expected = {
            "centers": tuple(self.centers.shape),
            "whitening": tuple(self.whitening.shape),
            "threshold": (),
        }
        for name, shape in expected.items():
            value = np.asarray(stats.get(name))
            if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
                raise OODError(
                    f"out-of-distribution statistic {name!r}: shape {value.shape}, expected {shape}"
                )
            if not (np.isfinite(value).all() or (name == "threshold" and value == np.inf)):
                raise OODError(f"out-of-distribution statistic {name!r} is not finite")  # (+inf: not fitted)
            getattr(self, name).copy_(
                torch.from_numpy(value.astype(np.float64)).to(getattr(self, name).dtype)
            )
        return self

    def statistics(self) -> dict[str, np.ndarray]:
        return {
            name: getattr(self, name).detach().double().cpu().numpy()
            for name in ("centers", "whitening", "threshold")
        }


# --------------------------------------------------------------------------- fitting


def fit_statistics(features: np.ndarray, labels: np.ndarray, widths: Sequence[int], num_classes: int) -> dict:
    """Class means and the stage-wise whitening (block-diagonal, each block scaled so a stage's
    squared distance is divided by its dimension and the stages averaged), in float64."""
    from sklearn.covariance import ledoit_wolf

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or f.shape[1] != sum(widths) or len(y) != len(f):
        raise OODError(f"features {f.shape} and {len(y)} labels do not fit stages of widths {list(widths)}")
    present = [c for c in range(num_classes) if np.any(y == c)]
    if len(f) < 2 * len(present) + 1:
        raise OODError(f"fitting the out-of-distribution score needs more images than {len(f)}")
    means = np.stack([f[y == c].mean(axis=0) for c in present])
    # a class without images shares the nearest class's Gaussian (it cannot have its own)
    centers = np.stack([means[present.index(c)] if c in present else means[0] for c in range(num_classes)])
    centred = f - centers[y]
    whitening = np.zeros((f.shape[1], f.shape[1]))
    start = 0
    for width in widths:
        block = slice(start, start + width)
        covariance, _ = ledoit_wolf(centred[:, block], assume_centered=True)
        eigenvalues, vectors = np.linalg.eigh(covariance)
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-6)  # a constant feature stays bounded
        inverse_root = (vectors / np.sqrt(eigenvalues)) @ vectors.T
        whitening[block, block] = inverse_root / math.sqrt(width * len(widths))
        start += width
    return {"centers": centers, "whitening": whitening}


def score_features(features: np.ndarray, stats: dict) -> np.ndarray:
    """The score of stage features [N, D] under ``stats``, in float64 (what the graphs compute)."""
    diff = np.asarray(features, dtype=np.float64)[:, None, :] - stats["centers"][None]
    z = diff @ stats["whitening"]
    return (z * z).sum(axis=2).min(axis=1)


def _batches(folder, indices: Sequence[int], batch: int):
    for start in range(0, len(indices), batch):
        yield torch.stack([folder[i][0] for i in indices[start : start + batch]])


def _sample(n: int, limit: int, seed: int = 0) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())


def fit_gate(
    model,
    data: Path,
    *,
    fit_split: str = "train",
    threshold_split: str = "val",
    quantile: float,
    batch: int = 16,
    echo=print,
) -> dict:
    """Fit ``model.ood`` on the classification root ``data`` (Kermany layout): the Gaussians on
    ``fit_split``, the threshold at ``quantile`` of ``threshold_split``'s scores (held out).
    Returns the record the manifest keeps (the statistics are in ``model.ood``)."""
    from mmtrt.data import ClassificationFolder, DataError

    if not 0.5 <= quantile < 1.0:
        raise OODError(f"the threshold quantile must be in [0.5, 1), got {quantile}")
    size = 256
    try:
        fit_images = ClassificationFolder(Path(data), fit_split, size=size)
        held_out = ClassificationFolder(Path(data), threshold_split, size=size)
    except DataError as e:
        raise OODError(f"out-of-distribution data: {e}") from None
    model = model.eval()
    gate = model.ood

    @torch.no_grad()
    def features(folder, indices):
        return np.concatenate(
            [
                stage_features(model.encoder(b).skips).double().numpy()
                for b in _batches(folder, indices, batch)
            ]
        )

    fit_index, held_index = _sample(len(fit_images), MAX_FIT_IMAGES), _sample(len(held_out), MAX_FIT_IMAGES)
    echo(
        f"fitting the out-of-distribution score on {len(fit_index)} images of {data}/{fit_split}, "
        f"its threshold on {len(held_index)} of {threshold_split}"
    )
    fit_features = features(fit_images, fit_index)
    stats = fit_statistics(
        fit_features, np.asarray(fit_images.labels)[fit_index], gate.widths, gate.centers.shape[0]
    )
    held_scores = score_features(features(held_out, held_index), stats)
    quantile_value = np.quantile(held_scores, quantile, method="higher")
    threshold = np.float32(quantile_value)  # as the graphs hold it, never below the quantile
    if threshold < quantile_value:
        threshold = np.nextafter(threshold, np.float32(np.inf))
    gate.load({**stats, "threshold": np.float64(threshold)})
    false_rejects = float(np.mean(held_scores > threshold))
    echo(
        f"  threshold {threshold:.4g}: the {quantile} quantile of the held-out scores "
        f"({false_rejects:.1%} of those images rejected; median {np.median(held_scores):.3g})"
    )
    return {
        "method": METHOD,
        "file": STATS_FILE,
        "threshold": float(threshold),
        "quantile": quantile,
        "fit": {
            "data": str(Path(data).resolve()),
            "split": fit_split,
            "images": len(fit_index),
            "median_score": float(np.median(score_features(fit_features, stats))),
        },
        "held_out": {
            "split": threshold_split,
            "images": len(held_index),
            "false_reject_rate": false_rejects,
            "median_score": float(np.median(held_scores)),
        },
    }


def stats_bytes(gate: OODGate) -> bytes:
    """``ood.npz``: the gate's statistics in float64 (numpy arrays only, no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **gate.statistics())
    return buffer.getvalue()


def read_stats(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as e:
        raise OODError(f"{path}: not readable as out-of-distribution statistics: {e}") from None
