"""Loaders for the real data layouts, and the one image normalisation every stream uses.

``load_image`` is the single definition of "an input image": grayscale, float32 in [0, 1],
IMAGE_SIZE x IMAGE_SIZE, bilinear. Training, export validation and ``mmtrt infer`` all call it,
so the network never sees two different normalisations (a defect of the reference code, where
streams differed between [0, 1] and (x - 0.5) / 0.5).

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
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "CLASSES",
    "DataError",
    "load_image",
    "load_mask",
    "ClassificationFolder",
    "SegmentationPairs",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

IMAGE_SIZE = 256
# Lower-case; matched case-insensitively (Kermany uses .jpeg, some copies .JPG; JSRT/SCR masks
# are often .gif; Montgomery is .png).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
CLASSES = ("NORMAL", "PNEUMONIA")  # class index = alphabetical folder order, as the paper's code
_ON_BAD = ("error", "skip")


class DataError(ValueError):
    """A data file or folder is missing, unreadable or inconsistent. The message is
    "PATH: PROBLEM"; ``.path`` and ``.problem`` hold the parts (None after the error crossed a
    process boundary, e.g. from a DataLoader worker, where only the message survives)."""

    def __init__(self, message: str, path: PathLike | None = None, problem: str | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.problem = problem


def _err(path: PathLike, problem: str) -> DataError:
    return DataError(f"{path}: {problem}", path, problem)


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


def _to_gray(img: Image.Image) -> tuple[np.ndarray, float]:
    """Pixels as a 2-D array plus the maximum value of the file's sample type."""
    if img.mode.startswith("I;16"):
        # 16-bit grayscale PNG/TIFF: keep all 16 bits. img.convert("L") would clip at 255,
        # turning most of a 16-bit radiograph white.
        return np.asarray(img).astype(np.float32), 65535.0
    if img.mode == "I":
        # 32-bit int mode: what Pillow gives for some 16-bit files; values beyond 16 bits have
        # no defined range in this domain, so they are clipped.
        return np.clip(np.asarray(img), 0, 65535).astype(np.float32), 65535.0
    if img.mode == "F":
        raise ValueError("32-bit float images have no defined intensity range; not supported")
    # 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr (JPEG)...: Pillow's luma (ITU-R 601-2); alpha is
    # dropped (radiographs saved as RGBA are opaque).
    return np.asarray(img.convert("L")).astype(np.float32), 255.0


