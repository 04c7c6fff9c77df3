"""DICOM results (mmtrt.dicom_results): the lung mask as a DICOM Segmentation, the overlay as a
Secondary Capture and the classification as a Structured Report, read back with pydicom and
highdicom and checked by the standard's validator (dciodvfy) for every kind of source the decoder
accepts; their UIDs, the same for the same source and model; and `mmtrt infer --dicom-out`
through the real Triton server."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from dicom_fixtures import jpeg_baseline, save, xray_dataset, xray_pixels
from helpers import Orthanc, dicom_conformance, needs_server, ort_session
from PIL import Image
from pydicom.sr.codedict import codes
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from mmtrt.cli import main
from mmtrt.data import load_image
from mmtrt.data.dicom import read_dataset
from mmtrt.dicom_results import (
    DicomResultError,
    ResultInfo,
    copyable_source,
    make_not_evaluated_report,
    make_overlay_capture,
    make_report,
    make_segmentation,
    native_mask,
    write_datasets,
    write_not_evaluated,
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


# --------------------------------------------------------------------------- the report, conformance, UIDs

PATIENT_AND_STUDY = (
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


def _kinds_of_source() -> dict:
    """Every kind of source the decoder accepts, and sources with invalid, missing or oddly formed
    values (small: 64 x 48)."""
    px = _twelve(3, (64, 48))
    cr = xray_dataset(4095 - px, photometric="MONOCHROME1", modality="CR")
    cr.SOPClassUID = cr.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    no_spacing = xray_dataset(px)
    del no_spacing.ImagerPixelSpacing
    missing = xray_dataset(px)
    for key in (*PATIENT_AND_STUDY, "PatientOrientation", "ViewPosition", "Manufacturer"):
        del missing[key]
    with warnings.catch_warnings():  # pydicom warns about the invalid values it is given
        warnings.simplefilter("ignore")
        invalid = xray_dataset(
            px,
            PatientSex="X",
            PatientBirthDate="19701301",
            StudyDate="2026-12-01",
            StudyTime="25:61",
            AccessionNumber="A" * 20,
            ReferringPhysicianName="N" * 70,
            PatientOrientation=["X", "Y"],
            Laterality="B",
        )
    return {
        "DX MONOCHROME2, Imager Pixel Spacing": xray_dataset(px),
        "CR MONOCHROME1": cr,
        "JPEG baseline (lossy)": jpeg_baseline(xray_dataset(px), xray_pixels(3, (64, 48))),
        "8 bits, chest, left": xray_dataset(
            xray_pixels(3, (64, 48)),
            bits_stored=8,
            bits_allocated=8,
            BodyPartExamined="CHEST",
            Laterality="L",
        ),
        "Pixel Spacing, a frame of reference": xray_dataset(
            px, PixelSpacing=[0.2, 0.2], Laterality="R", FrameOfReferenceUID=generate_uid()
        ),
        "no spacing": no_spacing,
        "zero spacing, a frame of reference": xray_dataset(
            px, PixelSpacing=[0, 0], ImagerPixelSpacing=[0, 0], FrameOfReferenceUID=generate_uid()
        ),
        "missing patient, study and orientation": missing,
        "invalid values": invalid,
        "oddly formed names": xray_dataset(px, PatientName="DOE, JOHN", ReferringPhysicianName="A^B^C^D^E^F"),
        "empty name": xray_dataset(px, PatientName=""),
    }


KINDS = list(_kinds_of_source())


def _results(ds, folder: Path, probabilities=(0.3, 0.7), info=None) -> dict[str, Path]:
    source = save(ds, folder / "src.dcm")
    info = info or ResultInfo(model="multimix", model_version="1", checkpoint_sha256=SHA)
    with warnings.catch_warnings():  # highdicom warns about one-component names
        warnings.simplefilter("ignore")
        paths = write_results(
            source,
            out=folder,
            stem="r",
            info=info,
            mask_probs=_blob(),
            overlay=np.full((32, 32, 3), 90, np.uint8),
            probabilities=probabilities,
        )
    return {p.name.split(".")[1]: p for p in paths}


@pytest.mark.parametrize("kind", KINDS)
def test_results_conform_for_every_kind_of_source(kind, tmp_path):
    """SEG, SC and SR of each kind of source: no Error from dciodvfy; a source's invalid value is
    not copied (left out, or empty where the standard requires the attribute), its valid ones are;
    the Type 2 attributes are there."""
    ds = _kinds_of_source()[kind]
    paths = _results(ds, tmp_path)
    assert sorted(paths) == ["sc", "seg", "sr"]
    seg, sc, sr = (pydicom.dcmread(paths[k]) for k in ("seg", "sc", "sr"))
    clean = copyable_source(ds)
    for result in (seg, sc, sr):
        for key in PATIENT_AND_STUDY:
            assert key in result, (kind, result.Modality, key)
            assert str(result[key].value or "") == str(clean[key].value or ""), (kind, key)
    if kind == "invalid values":
        for key in ("PatientSex", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber"):
            assert not seg[key].value and not sr[key].value, key
        assert not seg.ReferringPhysicianName and not sc.ReferringPhysicianName
        assert ds.PatientSex == "X" and ds.Laterality == "B"  # the source itself is not changed
    if kind == "oddly formed names":  # a valid name is copied as it is; six components are not valid
        assert seg.PatientName == "DOE, JOHN" and sr.ReferringPhysicianName == ""
    # General Image's Patient Orientation: the source's when valid, else empty (not guessed)
    valid_orientation = kind not in ("invalid values", "missing patient, study and orientation")
    for result in (seg, sc):
        assert list(result.PatientOrientation) == (["L", "F"] if valid_orientation else [])
    # General Series' Laterality: absent for a chest (not a paired body part: the source's "L" is
    # not copied); else the source's when valid, or empty (unknown)
    if kind == "8 bits, chest, left":
        assert "Laterality" not in sc and sc.BodyPartExamined == "CHEST"
    elif kind == "Pixel Spacing, a frame of reference":
        assert sc.Laterality == "R"
    else:
        assert "Laterality" in sc and not sc.Laterality
    # no spacing of zero anywhere (highdicom writes no pixel measures for a projection radiograph)
    for result in (seg, sc, sr):
        spacings = [e.value for e in result.iterall() if e.keyword.endswith("PixelSpacing")]
        assert all(float(v) > 0 for value in spacings for v in value), (kind, spacings)
    if kind == "JPEG baseline (lossy)":  # derived from a lossy image: said so
        assert seg.LossyImageCompression == sc.LossyImageCompression == "01"
    hd.seg.segread(paths["seg"]), hd.sr.srread(paths["sr"])  # highdicom reads them back
    found = dicom_conformance(*paths.values())
    print(f"\n{kind}: dciodvfy warnings {found}")


def test_the_conformance_check_fails_on_an_invalid_object(tmp_path):
    """The synthetic sources lack Type 1 attributes of the DX IOD: dciodvfy reports errors, and the
    check fails on them."""
    path = save(xray_dataset(_twelve(8, (16, 16))), tmp_path / "source.dcm")
    with pytest.raises(AssertionError, match="Error - Missing attribute Type 1"):
        dicom_conformance(path)


def test_a_value_that_cannot_be_parsed_is_left_out(tmp_path):
    """A source whose Patient's Weight reads "ab.c" (pydicom cannot even parse it): results without
    it, valid."""
    ds = xray_dataset(_twelve(7, (64, 48)), PatientWeight="99.5")
    path = save(ds, tmp_path / "weight.dcm")
    path.write_bytes(path.read_bytes().replace(b"99.5", b"ab.c"))
    (tmp_path / "out").mkdir()
    paths = write_results(
        path, out=tmp_path / "out", stem="w", info=ResultInfo(), mask_probs=_blob(), probabilities=(0.5, 0.5)
    )
    for p in paths:
        assert "PatientWeight" not in pydicom.dcmread(p), p.name
    dicom_conformance(*paths)


def _report_groups(path: Path):
    report = hd.sr.srread(path).content
    return report.get_image_measurement_groups(), report.get_planar_roi_measurement_groups()


def _texts(group, name) -> list[str]:
    """The values of the TEXT items called ``name`` among a measurement group's own items."""
    return [
        item.TextValue
        for item in group[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == name.value
    ]


def test_report_round_trip(tmp_path):
    """The SR read back with highdicom: TID 1500 with the finding pneumonia present / absent, its
    probability, the lung area (mm2 with a valid Pixel Spacing, else pixels), the algorithm, and
    references to the source image and to the SEG's segment."""
    ds = xray_dataset(_twelve(4, (64, 48)), PixelSpacing=[0.2, 0.25])
    paths = _results(ds, tmp_path, probabilities=(0.2, 0.8))
    seg, sr = pydicom.dcmread(paths["seg"]), hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.SeriesInstanceUID != ds.SeriesInstanceUID
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription and sr.VerificationFlag == "UNVERIFIED"
    template = sr.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID, seg.SOPInstanceUID}
    (finding,), (lung,) = _report_groups(paths["sr"])
    assert (finding.finding_type.value, finding.finding_type.scheme_designator) == ("233604007", "SCT")
    (evaluation,) = finding.get_qualitative_evaluations()
    assert evaluation.name.value == "233604007" and evaluation.value == codes.SCT.Present
    (probability,) = finding.get_measurements()
    assert probability.name == codes.DCM.Probability and probability.value == pytest.approx(0.8)
    assert probability.unit == codes.UCUM.NoUnits
    (source_ref,) = finding.source_images
    assert source_ref.referenced_sop_instance_uid == ds.SOPInstanceUID
    for group in (finding, lung):
        assert _texts(group, codes.DCM.AlgorithmName) == ["mmtrt"]
        assert _texts(group, codes.DCM.AlgorithmVersion) == [ResultInfo().mmtrt_version]
        assert _texts(group, codes.DCM.AlgorithmParameters) == [
            "model=multimix",
            "model_version=1",
            f"checkpoint_sha256={SHA}",
        ]
    # the lung: the SEG's segment 1, its area in mm2 from the Pixel Spacing
    assert lung.finding_type == codes.SCT.Lung
    frame = lung.referenced_segmentation_frame
    assert frame[0].referenced_sop_instance_uid == seg.SOPInstanceUID
    assert frame[0].referenced_segment_numbers == [1] and frame[0].referenced_frame_numbers is None
    assert frame[1].referenced_sop_instance_uid == ds.SOPInstanceUID  # Source Image for Segmentation
    (area,) = lung.get_measurements()
    lung_pixels = int(hd.seg.segread(paths["seg"]).pixel_array.sum())
    assert area.name == codes.SCT.Area and area.unit == codes.UCUM.SquareMillimeter
    assert area.value == pytest.approx(lung_pixels * 0.2 * 0.25) and lung_pixels > 500
    assert "PixelSpacing" in lung.tracking_identifier
    # absent, and no spacing: the area in pixels, said so
    no_spacing = xray_dataset(_twelve(5, (64, 48)))
    del no_spacing.ImagerPixelSpacing
    (tmp_path / "b").mkdir()
    paths = _results(no_spacing, tmp_path / "b", probabilities=(0.9, 0.1))
    (finding,), (lung,) = _report_groups(paths["sr"])
    assert finding.get_qualitative_evaluations()[0].value == codes.SCT.Absent
    assert finding.get_measurements()[0].value == pytest.approx(0.1)
    (area,) = lung.get_measurements()
    assert area.unit.value == "{pixels}" and area.value == hd.seg.segread(paths["seg"]).pixel_array.sum()
    assert "no valid pixel spacing" in lung.tracking_identifier
    # a model without a mask: the report holds the finding only
    sr = make_report(no_spacing, ResultInfo(), pneumonia_probability=0.6, pneumonia=True)
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID == (
        no_spacing.SeriesInstanceUID
    )
    path = write_datasets([(tmp_path / "finding-only.sr.dcm", sr)])[0]
    groups = _report_groups(path)
    assert len(groups[0]) == 1 and groups[1] == []
    dicom_conformance(path)


