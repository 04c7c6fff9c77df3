"""DICOM results of one DICOM source image, for PACS and viewers (highdicom).

For a source radiograph ``ds`` and MultiMix's outputs on it:

- a **Segmentation** (SEG, BINARY, one segment "Lung": SNOMED CT category Organ, type Lung,
  algorithm AUTOMATIC identified as MultiMix with the mmtrt version and, as algorithm
  parameters, the model name, the checkpoint's sha256 when known and the server's model version)
  at the source's Rows x Columns: the 256 x 256 mask probabilities are resampled bilinearly to
  the native grid, then thresholded at 0.5 (:func:`native_mask`);
- a **Secondary Capture** of the overlay picture (RGB), same references;
- a **Structured Report** (Comprehensive SR, TID 1500 Measurement Report): the finding
  pneumonia present / absent, its probability, the lung area of the mask (mm2 when the source's
  pixel spacing is valid, else pixels), the algorithm, and references to the source and the SEG.

An image the input gate refuses gets none of these but a **not-evaluated report**
(:func:`make_not_evaluated_report`): a small Comprehensive SR that references it and says why it
was not evaluated, so that a reader of the study sees that it was looked at, not forgotten.

All three reference the source image, copy its patient and study attributes (highdicom does)
from :func:`copyable_source` (the source without the values that are invalid: those are left
out, and the Type 2 ones are written empty), are a new series each, and are described as not for
clinical use: the model is research software. Their UIDs are derived from the source's SOP
Instance UID and the model (:func:`result_uid`), so results made again for the same image by the
same model replace the earlier ones in an archive rather than adding to them. The writes are
atomic; a source whose results cannot all be made writes none. docs/dicom.md lists the modules,
codes and UIDs, and what the standard's validator (dciodvfy) still says about them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "ResultInfo",
    "native_mask",
    "copyable_source",
    "result_uid",
    "lung_area",
    "make_segmentation",
    "make_overlay_capture",
    "make_report",
    "make_not_evaluated_report",
    "write_not_evaluated",
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
SR_SERIES_NUMBER = 9703
NOT_EVALUATED_SERIES_NUMBER = 9704  # the report of an image the input gate refused


def _codes():
    """The coded concepts of the report that pydicom's dictionary lacks (SNOMED CT, UCUM)."""
    from pydicom.sr.coding import Code

    return {
        "pneumonia": Code("233604007", "SCT", "Pneumonia"),
        "chest x-ray": Code("399208008", "SCT", "Plain chest X-ray"),
        "pixels": Code("{pixels}", "UCUM", "pixels"),
    }


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

    @property
    def model_identity(self) -> str:
        """What identifies the model's weights: the checkpoint's sha256, else the served name and
        version."""
        if self.checkpoint_sha256:
            return f"checkpoint sha256 {self.checkpoint_sha256}"
        return f"model {self.model} version {self.model_version or 'unknown'}"

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


def result_uid(source, info: ResultInfo, what: str) -> str:
    """The UID of result ``what`` (e.g. "seg series", "seg instance") of ``source`` by the model of
    ``info``: a hash of the source's SOP Instance UID and the model's identity, the same every
    time, so that a result sent again replaces the earlier one in an archive."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), info.model_identity, what])


def native_mask(mask_probs: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The model's mask probabilities ([H, W], e.g. 256 x 256) at the source's rows x columns:
    bilinear resampling (Pillow, float), then > 0.5. Returns bool [rows, columns]."""
    from PIL import Image

    probs = np.asarray(mask_probs, dtype=np.float32)
    if probs.shape != (rows, columns):
        probs = np.asarray(Image.fromarray(probs).resize((columns, rows), Image.BILINEAR))
    return probs > MASK_THRESHOLD


# ------------------------------------------------------------------------------------------------
# What of the source may be copied
# ------------------------------------------------------------------------------------------------

# Text VRs whose values are checked against the standard's format (pydicom's validators). UIDs are
# not among them: the results must reference the source by the UIDs it has.
_CHECKED_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
_ORIENTATION = re.compile(r"^[APRLHF]{1,3}$")  # biped directions, e.g. "L", "FR"
# Enumerated values and value checks pydicom's validators do not know.
_VALUE_CHECKS = {  # each gets the element's values as a list
    "PatientSex": lambda v: v[0] in ("M", "F", "O"),
    "Laterality": lambda v: v[0] in ("R", "L"),
    "PatientOrientation": lambda v: len(v) == 2 and all(_ORIENTATION.match(str(x)) for x in v),
    "PixelSpacing": lambda v: len(v) == 2 and all(float(x) > 0 for x in v),
    "ImagerPixelSpacing": lambda v: len(v) == 2 and all(float(x) > 0 for x in v),
    "PatientWeight": lambda v: float(v[0]) > 0,  # kg; 0 is what some modalities write for unknown
    "PatientSize": lambda v: float(v[0]) > 0,  # m
}
# Type 2 attributes of the Patient and General Study modules: present in every result, empty
# when the source has no valid value.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _vm_ok(tag, count: int) -> bool:
    from pydicom.datadict import dictionary_VM

    try:
        vm = dictionary_VM(tag)
    except KeyError:  # private or unknown: not judged
        return True
    low, _, high = vm.partition("-")
    if not high:
        return count == int(low)
    if high.endswith("n"):  # "1-n", "2-2n"
        step = int(high[:-1] or 1)
        return count >= int(low) and count % step == 0
    return int(low) <= count <= int(high)


