"""THE image decoder: any supported file -> grayscale float32 [size, size] in [0, 1].

``load_image`` (pixels only) and ``read_image`` (pixels + :class:`ImageMeta`) are the single
definition of "an input image" for training, export validation, evaluation and ``mmtrt infer``,
so the network never sees two different normalisations (a defect of the reference code, where
streams differed between [0, 1] and (x - 0.5) / 0.5).

Steps, in order:

1. Decode at the native resolution to values in [0, 1]:

   - DICOM (``.dcm``/``.dicom``/``.dic``, a ``DICM`` preamble, or a file Pillow cannot identify
     that pydicom can read): see :mod:`mmtrt.data.dicom` (Modality LUT, VOI, VOI output range
     mapped to [0, 1], MONOCHROME1 / INVERSE inverted).
   - 8-bit samples (PNG/JPEG/BMP/GIF/TIFF; L, P, RGB(A), YCbCr...): Pillow's luma / 255.
   - 16-bit samples (``I;16`` PNG/TIFF, and 32-bit ``I`` clipped to 16 bits): divided by
     ``2**b - 1`` where ``b = max(8, ceil(log2(max + 1)))`` is the bit depth the image's own
     maximum needs (:func:`sixteen_bit_scale`). A 12-bit detector's data in a 16-bit PNG is
     divided by 4095 (not 65535, which makes it nearly black); an 8-bit image stored in 16 bits
     by 255; a file that uses all 16 bits by 65535 as before. The scale depends only on the
     bit depth, so two exposures of one detector keep their relative brightness unless one of
     them stays below half the other's range.
   - 32-bit float images have no defined intensity range: refused.

2. Bilinear resize to ``size x size`` (as float, Pillow's antialiasing BILINEAR).

3. Contrast check: an image whose normalised pixels have a standard deviation below
   :data:`MIN_CONTRAST_STD` (1/255: less than one 8-bit grey level; constant, all-black and
   all-white images) is refused. Such an input gives the network nothing to classify or segment
   ("the same output for every image"). Synthetic X-rays from :func:`mmtrt.data.synth_xray` have
   a std of about 0.2-0.3.

Every problem is a :class:`DataError` whose message starts with the file's path.

``read_image`` / ``load_image`` also take the bytes of a file held in memory
(:class:`EncodedFile`: what the served model ``multimix_image`` receives), decoded exactly as the
file would be; the messages then start with its name. Having no extension, such bytes are told
DICOM by their ``DICM`` preamble or, failing Pillow, by pydicom reading a data set from them.
The size limit is Pillow's ``Image.MAX_IMAGE_PIXELS`` for every format (DICOM Rows x Columns
included): above it, a file is refused as a possible decompression bomb.
"""

from __future__ import annotations

import math
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .decoded import (
    DataError,
    DecodedImage,
    EncodedFile,
    ImageMeta,
    PathLike,
    Source,
    _err,
    as_source,
    readable,
)

__all__ = [
    "IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "MIN_CONTRAST_STD",
    "DataError",
    "DecodedImage",
    "EncodedFile",
    "ImageMeta",
    "load_image",
    "load_mask",
    "read_image",
    "read_native",
    "sixteen_bit_scale",
]

IMAGE_SIZE = 256
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
# Lower-case; matched case-insensitively (Kermany uses .jpeg, some copies .JPG; JSRT/SCR masks
# are often .gif; Montgomery is .png; DICOM exports .dcm).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", *DICOM_EXTENSIONS)
# Below one 8-bit grey level of spread, an image carries no usable contrast.
MIN_CONTRAST_STD = 1.0 / 255.0


# ------------------------------------------------------------------------------------------------
# Pillow formats
# ------------------------------------------------------------------------------------------------


def sixteen_bit_scale(max_value: float) -> float:
    """The divisor of 16-bit samples: ``2**b - 1`` with ``b = max(8, ceil(log2(max + 1)))``,
    the bit depth the image's maximum needs (4095 for 12-bit data, 65535 for full 16-bit)."""
    bits = max(8, math.ceil(math.log2(float(max_value) + 1.0))) if max_value > 0 else 8
    return float(2 ** min(bits, 16) - 1)