def _uids(folder: Path) -> dict[str, tuple[str, str]]:
    return {
        p.name: (d.SeriesInstanceUID, d.SOPInstanceUID)
        for p in sorted(folder.glob("r.*.dcm"))
        for d in [pydicom.dcmread(p, stop_before_pixels=True)]
    }


def test_result_uids_follow_the_source_and_the_model(tmp_path):
    """Made again for the same source by the same model (checkpoint sha256), the results have the
    same series and instance UIDs (a resend replaces them in an archive); another model or another
    source gives others; no two results share one."""
    ds = xray_dataset(_twelve(6, (64, 48)))
    other = xray_dataset(_twelve(6, (64, 48)))  # same pixels, another image (SOP Instance UID)
    runs = {}
    for name, source, sha in [
        ("a", ds, SHA),
        ("again", ds, SHA),
        ("model", ds, "f" * 64),
        ("other", other, SHA),
    ]:
        (tmp_path / name).mkdir()
        _results(source, tmp_path / name, info=ResultInfo(checkpoint_sha256=sha))
        runs[name] = _uids(tmp_path / name)
    assert sorted(runs["a"]) == ["r.sc.dcm", "r.seg.dcm", "r.sr.dcm"]
    assert runs["a"] == runs["again"]
    every = [uid for run in ("a", "model", "other") for pair in runs[run].values() for uid in pair]
    assert len(set(every)) == len(every) == 18
    assert all(uid.startswith(pydicom.uid.PYDICOM_ROOT_UID) for uid in every)