def _pn_ok(value) -> bool:
    """At most 3 groups (alphabetic, ideographic, phonetic) of at most 5 components."""
    text = str(value)
    return text.count("=") <= 2 and all(group.count("^") <= 4 for group in text.split("="))


def _value_ok(elem) -> bool:
    from pydicom import config
    from pydicom.multival import MultiValue
    from pydicom.valuerep import validate_value

    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    if not _vm_ok(elem.tag, len(values)):
        return False
    try:
        for v in values:  # as text: pydicom checks a PN's components, or a DS, only so
            validate_value(elem.VR, str(v), config.RAISE)
        if elem.VR == "PN" and not all(_pn_ok(v) for v in values):
            return False
        check = _VALUE_CHECKS.get(elem.keyword)
        return check is None or bool(check(values))
    except (ValueError, TypeError):
        return False


def copyable_source(source):
    """``source`` as the results may copy it: its top-level values that break the standard are
    left out (a value's format or number of values for its VR; the values the standard enumerates:
    Patient Sex, Laterality, Patient Orientation; a Pixel Spacing that is not two positive numbers;
    a Patient's Weight or Size of zero; a value that cannot be parsed at all), and the Type 2
    patient and study attributes are present (empty when left out or missing). Sequences, UIDs
    and the pixel data are kept as they are. ``source`` itself is not changed."""
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.file_meta = getattr(source, "file_meta", Dataset())
    for tag in source.keys():
        try:
            elem = source[tag]  # a value that cannot even be parsed (a DS "abc") raises here
        except Exception:
            continue
        empty = elem.value in (None, "", b"") or (isinstance(elem.value, list) and not elem.value)
        if elem.VR in _CHECKED_VRS and not empty and not _value_ok(elem):
            continue
        ref.add(elem)
    for key in _TYPE2:
        if key not in ref:
            setattr(ref, key, None)
    return ref


def lung_area(mask: np.ndarray, source) -> tuple[float, str | None]:
    """(area, spacing attribute): the lung area of ``mask`` (bool, at the source's grid) in mm2
    when the source has a valid Pixel Spacing (else Imager Pixel Spacing: at the detector), with
    the attribute's keyword; in pixels, with None, when it has neither."""
    from mmtrt.data.dicom import pixel_spacing

    pixels = int(np.count_nonzero(mask))
    spacing, key = pixel_spacing(source)
    if spacing is None:
        return float(pixels), None
    return pixels * spacing[0] * spacing[1], key


# ------------------------------------------------------------------------------------------------
# The results
# ------------------------------------------------------------------------------------------------


def _describe(text: str) -> str:
    return f"{text} - {NOT_FOR_CLINICAL_USE}"[:64]  # LO: 64 characters


