"""DICOM radiographs -> values in [0, 1] at the native size, plus their metadata.

Used by :func:`mmtrt.data.images.read_image` (THE decoder); call that, not this module. pydicom 3
and its ``pydicom.pixels`` API; compressed transfer syntaxes through the plugins (pylibjpeg +
pylibjpeg-libjpeg: JPEG baseline/extended/lossless; pylibjpeg-openjpeg: JPEG 2000; pylibjpeg-rle
or pydicom itself: RLE; pyjpegls: JPEG-LS).

Pixel values, in this order (PS3.3 C.11 grayscale pipeline):

1. stored values (Bits Stored 8..16, signed or unsigned, any byte order or VR encoding);
2. Modality LUT: the Modality LUT Sequence, else Rescale Slope / Intercept
   (``pydicom.pixels.apply_modality_lut``);
3. VOI: the first item of the VOI LUT Sequence if present (applied here: pydicom 3.0's
   ``apply_voi`` mis-indexes LUTs of 8-bit entries), else the first Window Center / Width (VOI
   LUT Function LINEAR, LINEAR_EXACT or SIGMOID; ``pydicom.pixels.apply_windowing(..., index=0)``),
   else none;
4. the VOI output range mapped linearly to [0, 1]: for a VOI LUT, ``[0, 2**n - 1]`` with n the
   bits of its LUT Descriptor; for a window or no VOI, the range of the Modality LUT output over
   the stored range (``[-2**(b-1), 2**(b-1) - 1]`` or ``[0, 2**b - 1]`` for Bits Stored b, through
   the rescale; ``[0, 2**n - 1]`` for a Modality LUT Sequence), which is the range pydicom's
   windowing maps to (with slope 2 / intercept -100 on 12-bit data: [-100, 8090]);
5. inversion (``1 - x``) when Photometric Interpretation is MONOCHROME1 (white = low values;
   pydicom's VOI step does not invert it) or when Presentation LUT Shape is INVERSE. The two
   are one inversion, not two: the DX IOD requires INVERSE exactly when MONOCHROME1
   (PS3.3 C.8.11.6.1.2), both saying "low values are white".

Refused (DataError naming the file and the reason): no Pixel Data (structured reports, RT
plans...), several frames, colour (RGB, YBR, palette: chest radiographs are grayscale), Bits
Stored outside 8..16, float pixel data, truncated files, transfer syntaxes with no decoder
(the message names the syntax and the package to install). Accepted with a warning
(:class:`DicomWarning`, also in ``ImageMeta.warnings``): single-frame grayscale images whose
Modality is not CR or DX (which the input gate, :mod:`mmtrt.data.gate`, refuses before the model
sees them unless its ``modality`` rule is relaxed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .decoded import DataError, EncodedFile, ImageMeta, Source, _err, as_source, readable

__all__ = [
    "DicomWarning",
    "RADIOGRAPH_MODALITIES",
    "read_dataset",
    "pixel_spacing",
    "read_dicom",
    "dicom_to_unit_range",
    "voi_output_range",
]

RADIOGRAPH_MODALITIES = ("CR", "DX")
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# Transfer syntax UID prefix -> the packages that decode it (pip names).
_PLUGINS = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg and pylibjpeg-libjpeg",  # JPEG baseline / extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg and pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg and pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.8": "pyjpegls",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg and pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg and pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg and pylibjpeg-rle",  # RLE (pydicom also has its own)
}


class DicomWarning(UserWarning):
    """A DICOM file accepted, but not as expected of a chest radiograph."""


# ------------------------------------------------------------------------------------------------
# Reading the data set
# ------------------------------------------------------------------------------------------------


def read_dataset(path: Source, *, stop_before_pixels: bool = False):
    """The pydicom Dataset of ``path`` (or of a file's bytes, :class:`EncodedFile`); a file
    without preamble or meta header is read with ``force=True``. Raises DataError naming the
    file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = as_source(path)
    try:
        try:
            return pydicom.dcmread(readable(path), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            pass  # no preamble / meta header: maybe a bare data set
        try:
            ds = pydicom.dcmread(readable(path), stop_before_pixels=stop_before_pixels, force=True)
        except Exception as e:
            raise _err(
                path,
                f"not a DICOM file (no preamble or meta header; not a bare data set: {type(e).__name__})",
            ) from None
        if len(ds) == 0 or not any(tag.group in (0x0008, 0x0028, 0x7FE0) for tag in ds.keys()):
            raise _err(path, "not a DICOM file (no preamble, no meta header, no DICOM elements)")
        return ds
    except DataError:
        raise
    except FileNotFoundError:
        raise _err(path, "file not found") from None
    except IsADirectoryError:
        raise _err(path, "is a folder, not a file") from None
    except PermissionError as e:
        raise _err(path, f"cannot read ({e})") from None
    except Exception as e:  # truncated headers, bad lengths, broken sequences...
        raise _err(path, f"unreadable or truncated DICOM file ({type(e).__name__}: {e})") from e


def _transfer_syntax(ds):
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None:  # no meta header: pydicom read it with the encoding it detected
        if getattr(ds, "is_little_endian", True) is False:
            return UID("1.2.840.10008.1.2.2")
        return ImplicitVRLittleEndian if getattr(ds, "is_implicit_VR", True) else UID("1.2.840.10008.1.2.1")
    return UID(str(uid))


def _ensure_transfer_syntax(ds) -> None:
    """pydicom's decoders read the syntax from the meta header; a file without one gets the
    syntax it was read with."""
    from pydicom.dataset import FileMetaDataset

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)


def _syntax_name(uid) -> str:
    name = getattr(uid, "name", "") or ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def _check_image(ds, path: Path | EncodedFile) -> list[str]:
    """Refuse what is not a single-frame grayscale image; return the warnings."""
    sop = ds.get("SOPClassUID")
    what = f"{getattr(sop, 'name', sop)}" if sop else "this data set"
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if other:
            raise _err(path, f"float pixel data ({other[0]}) is not a radiograph; not supported")
        raise _err(
            path,
            f"no Pixel Data: {what} (Modality {ds.get('Modality', '?')}) is not an image "
            "(a structured report, an RT plan...)",
        )
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        raise _err(path, f"invalid Number of Frames {frames!r}") from None
    if frames > 1:
        raise _err(path, f"multi-frame image ({frames} frames): give one radiograph per file")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in GRAYSCALE:
        raise _err(
            path,
            f"colour image (Photometric Interpretation {photometric or '?'}, {samples} sample(s) "
            "per pixel): chest radiographs are grayscale (MONOCHROME1/MONOCHROME2)",
        )
    for key in ("Rows", "Columns", "BitsAllocated", "BitsStored"):
        if ds.get(key) in (None, ""):
            raise _err(path, f"no {key} in the image pixel description")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise _err(path, f"empty image ({rows} x {cols})")
    from PIL import Image

    if rows * cols > Image.MAX_IMAGE_PIXELS:  # the same limit as for other formats
        raise _err(
            path,
            f"image too large, possible decompression bomb ({rows} x {cols} pixels, more than "
            f"{Image.MAX_IMAGE_PIXELS})",
        )
    bits = int(ds.BitsStored)
    if not 8 <= bits <= 16:
        raise _err(path, f"Bits Stored {bits} is not supported (radiographs: 8..16)")
    if int(ds.BitsAllocated) not in (8, 16):
        raise _err(path, f"Bits Allocated {int(ds.BitsAllocated)} is not supported (8 or 16)")
    _check_grayscale_transform(ds, path)
    notes = []
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality not in RADIOGRAPH_MODALITIES:
        notes.append(
            f"Modality {modality or 'missing'} is not a radiograph ({'/'.join(RADIOGRAPH_MODALITIES)}); "
            "read as a grayscale image anyway, the model was made for chest X-rays"
        )
    return notes


def _decode(ds, path: Path | EncodedFile) -> np.ndarray:
    from pydicom.pixels import get_decoder

    _ensure_transfer_syntax(ds)
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise _err(
            path,
            f"transfer syntax {_syntax_name(syntax)} cannot be decoded: pydicom has no decoder "
            "for it (convert the file to an uncompressed, JPEG, JPEG 2000, JPEG-LS or RLE syntax)",
        ) from None
    if not decoder.is_available:
        package = next((p for k, p in _PLUGINS.items() if str(syntax).startswith(k)), None)
        missing = "; ".join(decoder.missing_dependencies) or "no plugin registered"
        raise _err(
            path,
            f"transfer syntax {_syntax_name(syntax)} needs a decoder plugin that is not installed: "
            f"pip install {package or 'the plugin pydicom names'} ({missing})",
        )
    try:
        arr, _ = decoder.as_array(ds, index=None)
    except Exception as e:
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        text = text if len(text) < 400 else text[:400] + "..."
        if "less than expected" in text or "truncat" in text.lower():
            raise _err(path, f"truncated pixel data ({text})") from None
        raise _err(path, f"cannot decode the pixel data ({type(e).__name__}: {text})") from e
    if arr.ndim != 2:
        raise _err(path, f"decoded pixel data has shape {arr.shape}, expected one grayscale frame")
    return arr


# ------------------------------------------------------------------------------------------------
# Grayscale pipeline
# ------------------------------------------------------------------------------------------------


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


#: LUT Descriptor bounds (PS3.3 C.11.1.1): up to 2**16 entries (0 means 2**16), the first mapped
#: value a 16-bit stored value (signed or not), entries of 8 to 16 bits
_LUT_ENTRIES_MAX = 65536
_LUT_FIRST_RANGE = (-32768, 65535)
_LUT_BITS_RANGE = (8, 16)


def _lut_bits(item) -> int:
    return int(item.LUTDescriptor[2])  # checked by _check_lut before any use


def _check_lut(item, what: str, path: Path | EncodedFile) -> None:
    """Refuse a LUT whose descriptor or data a hostile file could make expensive: every value is
    bounded here, before ``2 ** bits`` or an array of ``entries`` is computed from it."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        raise _err(path, f"{what}: invalid or missing LUT Descriptor") from None
    if len(descriptor) != 3:
        raise _err(path, f"{what}: LUT Descriptor has {len(descriptor)} values, expected 3")
    entries, first, bits = descriptor
    entries = entries or _LUT_ENTRIES_MAX
    if not 1 <= entries <= _LUT_ENTRIES_MAX:
        raise _err(path, f"{what}: LUT Descriptor entries {entries} outside 1..{_LUT_ENTRIES_MAX}")
    if not _LUT_FIRST_RANGE[0] <= first <= _LUT_FIRST_RANGE[1]:
        raise _err(path, f"{what}: LUT Descriptor first mapped value {first} outside {_LUT_FIRST_RANGE}")
    if not _LUT_BITS_RANGE[0] <= bits <= _LUT_BITS_RANGE[1]:
        raise _err(
            path, f"{what}: LUT Descriptor bits {bits} outside {_LUT_BITS_RANGE[0]}..{_LUT_BITS_RANGE[1]}"
        )
    if "LUTData" not in item:
        raise _err(path, f"{what}: no LUT Data")
    data = item["LUTData"].value
    count = len(data) // 2 if isinstance(data, bytes) else len(data) if isinstance(data, list) else 1
    if not 1 <= count <= 2 * _LUT_ENTRIES_MAX:
        raise _err(path, f"{what}: LUT Data has {count} entries (descriptor: {entries})")


def _finite_values(ds, key: str, path: Path | EncodedFile) -> list[float]:
    """The numeric values of ``key`` (VM 1..n), refused unless each is a finite number."""
    raw = ds[key].value
    values = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)) else [raw]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise _err(path, f"invalid {key} {raw!r}") from None
    if not numbers or not all(np.isfinite(numbers)) or max(abs(x) for x in numbers) > 1e12:
        raise _err(path, f"invalid {key} {raw!r} (not a finite number of a sane size)")
    return numbers


def _check_grayscale_transform(ds, path: Path | EncodedFile) -> None:
    """Bound every value the grayscale pipeline computes with (LUTs, rescale, window) before use."""
    for key, what in (("ModalityLUTSequence", "Modality LUT"), ("VOILUTSequence", "VOI LUT")):
        sequence = ds.get(key)
        if sequence:
            _check_lut(sequence[0], what, path)
    values = {
        key: _finite_values(ds, key, path)
        for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
        if ds.get(key) not in (None, "")
    }
    if "WindowWidth" in values and values["WindowWidth"][0] <= 0:
        raise _err(path, f"invalid Window Width {ds.WindowWidth!r} (must be > 0)")


def voi_output_range(ds) -> tuple[float, float]:
    """The range the VOI step's output is defined on (step 4 of the module docstring)."""
    from pydicom.pixels import apply_modality_lut

    voi = ds.get("VOILUTSequence")
    if voi:
        return 0.0, float(2 ** _lut_bits(voi[0]) - 1)
    mlut = ds.get("ModalityLUTSequence")
    if mlut:
        return 0.0, float(2 ** _lut_bits(mlut[0]) - 1)
    lo, hi = _stored_range(ds)
    ends = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def _describe_voi(ds) -> str:
    if ds.get("VOILUTSequence"):
        return "VOI LUT Sequence (first)"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = ds.WindowCenter, ds.WindowWidth
        c = c[0] if getattr(ds["WindowCenter"], "VM", 1) > 1 else c
        w = w[0] if getattr(ds["WindowWidth"], "VM", 1) > 1 else w
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return f"window center {float(c):g} / width {float(w):g} ({func})"
    return "no VOI (stored range)"


def _apply_voi_lut_item(values: np.ndarray, item, ds) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1): inputs below the first mapped value take the first entry,
    inputs beyond the last the last. Done here rather than with pydicom 3.0's ``apply_voi``,
    which indexes a LUT of 8-bit entries with an 8-bit array (wrong for inputs above 255)."""
    n, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    element = item["LUTData"]
    if element.VR == "OW" or isinstance(element.value, bytes):
        little = _transfer_syntax(ds) != "1.2.840.10008.1.2.2"
        lut = np.frombuffer(bytes(element.value), dtype="<u2" if little else ">u2")
    else:
        lut = np.asarray(element.value if isinstance(element.value, list) else [element.value])
    lut = np.asarray(lut[:n], dtype=np.float64)
    if lut.size == 0:
        raise ValueError("empty VOI LUT")
    index = np.clip(np.rint(np.asarray(values, dtype=np.float64)) - first, 0, lut.size - 1)
    return lut[index.astype(np.int64)]


def dicom_to_unit_range(stored: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """Stored values -> float32 [0, 1] (steps 2-5) and a description of what was applied."""
    from pydicom.pixels import apply_modality_lut, apply_windowing

    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):
        values = _apply_voi_lut_item(values, ds.VOILUTSequence[0], ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_windowing(values, ds, index=0)
    lo, hi = voi_output_range(ds)
    if not hi > lo:
        raise ValueError(f"empty VOI output range [{lo}, {hi}]")
    unit = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    how = [
        f"Modality LUT: {_describe_modality(ds)}",
        f"VOI: {_describe_voi(ds)}",
        f"[{lo:g}, {hi:g}] -> [0, 1]",
    ]
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        unit = 1.0 - unit
        why = " and ".join(
            x
            for x, on in (
                ("MONOCHROME1", photometric == "MONOCHROME1"),
                ("Presentation LUT Shape INVERSE", shape == "INVERSE"),
            )
            if on
        )
        how.append(f"inverted ({why})")
    return unit.astype(np.float32), "; ".join(how)


def _describe_modality(ds) -> str:
    if ds.get("ModalityLUTSequence"):
        return "Modality LUT Sequence"
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        return f"rescale slope {float(slope):g}, intercept {float(intercept):g}"
    return "none"


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def pixel_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    """((row, column) spacing in mm, its attribute's keyword): Pixel Spacing when it holds two
    positive numbers, else Imager Pixel Spacing (at the detector) when it does; (None, None)."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col), key
    return None, None


def _uid(ds, key: str) -> str | None:
    value = ds.get(key)
    return str(value) if value not in (None, "") else None


def _meta(ds, how: str, notes: list[str]) -> ImageMeta:
    spacing, source = pixel_spacing(ds)
    view = str(ds.get("ViewPosition", "") or "").strip() or None
    return ImageMeta(
        format="DICOM",
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        normalisation=how,
        photometric_interpretation=str(ds.PhotometricInterpretation).strip(),
        modality=str(ds.get("Modality", "") or "").strip() or None,
        pixel_spacing_mm=spacing,
        pixel_spacing_source=source,
        view_position=view,
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=_uid(ds, "SOPClassUID"),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        warnings=tuple(notes),
    )


def read_dicom(path: Source, ds=None) -> tuple[np.ndarray, ImageMeta]:
    """(float32 [Rows, Columns] in [0, 1], meta) of a single-frame grayscale DICOM image (a file,
    or a file's bytes: :class:`EncodedFile`)."""
    path = as_source(path)
    if ds is None:
        ds = read_dataset(path)
    notes = _check_image(ds, path)
    stored = _decode(ds, path)
    try:
        unit, how = dicom_to_unit_range(stored, ds)
    except DataError:
        raise
    except Exception as e:  # malformed LUTs or window values
        raise _err(path, f"invalid grayscale transform ({type(e).__name__}: {e})") from e
    for note in notes:
        warnings.warn(f"{path}: {note}", DicomWarning, stacklevel=3)
    return unit, _meta(ds, how, notes)


def read_dicom_if_dicom(path: Path | EncodedFile) -> tuple[np.ndarray, ImageMeta] | None:
    """For a file Pillow cannot identify: read it as DICOM when it is a data set written without
    preamble and meta header (``force=True``) that holds an image description; else None."""
    try:
        ds = read_dataset(path)
    except DataError:
        return None
    if "PixelData" not in ds and "SOPClassUID" not in ds:
        return None
    if ds.get("Rows") is None and "SOPClassUID" not in ds:
        return None
    return read_dicom(path, ds)


def probe_dicom(path: Path) -> tuple[int, int]:
    """(width, height) of a DICOM image after the header checks, without decoding the pixels.
    Native (uncompressed) pixel data shorter than Rows x Columns x Bits Allocated is truncated."""
    ds = read_dataset(path)
    _check_image(ds, path)
    _ensure_transfer_syntax(ds)
    syntax = ds.file_meta.TransferSyntaxUID
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not getattr(syntax, "is_compressed", False):
        need = rows * cols * (int(ds.BitsAllocated) // 8)
        have = len(ds.PixelData)
        if have < need:
            raise _err(path, f"truncated pixel data ({have} of {need} bytes)")
    return cols, rows