def test_not_evaluated_report(tmp_path):
    """An image the input gate refused: a Comprehensive SR that references it and says why, with
    UIDs of its own (the same when made again, never the result SR's), conformant to dciodvfy;
    nothing else is written for it."""
    lateral = xray_dataset(_twelve(7, (64, 48)), ViewPosition="LL")
    path = save(lateral, tmp_path / "lateral.dcm")
    info = ResultInfo(checkpoint_sha256=SHA)
    reason = "View Position (0018,5101) is 'LL': a lateral view"
    (written,) = write_not_evaluated(path, out=tmp_path / "out", stem="lat", info=info, reason=reason)
    assert written.name == "lat.not-evaluated.sr.dcm" and sorted((tmp_path / "out").iterdir()) == [written]
    sr = pydicom.dcmread(written)
    assert (
        sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
        and sr.StudyInstanceUID == lateral.StudyInstanceUID
    )
    evidence = (
        sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    )
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [lateral.SOPInstanceUID]
    (comment,) = [
        item.TextValue
        for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comment.startswith("Not evaluated by MultiMix") and reason in comment and SHA in comment
    (image,) = [item for item in sr.ContentSequence if item.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == lateral.SOPInstanceUID
    assert "SEG" not in {item.ValueType for item in sr.ContentSequence}
    again = make_not_evaluated_report(read_dataset(path), info, reason)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (sr.SOPInstanceUID, sr.SeriesInstanceUID)
    report = make_report(read_dataset(path), info, pneumonia_probability=0.5, pneumonia=False)
    assert {report.SOPInstanceUID, report.SeriesInstanceUID}.isdisjoint(
        {sr.SOPInstanceUID, sr.SeriesInstanceUID}
    )
    dicom_conformance(written)


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
        f"{s}.{e}.dcm" for s in ("dx12", "cr_mono1") for e in ("seg", "sc", "sr")
    )
    # the modality rule relaxed (sent as a tensor: the server's gate judges files only): accepted, warned
    args = ["infer", "--url", server.http_url, "--out", out, "--dicom-out", dicom_out, "--allow", "modality"]
    r = CliRunner().invoke(main, list(map(str, [*args, "--send", "tensor", dicom_inputs / "ct.dcm"])))
    assert r.exit_code == 0, r.output
    assert f"warning: {dicom_inputs / 'ct.dcm'}: Modality CT is not a radiograph (CR/DX)" in r.stderr
    assert r.stderr.count("Modality CT") == 1 and "1 image(s): 1 ok" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"ct.json", "ct.png"}
    assert {p.name for p in dicom_out.iterdir()} >= {"ct.seg.dcm", "ct.sc.dcm", "ct.sr.dcm"}
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
        assert record["dicom_results"] == [f"{stem}.seg.dcm", f"{stem}.sc.dcm", f"{stem}.sr.dcm"]
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
        # the SR: the served probability and label, the SEG's lung area in mm2 (Imager Pixel Spacing)
        (finding,), (lung,) = _report_groups(dicom_out / f"{stem}.sr.dcm")
        p_pneumonia = record["probabilities"]["PNEUMONIA"]
        assert finding.get_measurements()[0].value == pytest.approx(p_pneumonia, abs=1e-6)
        present = finding.get_qualitative_evaluations()[0].value == codes.SCT.Present
        assert present == (record["label"] == "PNEUMONIA")
        assert lung.referenced_segmentation_frame[0].referenced_sop_instance_uid == seg.SOPInstanceUID
        (area,) = lung.get_measurements()
        assert area.unit == codes.UCUM.SquareMillimeter
        assert area.value == pytest.approx(int(seg.pixel_array.sum()) * 0.175 * 0.175)
    assert json.loads((out / "plain.json").read_text())["dicom_results"] is None
    dicom_conformance(*sorted(dicom_out.iterdir()))


