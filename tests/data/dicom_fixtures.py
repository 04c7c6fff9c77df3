"""DICOM test files written with pydicom from synthetic chest X-rays (mmtrt.data.synth_xray), and
the test files pydicom's wheel ships (only those on disk: get_testdata_file would try to
download the others)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from mmtrt.data import synth_xray

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not among pydicom's shipped test files"
    return path


def xray_pixels(seed: int = 0, shape: tuple[int, int] = (300, 240)) -> np.ndarray:
    """A synthetic X-ray (uint8) resized to rows x columns."""
    img = synth_xray(seed, label=seed % 2)[0]
    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR))


def xray_dataset(
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    bits_allocated: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    syntax=ExplicitVRLittleEndian,
    **attributes,
) -> Dataset:
    """A DX (For Presentation) data set holding ``stored`` (2-D int array) as its pixel data,
    with patient/study/series attributes; ``attributes`` set or override elements."""
    rows, cols = stored.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20261201"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC-1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "synthetic"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.175, 0.175]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    arr = np.asarray(stored).astype(dtype[(bits_allocated, signed)])
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = (arr.astype(arr.dtype.newbyteorder(">")) if big else arr).tobytes()
    return ds


def save(ds: Dataset, path: Path, *, preamble: bool = True) -> Path:
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no preamble, no meta header: only the data set, in the syntax it claims
        syntax = ds.file_meta.TransferSyntaxUID
        little = syntax != ExplicitVRBigEndian
        implicit = syntax == ImplicitVRLittleEndian
        del ds.file_meta
        ds.save_as(path, enforce_file_format=False, little_endian=little, implicit_vr=implicit)
    return path


def jpeg_baseline(ds: Dataset, pixels_u8: np.ndarray, quality: int = 95) -> Dataset:
    """``ds`` with its pixel data replaced by a JPEG baseline stream of ``pixels_u8`` (pydicom
    has no JPEG encoder: Pillow encodes, pydicom encapsulates)."""
    from pydicom.encaps import encapsulate

    buf = io.BytesIO()
    Image.fromarray(pixels_u8).save(buf, format="JPEG", quality=quality)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return ds