def _orientation(source) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is valid (:func:`copyable_source` keeps only
    those), else None: unknown, and left empty rather than guessed."""
    value = source.get("PatientOrientation")
    return (str(value[0]), str(value[1])) if value else None


def make_segmentation(source, mask: np.ndarray, info: ResultInfo):
    """A BINARY highdicom Segmentation of ``mask`` (bool [Rows, Columns] of ``source``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = copyable_source(source)
    # An image outside a patient coordinate system (a projection radiograph) gets a SEG on its own
    # grid, to which its spacing applies; highdicom would write that spacing as Pixel Measures
    # without Slice Thickness, which its own reader (0.28) refuses.
    if "PixelSpacing" in source and hd.spatial.get_image_coordinate_system(source) is None:
        del source.PixelSpacing
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
        series_instance_uid=result_uid(source, info, "seg series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, info, "seg instance"),
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
    # General Image: Type 2C for an image without Image Orientation (Patient), as a projection
    # radiograph's SEG is; highdicom leaves it out.
    seg.PatientOrientation = list(_orientation(source) or [])
    return seg


def make_overlay_capture(source, overlay_rgb: np.ndarray, info: ResultInfo):
    """A highdicom Secondary Capture of the overlay picture (uint8 [H, W, 3])."""
    import highdicom as hd

    source = copyable_source(source)
    orientation = _orientation(source)
    laterality = source.get("Laterality") or None
    body_part = str(source.get("BodyPartExamined") or "").strip() or None
    rgb = np.ascontiguousarray(np.asarray(overlay_rgb, dtype=np.uint8)[..., :3])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(source, info, "sc series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, info, "sc instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        laterality=laterality,
        # highdicom wants one for the patient coordinate system; an unknown one is emptied below
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if orientation is None:
        sc.PatientOrientation = []  # Type 2C: present, empty when unknown
    # General Series: Laterality (Type 2C) is for paired body parts. The chest is not one: absent
    # there (whatever the source says); else the source's, or empty (unknown) without one.
    if body_part is not None:
        sc.BodyPartExamined = body_part
    if body_part == "CHEST":
        del sc.Laterality
    elif laterality is None:
        sc.Laterality = None
    sc.SeriesDescription = _describe("MultiMix overlay")
    sc.ImageComments = (
        f"MultiMix (mmtrt {info.mmtrt_version}, model {info.model}, checkpoint sha256 "
        f"{info.checkpoint_sha256 or 'unknown'}): lung-mask contour, saliency heat map and "
        f"predicted class on the model's 256 x 256 input. {NOT_FOR_CLINICAL_USE}."
    )
    sc.DerivationDescription = f"Rendered by mmtrt infer. {NOT_FOR_CLINICAL_USE}."
    sc.ImageType = ["DERIVED", "SECONDARY"]
    if source.get("LossyImageCompression") == "01":  # once lossy, every image derived from it is
        sc.LossyImageCompression = "01"
    # The picture carries text (the source's file name, the class): an archive must treat it as
    # possibly identifying, e.g. before de-identified export.
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [_reference(source)]
    return sc


def make_report(
    source, info: ResultInfo, *, pneumonia_probability: float, pneumonia: bool, segmentation=None
):
    """A highdicom Comprehensive SR holding a TID 1500 Measurement Report of ``source``:

    - an image-level group (TID 1501), finding type Pneumonia (SCT 233604007), with the qualitative
      evaluation Pneumonia = Present / Absent (SCT 52101004 / 272519000) from ``pneumonia`` and
      the measurement Probability (DCM 122157, no units) ``pneumonia_probability``;
    - with ``segmentation`` (from :func:`make_segmentation`), a planar ROI group (TID 1410) that
      references its segment 1 and measures the lung's Area (SCT 42798000) in mm2 (UCUM mm2) when
      the source's pixel spacing is valid, else in pixels (UCUM {pixels}), the group then saying
      so in its tracking identifier.

    The observer is the device mmtrt; every group names the algorithm "mmtrt" (version: mmtrt's)
    with the model, its version and the checkpoint's sha256 as parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    code = _codes()
    source = copyable_source(source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=MANUFACTURER,
        version=info.mmtrt_version,
        parameters=[f"{k}={v}" for k, v in info.parameters().items()],
    )
    device = _observer_device(source, info)
    classification = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(source, info, "pneumonia finding"), identifier="Pneumonia classification"
        ),
        finding_type=code["pneumonia"],
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=code["pneumonia"], value=codes.cid241.Present if pneumonia else codes.cid241.Absent
            )
        ],
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability,
                value=float(pneumonia_probability),
                unit=codes.UCUM.NoUnits,
            )
        ],
    )
    groups = [classification]
    if segmentation is not None:
        groups.append(_lung_group(source, info, segmentation, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=code["chest x-ray"],
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source] + ([segmentation] if segmentation is not None else []),
        content=report,
        series_instance_uid=result_uid(source, info, "sr series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, info, "sr instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,  # nothing more will be added; not verified by a person
    )
    sr.SeriesDescription = _describe("MultiMix classification")
    return sr


def _observer_device(source, info: ResultInfo):
    """mmtrt as the observer device of a report on ``source`` (one UID per source and model)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(source, info, "observer device"),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )


def make_not_evaluated_report(source, info: ResultInfo, reason: str):
    """A Comprehensive SR saying that ``source`` was **not evaluated** and why (``reason``: the
    input gate's, e.g. a lateral View Position or an image out of the model's distribution): no
    finding, no probability, no SEG to reference. Its content is a Diagnostic Imaging Report
    (LOINC 18748-4, no template claimed): the observer device mmtrt, a Comment (DCM 121106)
    "Not evaluated by MultiMix: <reason>", and the source image. Its UIDs are its own
    (:func:`result_uid` "not evaluated ..."), as deterministic as the other results', and its
    series number :data:`NOT_EVALUATED_SERIES_NUMBER`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    source = copyable_source(source)
    device = _observer_device(source, info)
    root = hd.sr.ContainerContentItem(name=Code("18748-4", "LN", "Diagnostic imaging report"))
    comment = (
        f"Not evaluated by {MODEL_NAME} (mmtrt {info.mmtrt_version}, {info.model_identity}): "
        f"{reason.strip()}. No finding, probability or segmentation was made for this image. "
        f"{NOT_FOR_CLINICAL_USE}."
    )
    root.ContentSequence = [
        *device,
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=comment, relationship_type="CONTAINS"),
        hd.sr.SourceImageForMeasurementGroup.from_source_image(source),
    ]
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=result_uid(source, info, "not evaluated sr series"),
        series_number=NOT_EVALUATED_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, info, "not evaluated sr instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = _describe("MultiMix: not evaluated")
    return sr


def write_not_evaluated(
    source_path: Path, *, out: Path, stem: str, info: ResultInfo, reason: str
) -> list[Path]:
    """Write ``out/<stem>.not-evaluated.sr.dcm`` (:func:`make_not_evaluated_report`) for the DICOM
    file ``source_path``. DicomResultError if it cannot be made (OSError if it cannot be written)."""
    from mmtrt.data.dicom import read_dataset

    source = read_dataset(Path(source_path))
    try:
        report = make_not_evaluated_report(source, info, reason)
    except Exception as e:  # highdicom refusing the source (missing or invalid attributes)
        raise DicomResultError(f"cannot make the not-evaluated report ({type(e).__name__}: {e})") from e
    return write_datasets([(Path(out) / f"{stem}.not-evaluated.sr.dcm", report)])


def _lung_group(source, info: ResultInfo, segmentation, algorithm):
    """TID 1410: segment 1 of ``segmentation`` and its area (mm2, else pixels)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = segmentation.pixel_array.astype(bool).reshape(int(source.Rows), int(source.Columns))
    area, spacing = lung_area(mask, source)
    unit = codes.UCUM.SquareMillimeter if spacing is not None else _codes()["pixels"]
    how = f"mm2 from {spacing}" if spacing is not None else "pixels: no valid pixel spacing"
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(source, info, "lung region"), identifier=f"Lung area ({how})"[:64]
        ),
        # (not from_segmentation: it looks for the segment per frame, a one-frame SEG shares it)
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            frame_number=1,
            segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID),
        ),
        finding_type=codes.SCT.Lung,
        algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=codes.SCT.Area, value=area, unit=unit)],
    )
    # The SEG has one frame holding one segment: the reference names the segment and no frame
    # (the image reference macro allows one of the two; TID 1410 omits the frame number when all
    # frames and a single segment are meant). highdicom writes both.
    for item in _content_items(group, codes.DCM.ReferencedSegmentationFrame):
        del item.ReferencedSOPSequence[0].ReferencedFrameNumber
    return group


