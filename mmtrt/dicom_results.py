"""DICOM results of one DICOM source image, for PACS and viewers (highdicom).

For a source radiograph ``ds`` and MultiMix's outputs on it:

- a **Segmentation** (SEG, BINARY, one segment "Lung": SNOMED CT category Organ, type Lung,
  algorithm AUTOMATIC identified as MultiMix with the mmtrt version and, as algorithm
  parameters, the model name, the checkpoint's sha256 when known and the server's model version)
  at the source's Rows x Columns: the 256 x 256 mask probabilities are resampled bilinearly to
  the native grid, then thresholded at 0.5 (:func:`native_mask`);
- a **Secondary Capture** of the overlay picture (RGB), same references.

Both reference the source image (SOP Class/Instance UID), copy its patient and study attributes
(highdicom does), are a new series each, and are described as not for clinical use: the model is
research software. The writes are atomic; a source whose results cannot all be made writes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "ResultInfo",
    "native_mask",
    "make_segmentation",
    "make_overlay_capture",
    "write_datasets",
    "write_results",
    "DicomResultError",
    "checkpoint_sha256_from_manifest",
]

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
MASK_THRESHOLD = 0.5
MANUFACTURER = "mmtrt"
MODEL_NAME = "MultiMix"
SEG_SERIES_NUMBER = 9701  # high numbers: beside, not among, the modality's own series
SC_SERIES_NUMBER = 9702


@dataclass(frozen=True)
class ResultInfo:
    """What the results say about who made them."""

    model: str = "multimix"  # the served model's name
    model_version: str | None = None  # the server's version of it
    checkpoint_sha256: str | None = None

    @property
    def mmtrt_version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mmtrt")
        except PackageNotFoundError:
            return "unknown"

    def parameters(self) -> dict[str, str]:
        return {
            "model": self.model,
            "model_version": self.model_version or "unknown",
            "checkpoint_sha256": self.checkpoint_sha256 or "unknown",
        }


def checkpoint_sha256_from_manifest(path: Path) -> str | None:
    """The checkpoint's sha256 as an export folder's manifest.json records it (``checkpoint.sha256``);
    None when the file has none. ExportError when ``path`` is not an export manifest."""
    from mmtrt.export.manifest import MANIFEST, ExportError, read_manifest

    path = Path(path)
    if path.name != MANIFEST:
        raise ExportError(f"{path} is not an export's {MANIFEST}")
    manifest = read_manifest(path.parent, check_files=False)
    entry = manifest.get("checkpoint")
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    return str(sha) if sha else None


def native_mask(mask_probs: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The model's mask probabilities ([H, W], e.g. 256 x 256) at the source's rows x columns:
    bilinear resampling (Pillow, float), then > 0.5. Returns bool [rows, columns]."""
    from PIL import Image

    probs = np.asarray(mask_probs, dtype=np.float32)
    if probs.shape != (rows, columns):
        probs = np.asarray(Image.fromarray(probs).resize((columns, rows), Image.BILINEAR))
    return probs > MASK_THRESHOLD


def _describe(text: str) -> str:
    return f"{text} - {NOT_FOR_CLINICAL_USE}"[:64]  # LO: 64 characters


def make_segmentation(source, mask: np.ndarray, info: ResultInfo):
    """A BINARY highdicom Segmentation of ``mask`` (bool [Rows, Columns] of ``source``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"mask {mask.shape} is not at the source's {source.Rows} x {source.Columns}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MODEL_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=f"mmtrt {info.mmtrt_version}"[:64],
        source=MANUFACTURER,
        parameters=info.parameters(),
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lung",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Lung,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=f"mmtrt {info.mmtrt_version}",
        device_serial_number=(info.checkpoint_sha256 or "unknown")[:16],
        content_description=f"MultiMix lung segmentation, {NOT_FOR_CLINICAL_USE}"[:64],
        content_label="LUNG",
        omit_empty_frames=False,  # an empty mask is a result too
    )
    seg.SeriesDescription = _describe("MultiMix lung mask")
    return seg


def _patient_orientation(source) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    # Not in the source: the orientation a chest radiograph is displayed in (rows towards the
    # patient's left, columns towards the feet).
    return "L", "F"


def make_overlay_capture(source, overlay_rgb: np.ndarray, info: ResultInfo):
    """A highdicom Secondary Capture of the overlay picture (uint8 [H, W, 3])."""
    import highdicom as hd

    rgb = np.ascontiguousarray(np.asarray(overlay_rgb, dtype=np.uint8)[..., :3])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_patient_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = _describe("MultiMix overlay")
    sc.ImageComments = (
        f"MultiMix (mmtrt {info.mmtrt_version}, model {info.model}, checkpoint sha256 "
        f"{info.checkpoint_sha256 or 'unknown'}): lung-mask contour, saliency heat map and "
        f"predicted class on the model's 256 x 256 input. {NOT_FOR_CLINICAL_USE}."
    )
    sc.DerivationDescription = f"Rendered by mmtrt infer. {NOT_FOR_CLINICAL_USE}."
    sc.ImageType = ["DERIVED", "SECONDARY"]
    # The picture carries text (the source's file name, the class): an archive must treat it as
    # possibly identifying, e.g. before de-identified export.
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [_reference(source)]
    return sc


def _reference(source):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


class DicomResultError(ValueError):
    """The DICOM results of one source cannot be made (the message says why)."""


def write_results(
    source_path: Path,
    *,
    out: Path,
    stem: str,
    info: ResultInfo,
    mask_probs: np.ndarray | None = None,
    overlay_png: Path | None = None,
) -> list[Path]:
    """Make and write ``out/<stem>.seg.dcm`` (when ``mask_probs``, [H, W] probabilities) and
    ``out/<stem>.sc.dcm`` (when ``overlay_png``) for the DICOM file ``source_path``. Both are
    made in memory first, then written all-or-nothing. DicomResultError if they cannot be made
    (OSError if they cannot be written)."""
    from PIL import Image

    from mmtrt.data.dicom import read_dataset

    source = read_dataset(Path(source_path))
    items = []
    try:
        if mask_probs is not None:
            mask = native_mask(mask_probs, int(source.Rows), int(source.Columns))
            items.append((Path(out) / f"{stem}.seg.dcm", make_segmentation(source, mask, info)))
        if overlay_png is not None:
            with Image.open(overlay_png) as im:
                rgb = np.asarray(im.convert("RGB"))
            items.append((Path(out) / f"{stem}.sc.dcm", make_overlay_capture(source, rgb, info)))
    except OSError:
        raise
    except Exception as e:  # highdicom refusing the source (missing or invalid attributes)
        raise DicomResultError(f"cannot make the DICOM results ({type(e).__name__}: {e})") from e
    return write_datasets(items)


def write_datasets(items: Sequence[tuple[Path, object]]) -> list[Path]:
    """Write each (path, dataset) atomically (temp file + rename); if one fails, the ones
    already written by this call are removed and the error re-raised: all or nothing."""
    from mmtrt.files import atomic_write

    done: list[Path] = []
    try:
        for path, ds in items:
            atomic_write(Path(path), lambda fh, ds=ds: ds.save_as(fh, enforce_file_format=True))
            done.append(Path(path))
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
    return done
