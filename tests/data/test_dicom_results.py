"""DICOM results (mmtrt.dicom_results): the lung mask as a DICOM Segmentation and the overlay as a
Secondary Capture, read back with pydicom and highdicom; and `mmtrt infer --dicom-out` through
the real Triton server."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from dicom_fixtures import save, xray_dataset, xray_pixels
from helpers import needs_server, ort_session
from PIL import Image
from pydicom.sr.codedict import codes

from mmtrt.cli import main
from mmtrt.data import load_image
from mmtrt.data.dicom import read_dataset
from mmtrt.dicom_results import (
    DicomResultError,
    ResultInfo,
    make_overlay_capture,
    make_segmentation,
    native_mask,
    write_datasets,
    write_results,
)

SHA = "0123456789abcdef" * 4


def _twelve(seed: int, shape) -> np.ndarray:
    return np.round(xray_pixels(seed, shape) / 255 * 4095).astype(np.uint16)


def _blob(size=256) -> np.ndarray:
    """Smooth 'mask probabilities': two ellipses, values in (0, 1)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    d = np.minimum(
        ((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2, ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2
    )
    return (1 / (1 + np.exp(4 * (d - 1)))).astype(np.float32)


@pytest.fixture
def source(tmp_path):
    return read_dataset(save(xray_dataset(_twelve(1, (300, 240))), tmp_path / "src.dcm"))


def test_native_mask():
    probs = _blob()
    assert np.array_equal(native_mask(probs, 256, 256), probs > 0.5)  # same grid: only the threshold
    big = native_mask(probs, 600, 480)
    assert big.shape == (600, 480) and big.dtype == bool
    print(f"\nmask fraction at 256 x 256 {np.mean(probs > 0.5):.4f}, at 600 x 480 {big.mean():.4f}")
    assert abs(big.mean() - np.mean(probs > 0.5)) < 0.005
    # back on the 256 grid (nearest), the resampled mask is the original but at the border
    back = np.asarray(Image.fromarray(big.astype(np.uint8)).resize((256, 256), Image.NEAREST)) > 0
    assert np.mean(back != (probs > 0.5)) < 0.01


def test_segmentation_round_trip(source, tmp_path):
    mask = native_mask(_blob(), source.Rows, source.Columns)
    seg = make_segmentation(source, mask, ResultInfo(model="multimix", checkpoint_sha256=SHA))
    path = write_datasets([(tmp_path / "x.seg.dcm", seg)])[0]
    back = hd.seg.segread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert back.SegmentationType == "BINARY"
    assert (back.Rows, back.Columns) == (300, 240)
    np.testing.assert_array_equal(back.pixel_array.astype(bool), mask)
    assert back.pixel_array.sum() == mask.sum() > 1000
    # references: the source image, its series and study; patient/study attributes copied
    ref_series = back.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == source.SeriesInstanceUID
    ref = ref_series.ReferencedInstanceSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    for key in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "AccessionNumber",
        "StudyID",
    ):
        assert back[key].value == source[key].value, key
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert "NOT FOR CLINICAL USE" in back.SeriesDescription
    # the segment: "Lung", SNOMED CT Organ / Lung, automatic, by MultiMix
    segment = back.SegmentSequence[0]
    assert segment.SegmentLabel == "Lung" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.Organ.value
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Lung.value
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "MultiMix" and algorithm.AlgorithmVersion.startswith("mmtrt ")
    assert f"checkpoint_sha256={SHA}" in algorithm.AlgorithmParameters
    assert back.get_segment_description(1).segment_label == "Lung"
    assert back.ManufacturerModelName == "MultiMix" and back.SoftwareVersions.startswith("mmtrt")


def test_secondary_capture_round_trip(source, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    sc = make_overlay_capture(source, rgb, ResultInfo(model="multimix"))
    path = write_datasets([(tmp_path / "x.sc.dcm", sc)])[0]
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert back.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(back.pixel_array, rgb)
    src = back.SourceImageSequence[0]
    assert (src.ReferencedSOPClassUID, src.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert back[key].value == source[key].value, key
    assert (
        "NOT FOR CLINICAL USE" in back.SeriesDescription and "checkpoint sha256 unknown" in back.ImageComments
    )
    assert list(back.PatientOrientation) == ["L", "F"]
    assert back.BurnedInAnnotation == "YES"  # the overlay carries the source's file name as text


def test_writes_are_all_or_nothing(source, tmp_path):
    mask = native_mask(_blob(), source.Rows, source.Columns)
    seg = make_segmentation(source, mask, ResultInfo())
    folder = tmp_path / "results"
    folder.mkdir()
    blocker = folder / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_datasets([(folder / "a.seg.dcm", seg), (blocker / "b.sc.dcm", seg)])
    assert sorted(p.name for p in folder.iterdir()) == ["not-a-folder"]  # nor any temporary
    # a source highdicom cannot reference (no SOP Class UID): an error, nothing written
    bad = xray_dataset(_twelve(2, (64, 64)))
    del bad.SOPClassUID
    path = save(bad, tmp_path / "nosop.dcm")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DicomResultError, match="cannot make the DICOM results"):
        write_results(path, out=out, stem="nosop", info=ResultInfo(), mask_probs=_blob())
    assert list(out.iterdir()) == []
    with pytest.raises(ValueError, match="not at the source's 300 x 240"):
        make_segmentation(source, np.zeros((256, 256), bool), ResultInfo())


# --------------------------------------------------------------------------- through the server


@pytest.fixture(scope="module")
def dicom_inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dicom-in")
    save(xray_dataset(_twelve(21, (420, 300))), d / "dx12.dcm")  # 12 bits in 16, 420 x 300
    inv = xray_dataset(4095 - _twelve(22, (256, 320)), photometric="MONOCHROME1", modality="CR")
    save(inv, d / "cr_mono1.dcm")
    Image.fromarray(xray_pixels(23, (300, 300))).save(d / "plain.png")
    save(xray_dataset(_twelve(25, (256, 256)), modality="CT"), d / "ct.dcm")  # refused; relaxed: warned
    bad = xray_dataset(_twelve(24, (200, 200)))
    del bad.SOPClassUID  # decodes, but no DICOM result can reference it
    save(bad, d / "nosop.dcm")
    save(pydicom.dcmread(pydicom.data.get_testdata_file("reportsi.dcm")), d / "report.dcm")
    return d


@needs_server
def test_infer_dicom_out_through_the_server(server, export_dir, dicom_inputs, tmp_path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["checkpoint"] = {"file": "model.pt", "sha256": SHA}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    out, dicom_out = tmp_path / "out", tmp_path / "dicom"
    args = ["infer", "--url", server.http_url, "--out", out, "--dicom-out", dicom_out]
    args += ["--export-manifest", tmp_path / "manifest.json", dicom_inputs]
    r = CliRunner().invoke(main, list(map(str, args)))
    assert r.exit_code == 1, r.output
    assert f"{dicom_inputs / 'report.dcm'}: no Pixel Data: Basic Text SR Storage" in r.stderr
    assert (
        f"{dicom_inputs / 'nosop.dcm'}: cannot write the results to {out}: cannot make the DICOM results"
        in r.stderr
    )
    # the CT is refused by the input gate: printed with the reason, its JSON says so, nothing else
    reason = "Modality (0008,0060) is 'CT', not a radiograph (CR or DX) [rule modality]"
    assert f"refused: {dicom_inputs / 'ct.dcm'}: {reason}" in r.stderr
    assert "6 image(s): 3 ok" in r.stdout and "1 refused, 2 failed" in r.stdout
    refused = json.loads((out / "ct.json").read_text())
    assert (refused["outcome"], refused["refusal_reason"], refused["label"]) == ("refused", reason, None)
    # a failed source keeps nothing; the PNG gets no DICOM results
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ct.json", *(f"{s}.{e}" for s in ("dx12", "cr_mono1", "plain") for e in ("json", "png"))]
    )
    assert sorted(p.name for p in dicom_out.iterdir()) == sorted(
        f"{s}.{e}.dcm" for s in ("dx12", "cr_mono1") for e in ("seg", "sc")
    )
    # the modality rule relaxed (sent as a tensor: the server's gate judges files only): accepted, warned
    args = ["infer", "--url", server.http_url, "--out", out, "--dicom-out", dicom_out, "--allow", "modality"]
    r = CliRunner().invoke(main, list(map(str, [*args, "--send", "tensor", dicom_inputs / "ct.dcm"])))
    assert r.exit_code == 0, r.output
    assert f"warning: {dicom_inputs / 'ct.dcm'}: Modality CT is not a radiograph (CR/DX)" in r.stderr
    assert r.stderr.count("Modality CT") == 1 and "1 image(s): 1 ok" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"ct.json", "ct.png"}
    assert {p.name for p in dicom_out.iterdir()} >= {"ct.seg.dcm", "ct.sc.dcm"}
    accepted = json.loads((out / "ct.json").read_text())
    assert accepted["outcome"] == "answered" and accepted["image"]["warnings"][0].startswith("Modality CT")
    session = ort_session(export_dir / "multimix.onnx")
    for stem in ("dx12", "cr_mono1"):
        src = pydicom.dcmread(dicom_inputs / f"{stem}.dcm")
        record = json.loads((out / f"{stem}.json").read_text())
        image = record["image"]
        assert (image["rows"], image["columns"]) == (src.Rows, src.Columns)
        assert (
            image["pixel_spacing_mm"] == [0.175, 0.175]
            and image["pixel_spacing_source"] == "ImagerPixelSpacing"
        )
        assert image["view_position"] == "PA" and image["format"] == "DICOM"
        assert (image["study_instance_uid"], image["series_instance_uid"], image["sop_instance_uid"]) == (
            src.StudyInstanceUID,
            src.SeriesInstanceUID,
            src.SOPInstanceUID,
        )
        assert record["dicom_results"] == [f"{stem}.seg.dcm", f"{stem}.sc.dcm"]
        # the SEG: the served mask, resampled to the source's grid
        probs, mask = session.run(
            ["probs", "mask"], {"image": load_image(dicom_inputs / f"{stem}.dcm")[None, None]}
        )
        np.testing.assert_allclose(list(record["probabilities"].values()), probs[0], rtol=1e-5, atol=1e-6)
        seg = hd.seg.segread(dicom_out / f"{stem}.seg.dcm")
        expected = native_mask(mask[0, 0], src.Rows, src.Columns)
        differ = int((seg.pixel_array.astype(bool) != expected).sum())
        print(
            f"\n{stem}: SEG {seg.Rows} x {seg.Columns}, {int(seg.pixel_array.sum())} lung pixels, {differ} differ from onnxruntime's mask"
        )
        assert differ <= 0.0005 * expected.size  # onnxruntime in-process vs served: ~1e-6 apart
        assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert f"checkpoint_sha256={SHA}" in algorithm.AlgorithmParameters
        assert "model=multimix" in algorithm.AlgorithmParameters
        assert "model_version=1" in algorithm.AlgorithmParameters  # the server's version
        # the SC: the overlay PNG's pixels
        sc = pydicom.dcmread(dicom_out / f"{stem}.sc.dcm")
        np.testing.assert_array_equal(
            sc.pixel_array, np.asarray(Image.open(out / f"{stem}.png").convert("RGB"))
        )
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.PatientID == src.PatientID
    assert json.loads((out / "plain.json").read_text())["dicom_results"] is None


def test_infer_help_shows_the_dicom_path():
    r = CliRunner().invoke(main, ["infer", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--dicom-out" in text and "DICOM Segmentation" in text and "Secondary Capture" in text
    assert "PNG/JPEG/TIFF/DICOM" in text and "--export-manifest" in text