def _content_items(items, name) -> list:
    """The SR content items in ``items`` and below them whose concept name is ``name``."""
    found = []
    for item in items:
        concept = item.get("ConceptNameCodeSequence")
        if concept and (concept[0].CodeValue, concept[0].CodingSchemeDesignator) == (
            name.value,
            name.scheme_designator,
        ):
            found.append(item)
        found += _content_items(item.get("ContentSequence", []), name)
    return found


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
    overlay: np.ndarray | None = None,
    probabilities: Sequence[float] | None = None,
    label: int | None = None,
) -> list[Path]:
    """Make and write ``out/<stem>.seg.dcm`` (when ``mask_probs``, [H, W] probabilities),
    ``out/<stem>.sc.dcm`` (when ``overlay``, the overlay picture: uint8 [H, W, 3]) and
    ``out/<stem>.sr.dcm`` (when ``probabilities``: [p(NORMAL), p(PNEUMONIA)]; the finding is
    ``label``, the class the model answered at its export's operating point, or their argmax
    without one) for the DICOM file ``source_path``. All are made in memory first, then written
    all-or-nothing.
    DicomResultError if they cannot be made (OSError if they cannot be written)."""
    from mmtrt.data.dicom import read_dataset

    source = read_dataset(Path(source_path))
    items = []
    try:
        seg = None
        if mask_probs is not None:
            mask = native_mask(mask_probs, int(source.Rows), int(source.Columns))
            seg = make_segmentation(source, mask, info)
            items.append((Path(out) / f"{stem}.seg.dcm", seg))
        if overlay is not None:
            items.append((Path(out) / f"{stem}.sc.dcm", make_overlay_capture(source, overlay, info)))
        if probabilities is not None:
            p = [float(x) for x in probabilities]
            pneumonia = p[1] > p[0] if label is None else int(label) == 1
            report = make_report(
                source, info, pneumonia_probability=p[1], pneumonia=pneumonia, segmentation=seg
            )
            items.append((Path(out) / f"{stem}.sr.dcm", report))
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