@needs_server
def test_infer_pulls_a_study_from_a_pacs_and_stores_the_results_in_it(server, tmp_path):
    """A study in a real Orthanc (a PA radiograph, a lateral one, a CT slice and a report):
    `mmtrt infer --dicomweb --study --stow` pulls its images with QIDO-RS + WADO-RS, answers the
    PA, refuses the lateral and the CT with the reason, skips the report, and stores the PA's
    SEG, SC and SR with STOW-RS into the same study; a second run skips mmtrt's own results and
    replaces them (same UIDs) rather than adding copies. The pulled files do not outlive it."""
    pacs = Orthanc(tmp_path)
    try:
        study, series = generate_uid(), generate_uid()
        common = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        pa = xray_dataset(_twelve(31, (300, 260)), **common)
        lateral = xray_dataset(_twelve(32, (300, 260)), ViewPosition="LL", InstanceNumber=2, **common)
        ct = xray_dataset(_twelve(33, (256, 256)), modality="CT", InstanceNumber=3, **common)
        report = pydicom.dcmread(pydicom.data.get_testdata_file("reportsi.dcm"))
        report.StudyInstanceUID = study
        for i, ds in enumerate((pa, lateral, ct, report)):
            pacs.post("/instances", save(ds, tmp_path / f"in{i}.dcm").read_bytes())
        out = tmp_path / "out"
        args = [
            "infer",
            "--url",
            server.http_url,
            "--out",
            out,
            "--dicomweb",
            pacs.dicomweb,
            "--study",
            study,
        ]
        args += ["--stow", pacs.dicomweb]
        r = CliRunner().invoke(main, list(map(str, args)))
        assert r.exit_code == 0, r.output
        assert (
            "pulled 3 instance(s) of study" in r.stderr
            and "skipped 1 (not images to classify: Structured Report)" in r.stderr
        )
        assert "3 image(s): 1 ok" in r.stdout and "2 refused, 0 failed" in r.stdout
        assert f"{lateral.SOPInstanceUID}.dcm: View Position (0018,5101) is 'LL'" in r.stderr
        assert f"{ct.SOPInstanceUID}.dcm: Modality (0008,0060) is 'CT'" in r.stderr
        assert "stored 3 result(s) with STOW-RS" in r.stderr
        record = json.loads((out / f"{pa.SOPInstanceUID}.json").read_text())
        assert record["outcome"] == "answered" and record["image"]["sop_instance_uid"] == pa.SOPInstanceUID
        assert not Path(record["source"]).exists()  # the pulled copy is gone
        written = sorted(p.name for p in (out / "dicom").iterdir())
        assert written == sorted(f"{pa.SOPInstanceUID}.{e}.dcm" for e in ("seg", "sc", "sr"))

        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(pacs.dicomweb)

        def in_pacs():  # SOP Instance UID -> SOP Class UID of each instance of the study
            return {
                i["00080018"]["Value"][0]: i["00080016"]["Value"][0]
                for i in client.search_for_instances(study)
            }

        stored = in_pacs()
        results = {pydicom.dcmread(out / "dicom" / name).SOPInstanceUID for name in written}
        assert (
            set(stored)
            == {pa.SOPInstanceUID, lateral.SOPInstanceUID, ct.SOPInstanceUID, report.SOPInstanceUID} | results
        )
        # what the archive holds is what was written: read back through DICOMweb and validated
        for name in written:
            mine = pydicom.dcmread(out / "dicom" / name)
            theirs = client.retrieve_instance(study, mine.SeriesInstanceUID, mine.SOPInstanceUID)
            assert theirs.SOPClassUID == mine.SOPClassUID and theirs.StudyInstanceUID == study
            theirs.save_as(tmp_path / f"back-{name}", enforce_file_format=True)
        dicom_conformance(*sorted(tmp_path.glob("back-*")))
        # run again: mmtrt's own SEG/SC/SR are skipped; the same UIDs replace, nothing is added
        r = CliRunner().invoke(main, list(map(str, args)))
        assert r.exit_code == 0, r.output
        assert (
            "pulled 3 instance(s)" in r.stderr
            and "Secondary Capture" in r.stderr
            and "Segmentation" in r.stderr
        )
        assert in_pacs() == stored
        assert not [p for p in Path(tempfile.gettempdir()).glob("mmtrt-dicomweb-*")]
    finally:
        pacs.stop()