@contextmanager
def _opening(path: Path):
    """Open-and-decode errors of any kind -> DataError naming the file."""
    try:
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; a decompression bomb
        # in a data folder is an error for us at any size above the limit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DataError:
        raise
    except FileNotFoundError:
        raise _err(path, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _err(path, f"image too large, possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise _err(path, "not an image file (Pillow cannot identify it)") from None
    except Exception as e:  # truncated data, broken chunks, CRC errors, odd modes...
        raise _err(path, f"unreadable, corrupt or truncated image ({type(e).__name__}: {e})") from e


def _read(path: PathLike) -> tuple[np.ndarray, float]:
    """Decode one file fully: (2-D float32 array of raw values, sample-type maximum)."""
    path = Path(path)
    with _opening(path), Image.open(path) as img:
        img.load()  # decode here, inside the guard, so truncated files fail here
        # Camera/phone JPEGs may be stored rotated with an EXIF orientation tag.
        return _to_gray(ImageOps.exif_transpose(img))


def _resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape != (size, size):
        # Resized as float ("F" mode), so 8- and 16-bit files go through the same filter with no
        # intermediate rounding. Pillow's BILINEAR widens its support when shrinking (antialias).
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return np.array(arr, dtype=np.float32)  # writable copy (torch.from_numpy warns otherwise)


def _image_from_array(arr: np.ndarray, maxval: float, size: int) -> np.ndarray:
    return np.clip(_resize_image(arr / np.float32(maxval), size), 0.0, 1.0)


def _mask_from_array(arr: np.ndarray) -> np.ndarray:
    # "Half of max" uses the file's own maximum, so 0/1, 0/255 and 0/65535 masks (and coloured
    # masks whose luma is e.g. 76) all work; an all-zero mask stays empty.
    top = float(arr.max()) if arr.size else 0.0
    fg = arr > 0.5 * top if top > 0 else np.zeros(arr.shape, dtype=bool)
    return fg


def _resize_mask(fg: np.ndarray, size: int) -> np.ndarray:
    if fg.shape != (size, size):
        # Nearest neighbour: a mask stays binary, no invented boundary values.
        img = Image.fromarray(fg.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
        fg = np.asarray(img) > 127
    return fg.astype(np.float32)


def load_image(path: PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """THE input normalisation: any Pillow-readable file (L, I;16, RGB, RGBA, P, JPEG...) ->
    grayscale float32 [size, size] in [0, 1] (divided by the file's sample-type maximum: 255, or
    65535 for 16-bit), bilinear-resized if needed. Raises DataError naming the file."""
    arr, maxval = _read(path)
    return _image_from_array(arr, maxval, size)


def load_mask(path: PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """A binary mask file -> float32 {0, 1} [size, size]: foreground = value > half the file's
    maximum, nearest-neighbour resize. Raises DataError naming the file."""
    arr, _ = _read(path)
    return _resize_mask(_mask_from_array(arr), size)


# ------------------------------------------------------------------------------------------------
# Cheap validation at construction time
# ------------------------------------------------------------------------------------------------


def _jpeg_tail_has_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        return b"\xff\xd9" in f.read()


def _probe(path: Path) -> tuple[int, int]:
    """Check a file without decoding its pixels and return its (width, height).

    Image.open reads only the header (catches non-images, size bombs); verify() walks a PNG's
    chunks and CRCs (catches truncation and corruption). verify() does nothing for JPEG, so a
    JPEG must end with its end-of-image marker; only when it seems not to (or has trailing
    bytes) is it fully decoded to decide, so a valid file is never rejected by this shortcut.
    """
    with _opening(path), Image.open(path) as img:
        size, fmt = img.size, img.format
        img.verify()
    if fmt == "JPEG" and not _jpeg_tail_has_eoi(path):
        _read(path)  # raises DataError if it really is truncated
    return size


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


class ClassificationFolder(Dataset):
    """Kermany-style classification folders: ``root/[split/]{NORMAL,PNEUMONIA}/*.png|jpg|jpeg``
    (extensions case-insensitive; .bmp/.gif/.tif are accepted too, see IMAGE_EXTENSIONS).

    Items are ``(image float32 tensor [1, size, size] in [0, 1], label int)`` with NORMAL = 0,
    PNEUMONIA = 1. Files are checked cheaply at construction (see ``on_bad``); a file that still
    fails to decode later raises DataError from ``__getitem__``.
    """

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
                    _probe(f)
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
        self.skipped = policy.skipped
        policy.report(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = load_image(self.paths[i], self.size)
        return torch.from_numpy(img[None]), self.labels[i]


class SegmentationPairs(Dataset):
    """Image + lung-mask pairs in JSRT-style (``images/`` + ``masks/``, matched by file stem,
    any image extension; a mask named ``STEM_mask.ext`` is accepted too) or Montgomery-style
    (``CXR_png/`` + ``ManualMask/leftMask/`` + ``ManualMask/rightMask/``, left OR right) layout,
    under ``root/[split/]``.

    Items are ``(image [1, size, size], mask [1, size, size])``, float32 tensors, the mask in
    {0, 1}. Image and mask must have the same original size (checked from the file headers at
    construction, and again on decoding).
    """

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
                w, h = _probe(img)
                for m in masks:
                    mw, mh = _probe(m)
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
        self.skipped = policy.skipped
        policy.report(r)

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

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path = self.image_paths[i]
        arr, maxval = _read(img_path)
        fg = None
        for m in self.mask_paths[i]:
            marr, _ = _read(m)
            if marr.shape != arr.shape:  # headers were checked; re-check what was decoded
                raise _err(
                    m,
                    f"mask size {marr.shape[1]}x{marr.shape[0]} differs from its image "
                    f"{img_path} ({arr.shape[1]}x{arr.shape[0]})",
                )
            part = _mask_from_array(marr)
            fg = part if fg is None else (fg | part)  # Montgomery: left OR right lung
        image = _image_from_array(arr, maxval, self.size)
        mask = _resize_mask(fg, self.size)
        return torch.from_numpy(image[None]), torch.from_numpy(mask[None])
