"""What every parity check of mmtrt runs on and measures: the image kinds (fresh random noise,
images with exactly flat regions, synthetic X-rays) and the figures (relative error, cosine,
Dice). Export validation, the benchmarks and the tests all take them from here.

Flat regions matter: real X-rays have black borders and saturated markers, where max-pool
windows hold ties and a one-ulp difference in the forward moves a saliency gradient.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KINDS = ("random", "flat", "xray")
IMAGE_SIZE = 256  # the graphs are exported for 256x256 inputs


def make_image(kind: str, seed: int, channels: int = 1, size: int = IMAGE_SIZE) -> torch.Tensor:
    """One float32 [channels, size, size] image in [0, 1] of `kind`, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":  # no ties anywhere
        image = torch.rand(1, size, size, generator=gen)
    elif kind == "flat":  # exactly flat regions: black borders (0), a saturated block (1), plateaus
        image = torch.rand(1, 1, size // 8, size // 8, generator=gen)
        image = torch.nn.functional.interpolate(
            image, size=(size, size), mode="bilinear", align_corners=False
        )[0]
        image = torch.round(image * 32) / 32
        border = int(torch.randint(size // 32, size // 6, (1,), generator=gen))
        image[:, :, :border] = 0.0
        image[:, -border // 2 :, :] = 0.0
        image[:, size // 12 : size // 4, -size * 7 // 25 : -size // 12] = 1.0
    elif kind == "xray":  # synthetic chest X-ray: black collimation borders, burnt-in markers
        from mmtrt.data import synth_xray

        pixels, _ = synth_xray(seed, label=seed % 2, size=size)
        image = torch.from_numpy(pixels).float().div(255.0)[None]
    else:
        raise ValueError(f"unknown image kind {kind!r}: choose from {KINDS}")
    return image.expand(channels, size, size).contiguous()


def image_batch(kind: str, batch: int, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``batch`` images [batch, 1, size, size] of ``kind``, the same for the same seed."""
    return torch.stack([make_image(kind, seed * 1000 + i, size=size) for i in range(batch)])


def _array(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    a, b = _array(a), _array(b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def relative_error(a, e) -> float:
    """||a - e|| / ||e|| in float64 (arrays or tensors)."""
    a, e = _array(a), _array(e)
    e = e.astype(np.float64)
    norm = np.linalg.norm(e)
    diff = np.linalg.norm(a.astype(np.float64) - e)
    return float(diff / norm) if norm else (0.0 if diff == 0 else math.inf)


def cosine(a, b) -> float:
    """Cosine of two arrays or tensors, flattened (1 when one is zero)."""
    a, b = _array(a), _array(b)
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norm == 0 else float(a @ b / norm)