def _to_gray(img: Image.Image) -> tuple[np.ndarray, float, str]:
    """Pixels as a 2-D array, the divisor that maps them to [0, 1], and a description of it."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale PNG/TIFF: keep all 16 bits (img.convert("L") would clip at 255,
        # turning most of a 16-bit radiograph white). 32-bit int mode: what Pillow gives for
        # some 16-bit files; values beyond 16 bits have no defined range here, so clipped.
        arr = np.clip(np.asarray(img), 0, 65535).astype(np.float32)
        scale = sixteen_bit_scale(float(arr.max()) if arr.size else 0.0)
        bits = int(round(math.log2(scale + 1)))
        return arr, scale, f"16-bit samples / {scale:.0f} (bit depth the pixels use: {bits})"
    if img.mode == "F":
        raise ValueError("32-bit float images have no defined intensity range; not supported")
    # 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr (JPEG)...: Pillow's luma (ITU-R 601-2); alpha is
    # dropped (radiographs saved as RGBA are opaque).
    return np.asarray(img.convert("L")).astype(np.float32), 255.0, "8-bit samples / 255"


def _first_bytes(source: Path | EncodedFile) -> str:
    """For bytes in memory (there is no file to look at): what they begin with."""
    if not isinstance(source, EncodedFile):
        return ""
    return f": {len(source.data)} bytes beginning {source.data[:16]!r}"


@contextmanager
def _opening(path: Path | EncodedFile):
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
        size = re.search(r"Image size \((\d+) pixels\)", str(e))  # Pillow's message names the size
        what = f"{size.group(1)} pixels" if size else str(e)
        raise _err(
            path,
            f"image too large, possible decompression bomb: {what}, over {Image.MAX_IMAGE_PIXELS} pixels",
        ) from None
    except UnidentifiedImageError:
        raise _err(path, "not an image file (Pillow cannot identify it)" + _first_bytes(path)) from None
    except Exception as e:  # truncated data, broken chunks, CRC errors, odd modes...
        raise _err(path, f"unreadable, corrupt or truncated image ({type(e).__name__}: {e})") from e


def _read_pillow(path: Path | EncodedFile) -> tuple[np.ndarray, float, str, str]:
    """(2-D float32 raw values, divisor, how, format name) of a Pillow-readable file."""
    with _opening(path), Image.open(readable(path)) as img:
        fmt = img.format or "image"
        img.load()  # decode here, inside the guard, so truncated files fail here
        # Camera/phone JPEGs may be stored rotated with an EXIF orientation tag.
        arr, scale, how = _to_gray(ImageOps.exif_transpose(img))
        return arr, scale, how, fmt


_NOT_DICOM = "not a DICOM file"


def _has_dicm_preamble(path: Path | EncodedFile) -> bool:
    if isinstance(path, EncodedFile):
        return path.data[128:132] == b"DICM"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _looks_like_dicom(path: Path | EncodedFile) -> bool:
    return path.suffix.lower() in DICOM_EXTENSIONS or _has_dicm_preamble(path)


def looks_like_dicom(path: Source) -> bool:
    """Is this file read as DICOM first: a DICOM extension (.dcm, .dicom, .dic) or a ``DICM``
    preamble? (A data set written without either is found only when Pillow fails on it.)"""
    return _looks_like_dicom(as_source(path))


def read_native(path: Source) -> tuple[np.ndarray, ImageMeta]:
    """Decode one file fully at its native size: (float32 [rows, columns] in [0, 1], meta).
    Step 1 of the module docstring; no resize, no contrast check."""
    path = as_source(path)
    if _looks_like_dicom(path):
        from .dicom import read_dicom

        return _dicom_or_pillow(path, read_dicom, lambda: read_native_pillow(path))
    return read_native_pillow(path)


def _dicom_or_pillow(path: Path | EncodedFile, dicom, pillow):
    """``dicom(path)``; for a file named .dcm that is no DICOM file at all (no DICM preamble,
    pydicom finds no data set), what Pillow makes of it, if anything: files are read by content."""
    try:
        return dicom(path)
    except DataError as e:
        if _has_dicm_preamble(path) or not (e.problem or "").startswith(_NOT_DICOM):
            raise
        try:
            return pillow()
        except DataError:
            raise e from None


def read_native_pillow(path: Path | EncodedFile) -> tuple[np.ndarray, ImageMeta]:
    try:
        arr, scale, how, fmt = _read_pillow(path)
    except DataError as e:
        if e.problem and e.problem.startswith("not an image file"):
            # No extension, no preamble: a DICOM data set written without its meta header.
            from .dicom import read_dicom_if_dicom

            found = read_dicom_if_dicom(path)
            if found is not None:
                return found
        raise
    values = np.clip(arr / np.float32(scale), 0.0, 1.0).astype(np.float32)
    return values, ImageMeta(format=fmt, rows=arr.shape[0], columns=arr.shape[1], normalisation=how)


def _resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape != (size, size):
        # Resized as float ("F" mode), so 8- and 16-bit files go through the same filter with no
        # intermediate rounding. Pillow's BILINEAR widens its support when shrinking (antialias).
        arr = np.asarray(Image.fromarray(np.asarray(arr, np.float32)).resize((size, size), Image.BILINEAR))
    return np.array(arr, dtype=np.float32)  # writable copy (torch.from_numpy warns otherwise)


def finish_image(values: np.ndarray, path: Source, size: int = IMAGE_SIZE, how: str = "") -> np.ndarray:
    """Steps 2 and 3: native [0, 1] values -> [size, size], refused when without contrast."""
    out = np.clip(_resize_image(values, size), 0.0, 1.0)
    std = float(out.std())
    if not std >= MIN_CONTRAST_STD:  # also NaN
        mean = float(out.mean())
        kind = "all black" if mean < 0.01 else "all white" if mean > 0.99 else "nearly constant"
        raise _err(
            path,
            f"no contrast: {kind} image (mean {mean:.4f}, std {std:.2g} after normalisation to "
            f"[0, 1], below the minimum {MIN_CONTRAST_STD:.4f}); not a usable radiograph"
            + (f" (normalisation: {how})" if how else ""),
        )
    return out


def read_image(path: Source, size: int = IMAGE_SIZE) -> DecodedImage:
    """THE input normalisation with the image's metadata (see the module docstring) of a file,
    or of a file's bytes in memory (:class:`EncodedFile`). Raises DataError naming the file."""
    values, meta = read_native(path)
    return DecodedImage(finish_image(values, path, size, meta.normalisation), meta)


