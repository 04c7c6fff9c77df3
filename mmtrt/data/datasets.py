"""Loaders for the real data layouts. Every image goes through the decoder of
:mod:`mmtrt.data.images` (the steps of :func:`~mmtrt.data.images.load_image`), the one
normalisation of training, evaluation, export validation and ``mmtrt infer``.

Layouts (see docs/multimix-reference.md, Datasets):
- classification, Kermany-style: ``root/[split/]{NORMAL,PNEUMONIA}/*.{png,jpg,jpeg}``;
- segmentation, JSRT-style: ``root/[split/]images/NAME.ext`` + ``root/[split/]masks/NAME.ext``;
- segmentation, Montgomery-style: ``root/[split/]CXR_png/NAME.png`` +
  ``ManualMask/leftMask/NAME.png`` + ``ManualMask/rightMask/NAME.png`` (merged with OR).

Every problem with a file is a :class:`DataError` whose message starts with the file's path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .images import (
    IMAGE_EXTENSIONS,
    IMAGE_SIZE,
    DataError,
    _err,
    finish_image,
    load_image,
    probe,
    read_mask_native,
    read_native,
    resize_mask,
)

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "CLASSES",
    "DataError",
    "ClassificationFolder",
    "SegmentationPairs",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

CLASSES = ("NORMAL", "PNEUMONIA")  # class index = alphabetical folder order, as the paper's code
_ON_BAD = ("error", "skip")


# ------------------------------------------------------------------------------------------------
# Folder helpers
# ------------------------------------------------------------------------------------------------


def _base_folder(root: PathLike, split: str | None) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise _err(root, "data folder not found")
    if split is None:
        return root
    base = root / split
    if not base.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise _err(base, f"split folder not found (subfolders of {root}: {have})")
    return base


def _list_images(folder: Path) -> list[Path]:
    # Dot-files are skipped: macOS "._x.png" resource forks, and our own ".x.png.tmp-PID" files.
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


class _BadFilePolicy:
    """on_bad="error": raise at the first bad file; "skip": record it in .skipped."""

    def __init__(self, on_bad: str):
        if on_bad not in _ON_BAD:
            raise ValueError(f"on_bad must be one of {_ON_BAD}, got {on_bad!r}")
        self.on_bad = on_bad
        self.skipped: list[tuple[Path, str]] = []

    def bad(self, err: DataError, path: Path) -> None:
        """``path``: the file the problem is about (the mask for a size mismatch)."""
        if self.on_bad == "error":
            raise err
        self.skipped.append((path, err.problem or str(err)))

    def report(self, where: Path) -> None:
        if self.skipped:
            path, problem = self.skipped[0]
            log.warning(
                "%s: skipped %d bad file(s) (see .skipped); first: %s: %s",
                where,
                len(self.skipped),
                path,
                problem,
            )


# ------------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------------


class _ImageFolder(Dataset):
    """What both loaders share: the folder ``root/[split/]``, the image side ``size``, the bad-file
    policy ``on_bad`` ("error", or "skip": each skipped file in ``.skipped``) and ``paths``, the
    images read. A subclass lists its files in ``_scan``."""

    def __init__(
        self,
        root: PathLike,
        split: str | None = None,
        *,
        on_bad: str = "error",
        size: int = IMAGE_SIZE,
    ):
        policy = _BadFilePolicy(on_bad)
        self.root = _base_folder(root, split)
        self.size = int(size)
        self._scan(policy)
        self.skipped = policy.skipped
        policy.report(self.root)

    def _scan(self, policy: _BadFilePolicy) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.paths)


class ClassificationFolder(_ImageFolder):
    """Kermany-style classification folders: ``root/[split/]{NORMAL,PNEUMONIA}/*.png|jpg|jpeg``
    (extensions case-insensitive; .bmp/.gif/.tif are accepted too, see IMAGE_EXTENSIONS).

    Items are ``(image float32 tensor [1, size, size] in [0, 1], label int)`` with NORMAL = 0,
    PNEUMONIA = 1. Files are checked cheaply at construction (see ``on_bad``); a file that still
    fails to decode later raises DataError from ``__getitem__``.
    """

    def _scan(self, policy: _BadFilePolicy) -> None:
        self.classes = CLASSES
        self.paths: list[Path] = []
        self.labels: list[int] = []
        for label, name in enumerate(CLASSES):
            folder = self.root / name
            if not folder.is_dir():
                raise _err(folder, f"class folder not found (expected {list(CLASSES)})")
            files = _list_images(folder)
            if not files:
                raise _err(folder, f"empty class folder (no {'/'.join(IMAGE_EXTENSIONS)})")
            n_good = 0
            for f in files:
                try:
                    probe(f)
                except DataError as e:
                    policy.bad(e, f)
                    continue
                self.paths.append(f)
                self.labels.append(label)
                n_good += 1
            if n_good == 0:
                raise _err(folder, f"no readable images ({len(files)} bad files skipped)")
        extra = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name not in CLASSES)
        if extra:
            log.warning("%s: ignoring folders that are not classes: %s", self.root, extra)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.paths[i], self.size)
        return torch.from_numpy(img[None]), self.labels[i]


class SegmentationPairs(_ImageFolder):
    """Image + lung-mask pairs in JSRT-style (``images/`` + ``masks/``, matched by file stem,
    any image extension; a mask named ``STEM_mask.ext`` is accepted too) or Montgomery-style
    (``CXR_png/`` + ``ManualMask/leftMask/`` + ``ManualMask/rightMask/``, left OR right) layout,
    under ``root/[split/]``.

    Items are ``(image [1, size, size], mask [1, size, size])``, float32 tensors, the mask in
    {0, 1}. Image and mask must have the same original size (checked from the file headers at
    construction, and again on decoding).
    """

    def _scan(self, policy: _BadFilePolicy) -> None:
        r = self.root
        if (r / "images").is_dir() and (r / "masks").is_dir():
            self.layout = "jsrt"
            image_dir, mask_dirs = r / "images", [r / "masks"]
        elif (r / "CXR_png").is_dir() and all(
            (r / "ManualMask" / s).is_dir() for s in ("leftMask", "rightMask")
        ):
            self.layout = "montgomery"
            image_dir = r / "CXR_png"
            mask_dirs = [r / "ManualMask" / "leftMask", r / "ManualMask" / "rightMask"]
        else:
            found = sorted(p.name for p in r.iterdir() if p.is_dir())
            raise _err(
                r,
                f"unknown segmentation layout (subfolders: {found}); expected images/ + masks/ "
                "(JSRT-style) or CXR_png/ + ManualMask/leftMask/ + ManualMask/rightMask/ "
                "(Montgomery-style)",
            )

        images = _list_images(image_dir)
        if not images:
            raise _err(image_dir, f"no images (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        # stem -> mask files, one index per mask folder
        indexes = []
        for d in mask_dirs:
            idx: dict[str, list[Path]] = {}
            for m in _list_images(d):
                idx.setdefault(m.stem, []).append(m)
            indexes.append(idx)

        self.image_paths: list[Path] = []
        self.mask_paths: list[tuple[Path, ...]] = []  # one mask (JSRT) or (left, right) (MCU)
        used: set[Path] = set()
        for img in images:
            try:
                masks = tuple(self._match(img, d, idx) for d, idx in zip(mask_dirs, indexes))
                used.update(masks)
                w, h = probe(img)
                for m in masks:
                    mw, mh = probe(m)
                    if (mw, mh) != (w, h):
                        raise _err(m, f"mask size {mw}x{mh} differs from its image {img} ({w}x{h})")
            except DataError as e:
                policy.bad(e, e.path or img)
                continue
            self.image_paths.append(img)
            self.mask_paths.append(masks)
        if not self.image_paths:
            raise _err(image_dir, f"no usable image/mask pairs ({len(images)} bad)")
        orphans = sum(len(v) for idx in indexes for v in idx.values()) - len(used)
        if orphans > 0:
            log.warning("%s: %d mask file(s) have no image; ignored", r, orphans)

    @staticmethod
    def _match(img: Path, mask_dir: Path, idx: dict[str, list[Path]]) -> Path:
        found = idx.get(img.stem) or idx.get(img.stem + "_mask") or []
        if not found:
            raise _err(img, f"image without a mask (no {img.stem}.* in {mask_dir})")
        if len(found) > 1:
            raise _err(img, f"several masks match it: {[p.name for p in found]}")
        return found[0]

    @property
    def paths(self) -> list[Path]:
        return self.image_paths

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path = self.image_paths[i]
        values, _ = read_native(img_path)
        fg = None
        for m in self.mask_paths[i]:
            part = read_mask_native(m)
            if part.shape != values.shape:  # headers were checked; re-check what was decoded
                raise _err(
                    m,
                    f"mask size {part.shape[1]}x{part.shape[0]} differs from its image "
                    f"{img_path} ({values.shape[1]}x{values.shape[0]})",
                )
            fg = part if fg is None else (fg | part)  # Montgomery: left OR right lung
        image = finish_image(values, img_path, self.size)
        mask = resize_mask(fg, self.size)
        return torch.from_numpy(image[None]), torch.from_numpy(mask[None])
