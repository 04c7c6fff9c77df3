"""Data: the one image normalisation, loaders for the real layouts, and a synthetic generator.

- :func:`load_image` / :func:`load_mask`: file -> float32 [256, 256] in [0, 1] / {0, 1}; the
  normalisation used by training, export validation and inference alike.
- :class:`ClassificationFolder` (Kermany-style) and :class:`SegmentationPairs` (JSRT- or
  Montgomery-style) datasets; every bad file is a :class:`DataError` naming it.
- :func:`synth_xray` / :func:`write_synthetic_datasets`: deterministic synthetic chest X-rays
  with lung masks, written in the same layouts, for tests, smoke runs and benchmarks.
"""

from .datasets import (
    CLASSES,
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    ClassificationFolder,
    DataError,
    SegmentationPairs,
    load_image,
    load_mask,
)
from .synthetic import synth_xray, synth_xray_with_meta, write_synthetic_datasets

__all__ = [
    "CLASSES",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "ClassificationFolder",
    "DataError",
    "SegmentationPairs",
    "load_image",
    "load_mask",
    "synth_xray",
    "synth_xray_with_meta",
    "write_synthetic_datasets",
]
