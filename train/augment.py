"""Weak and strong augmentations (Pillow + numpy only; torchvision does not import beside this torch).

All functions take a float32 image [H, W] in [0, 1] (the one normalisation of ``load_image``) and a
``numpy.random.Generator``; they return a new float32 [H, W] array in [0, 1]. Randomness comes only
from the generator, so an augmentation is a pure function of (image, generator state): the data
streams seed one generator per (seed, step, stream, item), which makes every batch reproducible and
a resumed run see exactly the batches of an uninterrupted one.

- weak: horizontal flip (p 0.5), reflect padding by size/8 (32 px at 256) and a random crop back to
  the original size (the reference's weak augmentation, also used for labelled classification).
- strong: weak, then the reference's RandAugment pool (FixMatch's ``fixmatch_augment_pool`` without
  Color, which is a no-op on grayscale): ``n`` ops drawn with replacement, each with a magnitude drawn
  uniformly from 1..9 (of 10) and applied with probability 0.5; then, optionally, Cutout (a square
  of side ``cutout * size`` filled with mid-gray, as FixMatch's CutoutAbs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

PARAMETER_MAX = 10  # magnitudes are v / 10 of each op's maximum, as in FixMatch's RandAugmentMC


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="L")


def _from_pil(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def _float_parameter(v: float, max_v: float) -> float:
    return float(v) * max_v / PARAMETER_MAX


def _int_parameter(v: float, max_v: float) -> int:
    return int(v * max_v / PARAMETER_MAX)


def _signed(x: float, rng: np.random.Generator) -> float:
    return -x if rng.random() < 0.5 else x


# ---- the pool: (name, op(img, v, rng)) ----------------------------------------------------------
def _autocontrast(img, v, rng):
    return ImageOps.autocontrast(img)


def _brightness(img, v, rng):
    return ImageEnhance.Brightness(img).enhance(_float_parameter(v, 0.9) + 0.05)


def _contrast(img, v, rng):
    return ImageEnhance.Contrast(img).enhance(_float_parameter(v, 0.9) + 0.05)


def _equalize(img, v, rng):
    return ImageOps.equalize(img)


def _identity(img, v, rng):
    return img


def _posterize(img, v, rng):
    return ImageOps.posterize(img, _int_parameter(v, 4) + 4)


def _rotate(img, v, rng):
    return img.rotate(_signed(_int_parameter(v, 30), rng), resample=Image.BILINEAR, fillcolor=0)


def _sharpness(img, v, rng):
    return ImageEnhance.Sharpness(img).enhance(_float_parameter(v, 0.9) + 0.05)


def _shear_x(img, v, rng):
    s = _signed(_float_parameter(v, 0.3), rng)
    return img.transform(img.size, Image.AFFINE, (1, s, 0, 0, 1, 0), resample=Image.BILINEAR, fillcolor=0)


def _shear_y(img, v, rng):
    s = _signed(_float_parameter(v, 0.3), rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, s, 1, 0), resample=Image.BILINEAR, fillcolor=0)


def _solarize(img, v, rng):
    return ImageOps.solarize(img, 256 - _int_parameter(v, 256))


def _translate_x(img, v, rng):
    t = _signed(_float_parameter(v, 0.3), rng) * img.size[0]
    return img.transform(img.size, Image.AFFINE, (1, 0, t, 0, 1, 0), resample=Image.BILINEAR, fillcolor=0)


def _translate_y(img, v, rng):
    t = _signed(_float_parameter(v, 0.3), rng) * img.size[1]
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, t), resample=Image.BILINEAR, fillcolor=0)


STRONG_POOL: tuple[tuple[str, Callable], ...] = (
    ("AutoContrast", _autocontrast),
    ("Brightness", _brightness),
    ("Contrast", _contrast),
    ("Equalize", _equalize),
    ("Identity", _identity),
    ("Posterize", _posterize),
    ("Rotate", _rotate),
    ("Sharpness", _sharpness),
    ("ShearX", _shear_x),
    ("ShearY", _shear_y),
    ("Solarize", _solarize),
    ("TranslateX", _translate_x),
    ("TranslateY", _translate_y),
)


# ---- public ---------------------------------------------------------------------------------------
def weak(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip (p 0.5), reflect-pad by size/8, random crop back to [H, W]."""
    h, w = image.shape
    if rng.random() < 0.5:
        image = image[:, ::-1]
    pad = max(1, h // 8)
    padded = np.pad(image, pad, mode="reflect")
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    return np.ascontiguousarray(padded[top : top + h, left : left + w], dtype=np.float32)


def randaugment(image: np.ndarray, rng: np.random.Generator, n_ops: int = 2) -> np.ndarray:
    """``n_ops`` ops of the pool, drawn with replacement; magnitude in 1..9; each applied w.p. 0.5."""
    img = None  # converted to 8 bits (Pillow's ops need mode "L") only when an op is applied
    for _ in range(n_ops):
        _, op = STRONG_POOL[int(rng.integers(len(STRONG_POOL)))]
        v = int(rng.integers(1, PARAMETER_MAX))  # 1..9
        if rng.random() < 0.5:
            img = op(_to_pil(image) if img is None else img, v, rng)
    return image if img is None else _from_pil(img)


def cutout(image: np.ndarray, rng: np.random.Generator, fraction: float, fill: float = 0.5) -> np.ndarray:
    """A square hole of side ``fraction * size`` at a random centre (clipped at the borders)."""
    h, w = image.shape
    side = int(round(fraction * min(h, w)))
    if side <= 0:
        return image
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(0, cy - side // 2), min(h, cy - side // 2 + side)
    x0, x1 = max(0, cx - side // 2), min(w, cx - side // 2 + side)
    out = image.copy()
    out[y0:y1, x0:x1] = fill
    return out


def strong(
    image: np.ndarray, rng: np.random.Generator, n_ops: int = 2, cutout_fraction: float = 0.0
) -> np.ndarray:
    """Weak, then RandAugment, then (if ``cutout_fraction`` > 0) Cutout."""
    out = randaugment(weak(image, rng), rng, n_ops)
    if cutout_fraction > 0:
        out = cutout(out, rng, cutout_fraction)
    return out