def load_image(path: Source, size: int = IMAGE_SIZE) -> np.ndarray:
    """THE input normalisation: file -> grayscale float32 [size, size] in [0, 1] (see the module
    docstring: DICOM VOI, 8-bit / 255, 16-bit by the bit depth the pixels use; bilinear resize;
    images without contrast refused). Raises DataError naming the file."""
    return read_image(path, size).pixels


# ------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------


def read_mask_native(path: PathLike) -> np.ndarray:
    """A mask file's foreground at its native size (bool). "Half of max" uses the file's own
    maximum, so 0/1, 0/255 and 0/65535 masks (and coloured masks whose luma is e.g. 76) all
    work; an all-zero mask stays empty."""
    path = Path(path)
    if _looks_like_dicom(path):
        values, _ = read_native(path)
        arr = values
    else:
        arr, _, _, _ = _read_pillow(path)
    top = float(arr.max()) if arr.size else 0.0
    return arr > 0.5 * top if top > 0 else np.zeros(arr.shape, dtype=bool)


def resize_mask(fg: np.ndarray, size: int) -> np.ndarray:
    if fg.shape != (size, size):
        # Nearest neighbour: a mask stays binary, no invented boundary values.
        img = Image.fromarray(fg.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
        fg = np.asarray(img) > 127
    return fg.astype(np.float32)


def load_mask(path: PathLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """A binary mask file -> float32 {0, 1} [size, size]: foreground = value > half the file's
    maximum, nearest-neighbour resize. Raises DataError naming the file."""
    return resize_mask(read_mask_native(path), size)


# ------------------------------------------------------------------------------------------------
# Cheap validation (dataset construction)
# ------------------------------------------------------------------------------------------------


def _jpeg_tail_has_eoi(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        return b"\xff\xd9" in f.read()


def probe(path: PathLike) -> tuple[int, int]:
    """Check a file without decoding its pixels and return its (width, height).

    Image.open reads only the header (catches non-images, size bombs); verify() walks a PNG's
    chunks and CRCs (catches truncation and corruption). verify() does nothing for JPEG, so a
    JPEG must end with its end-of-image marker; only when it seems not to (or has trailing
    bytes) is it fully decoded to decide, so a valid file is never rejected by this shortcut.
    DICOM: the header is read and checked (pixel data present, one grayscale frame) and the
    pixel data's length compared with what Rows x Columns x Bits Allocated need.
    """
    path = Path(path)
    if _looks_like_dicom(path):
        from .dicom import probe_dicom

        return _dicom_or_pillow(path, probe_dicom, lambda: _probe_pillow(path))
    return _probe_pillow(path)


def _probe_pillow(path: Path) -> tuple[int, int]:
    with _opening(path), Image.open(path) as img:
        size, fmt = img.size, img.format
        img.verify()
    if fmt == "JPEG" and not _jpeg_tail_has_eoi(path):
        _read_pillow(path)  # raises DataError if it really is truncated
    return size
