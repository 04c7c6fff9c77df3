"""Which received instances the node accepts, and the C-STORE status each refusal gets.

Accepted: a single-frame grayscale image whose pixel data mmtrt can decode (CR and DX are the
chest radiographs; the metadata gate of :mod:`mmtrt.data.gate` judges the rest later, after
storage, because a refused chest image still gets a report). Each refusal answers only its own
C-STORE; other instances on the association are unaffected.

mmtrt's own results (a SEG, SC or SR whose Manufacturer is mmtrt), which a PACS sends back when
it forwards a whole study again, are answered with success and not spooled: there is nothing to
evaluate in them, and refusing them would fail the PACS's forwarding of the study.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

#: C-STORE statuses the node answers (PS3.4 Annex B.2.3: 0xA7xx out of resources, 0xA9xx data
#: set does not match SOP class, 0xCxxx cannot understand, the low byte free to the SCP)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the spool could not be written (disk full, permissions)
NOT_AN_IMAGE = 0xA901  # no pixel data: an SR, RT plan, presentation state... (non-image SOP class)
COLOUR = 0xC001  # Samples per Pixel != 1 or a colour Photometric Interpretation
MULTI_FRAME = 0xC002  # Number of Frames > 1
UNDECODABLE = 0xC003  # pixel data that mmtrt cannot decode (syntax, truncation, bad description)

STATUS_NAMES = {
    SUCCESS: "stored in the spool",
    OUT_OF_RESOURCES: "out of resources: the spool could not be written",
    NOT_AN_IMAGE: "not an image (no pixel data)",
    COLOUR: "colour image",
    MULTI_FRAME: "multi-frame image",
    UNDECODABLE: "pixel data cannot be decoded",
}


#: the SOP classes of mmtrt's results (mmtrt.dicom_results): SEG, Secondary Capture, Comprehensive SR
_RESULT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.88.33",
}


@dataclass(frozen=True)
class Admission:
    status: int
    reason: str = ""
    spool: bool = True  # False: answered with success but not kept (mmtrt's own result)

    @property
    def accepted(self) -> bool:
        return self.status == SUCCESS


def admit(data: bytes, name: str = "received instance") -> Admission:
    """The admission of one instance, given as the bytes of a DICOM file (meta + data set)."""
    import pydicom

    from mmtrt.data.decoded import DataError, EncodedFile
    from mmtrt.data.dicom import read_dicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:
        return Admission(UNDECODABLE, f"cannot read the data set ({type(e).__name__}: {e})")
    if (
        str(ds.get("Manufacturer", "")).strip() == "mmtrt"
        and str(ds.get("SOPClassUID", "")) in _RESULT_CLASSES
    ):
        return Admission(SUCCESS, f"mmtrt's own result ({_sop_name(ds)}): nothing to evaluate", spool=False)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return Admission(NOT_AN_IMAGE, f"no pixel data: SOP class {_sop_name(ds)} is not an image")
    frames = str(ds.get("NumberOfFrames", "1") or "1").strip()
    if not frames.isdigit() or int(frames) > 1:
        return Admission(MULTI_FRAME, f"Number of Frames {frames}: one radiograph per instance")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return Admission(COLOUR, f"colour image ({photometric or '?'}, {samples} samples per pixel)")
    try:
        with warnings.catch_warnings():  # notes such as a non-radiograph Modality: the gate's job
            warnings.simplefilter("ignore")
            read_dicom(EncodedFile(data, name), ds)
    except DataError as e:
        return Admission(UNDECODABLE, str(e))
    return Admission(SUCCESS)


def _sop_name(ds) -> str:
    sop = ds.get("SOPClassUID")
    return f"{getattr(sop, 'name', sop)}" if sop else "(none)"