@needs_server
def test_infer_dicomweb_failures_are_clear(server, tmp_path):
    pacs = Orthanc(tmp_path)
    try:
        unknown = generate_uid()
        args = ["infer", "--url", server.http_url, "--out", tmp_path / "out", "--dicomweb", pacs.dicomweb]
        r = CliRunner().invoke(main, list(map(str, [*args, "--study", unknown])))
        assert (
            r.exit_code == 1 and f"DICOMweb {pacs.dicomweb}: study {unknown} has no instances" in r.stderr
        ), r.output
        r = CliRunner().invoke(main, list(map(str, [*args, "--study", unknown, tmp_path])))
        assert r.exit_code == 2 and "give --study, and no IMAGES" in r.stderr
        r = CliRunner().invoke(main, list(map(str, [*args[:5], "--study", unknown])))
        assert r.exit_code == 2 and "give --dicomweb URL too" in r.stderr
    finally:
        pacs.stop()
    r = CliRunner().invoke(main, list(map(str, [*args, "--study", unknown])))  # the archive is down
    assert (
        r.exit_code == 1 and f"DICOMweb {pacs.dicomweb}: QIDO-RS search of study {unknown} failed" in r.stderr
    )


def test_infer_help_shows_the_dicom_path():
    r = CliRunner().invoke(main, ["infer", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "--dicom-out" in text and "DICOM Segmentation" in text and "Secondary Capture" in text
    assert "Structured Report" in text and "same UIDs" in text
    assert "PNG/JPEG/TIFF/DICOM" in text and "--export-manifest" in text
