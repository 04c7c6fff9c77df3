"""Data: the one image normalisation, loaders for the real layouts, and a synthetic generator.

- :func:`load_image` / :func:`load_mask` (:mod:`.images`): file (PNG/JPEG/TIFF/..., DICOM via
  :mod:`.dicom`) -> float32 [256, 256] in [0, 1] / {0, 1}; the normalisation used by training,
  export validation and inference alike. :func:`read_image` also returns the image's metadata.
- :class:`ClassificationFolder` (Kermany-style) and :class:`SegmentationPairs` (JSRT- or
  Montgomery-style) datasets; every bad file is a :class:`DataError` naming it.
- :func:`synth_xray` / :func:`write_synthetic_datasets`: deterministic synthetic chest X-rays
  with lung masks, written in the same layouts, for tests, smoke runs and benchmarks.
"""

from .datasets import CLASSES, ClassificationFolder, SegmentationPairs
from .images import (
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    MIN_CONTRAST_STD,
    DataError,
    DecodedImage,
    ImageMeta,
    load_image,
    load_mask,
    read_image,
)
from .synthetic import synth_xray, synth_xray_with_meta, write_synthetic_datasets

__all__ = [
    "CLASSES",
    "IMAGE_EXTENSIONS",
    "IMAGE_SIZE",
    "ClassificationFolder",
    "MIN_CONTRAST_STD",
    "DataError",
    "DecodedImage",
    "ImageMeta",
    "SegmentationPairs",
    "load_image",
    "load_mask",
    "read_image",
    "synth_xray",
    "synth_xray_with_meta",
    "write_synthetic_datasets",
]
