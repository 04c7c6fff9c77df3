"""The image gate in the served models: an export whose gate is fitted on synthetic chest X-rays
(helpers.gated_export), served by the real Triton server. Real non-chest images from installed
packages (a CT slice and an MR slice of pydicom, photographs of scikit-image and matplotlib) are
answered, not failed: ``in_distribution`` false, their score, zeros and label -1 for everything
else; chest X-rays beside them are answered as onnxruntime answers them in process; the same
over HTTP and gRPC, as tensors to multimix and the classifier and as files to multimix_image;
`mmtrt infer` prints such an image refused with the reason; the metrics count it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from helpers import client_for, encoded, gated_export, metrics_page, needs_server, ort_session

from mmtrt.cli import main
from mmtrt.data import ClassificationFolder, foreign, write_synthetic_datasets
from mmtrt.serving import build_repository
from mmtrt.serving.client import ACCEPTED, IMAGE_MODEL, file_inputs, image_inputs
from mmtrt.serving.settings import ImageLimits

pytestmark = needs_server
OUTPUTS = ("probs", "label", "mask", "saliency", "ood_score", "in_distribution")
#: non-chest images far above the gate's threshold for the seed-0 model (measured margin > 1.4x)
FOREIGN = ("pydicom:CT_small.dcm", "skimage:coins", "skimage:astronaut", "matplotlib:grace_hopper.jpg")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gate-data")
    write_synthetic_datasets(root, n_cls={"train": 24, "val": 16, "test": 0}, n_seg=0, seed=3)
    return root / "cls"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, data):
    return gated_export(tmp_path_factory.mktemp("gated") / "export", data)


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        models=("multimix", "classifier", IMAGE_MODEL),
        ort_threads=1,
        image_limits=ImageLimits(allow="modality"),  # a CT slice reaches the image gate
    )


@pytest.fixture(scope="module")
def threshold(export_dir) -> float:
    return json.loads((export_dir / "manifest.json").read_text())["ood"]["threshold"]


@pytest.fixture(scope="module")
def images(data, threshold, export_dir) -> dict[str, np.ndarray]:
    """Two held-out chest X-rays well inside the gate (score < 0.9 x threshold) and the foreign
    images, by name, as the network takes them."""
    run = ort_session(export_dir / "encoder.onnx")
    val = ClassificationFolder(data, "val", size=256)
    chest = np.stack([val[i][0].numpy() for i in range(len(val))])
    (scores,) = run.run(["ood_score"], {"image": chest})
    inside = [i for i in np.argsort(scores.ravel()) if scores.ravel()[i] < 0.9 * threshold][:2]
    assert len(inside) == 2
    named = {f"chest:{i}": chest[i] for i in inside}
    by_name = {f.name: f.image for f in foreign.collect()}
    return {**named, **{name: by_name[name] for name in FOREIGN}}


def _expected(export_dir, x: np.ndarray, graph: str) -> dict[str, np.ndarray]:
    session = ort_session(export_dir / f"{graph}.onnx")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": x})))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model, graph", [("multimix", "multimix"), ("classifier", "encoder")])
def test_images_out_of_distribution_are_answered_refused(
    server, export_dir, images, threshold, protocol, model, graph
):
    names = list(images)
    x = np.stack([images[n] for n in names])
    want = _expected(export_dir, x, graph)
    with client_for(protocol, server) as client:
        wanted = tuple(o for o in OUTPUTS if o in client.ready_model(model, "").output_names)
        got = client.infer(model, image_inputs(x), wanted)
    inside = [n.startswith("chest:") for n in names]
    assert got["in_distribution"].dtype == np.bool_ and got["in_distribution"].ravel().tolist() == inside
    np.testing.assert_array_equal(want["in_distribution"].ravel(), inside)  # in process too
    np.testing.assert_allclose(got["ood_score"], want["ood_score"], rtol=1e-5)
    scores = got["ood_score"].ravel()
    assert (scores[~np.array(inside)] > 1.2 * threshold).all() and (scores[inside] < threshold).all()
    for j, ok in enumerate(inside):
        if ok:  # answered as in process
            np.testing.assert_allclose(got["probs"][j], want["probs"][j], rtol=1e-5, atol=1e-6)
            assert got["label"][j, 0] == int(np.argmax(want["probs"][j]))
            for name in ("mask", "saliency"):
                if name in got:
                    np.testing.assert_allclose(got[name][j], want[name][j], rtol=1e-4, atol=1e-5)
        else:  # nothing of it to take for a result
            assert got["label"][j, 0] == -1, names[j]
            assert all(not got[name][j].any() for name in ("probs", "mask", "saliency") if name in got)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_files_pass_the_header_gate_and_meet_the_image_gate(server, images, protocol, tmp_path):
    """multimix_image: a PNG photograph and a DICOM whose header says a frontal chest DX but
    whose pixels are a photograph are accepted by the header gate and refused by the image gate;
    a chest X-ray PNG is answered."""
    chest = next(v for k, v in images.items() if k.startswith("chest:"))
    photo = images["skimage:astronaut"]
    dicom = _chest_header_dicom(tmp_path / "photo.dcm", photo)
    datas = [
        encoded((chest[0] * 255).astype(np.uint8)),
        encoded((photo[0] * 255).astype(np.uint8)),
        dicom.read_bytes(),
    ]
    with client_for(protocol, server) as client:
        got = client.infer(IMAGE_MODEL, file_inputs(datas), (*OUTPUTS, ACCEPTED))
    assert got[ACCEPTED].ravel().tolist() == [True, True, True]
    assert got["in_distribution"].ravel().tolist() == [True, False, False]
    assert got["label"].ravel().tolist()[1:] == [-1, -1] and got["label"][0, 0] in (0, 1)
    assert not got["mask"][1:].any() and got["mask"][0].any()


def _chest_header_dicom(path: Path, image: np.ndarray) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (image[0] * 255).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = (
        ds.file_meta.MediaStorageSOPClassUID,
        ds.file_meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_infer_prints_an_image_out_of_distribution_refused(server, images, tmp_path):
    """`mmtrt infer`: a photograph (PNG) and pydicom's CT slice (its modality rule relaxed here
    and in the repository, so that the header gates let it through) are printed refused with the image gate's reason and
    score; their JSON says so and records the score, no overlay, no DICOM results; the chest
    X-ray is answered, with its score."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    chest = next(v for k, v in images.items() if k.startswith("chest:"))
    (inputs / "chest.png").write_bytes(encoded((chest[0] * 255).astype(np.uint8)))
    (inputs / "photo.png").write_bytes(
        encoded((images["matplotlib:grace_hopper.jpg"][0] * 255).astype(np.uint8))
    )
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", inputs / "ct.dcm")
    out, dicom_out = tmp_path / "out", tmp_path / "dicom"
    r = CliRunner().invoke(
        main,
        ["infer", "--url", server.grpc_url, "--protocol", "grpc", "--allow", "modality", "--out", str(out),
         "--dicom-out", str(dicom_out), str(inputs)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    for name in ("photo", "ct"):
        assert re.search(
            rf"refused: .*{name}\.\w+: out of distribution: the image gate's score [0-9.]+ is above", r.stderr
        )
        record = json.loads((out / f"{name}.json").read_text())
        assert record["outcome"] == "refused" and record["refusal_reason"].startswith("out of distribution")
        assert record["ood_score"] > 0 and record["label"] is None and record["probabilities"] is None
    answered = json.loads((out / "chest.json").read_text())
    assert answered["outcome"] == "answered" and 0 < answered["ood_score"]
    assert sorted(p.name for p in out.iterdir()) == ["chest.json", "chest.png", "ct.json", "photo.json"]
    assert not dicom_out.exists() or not any(dicom_out.iterdir())
    assert "2 refused, 0 failed" in r.stdout


def test_metrics_count_the_refused_and_observe_every_score(server, images):
    def read(page):
        values = {}
        for line in page.splitlines():
            m = re.match(r"(mmtrt_ood_score_count|mmtrt_images_total)\{(.*)\} ([0-9.e+]+)$", line)
            if m and 'model="multimix"' in m.group(2):
                key = m.group(1) + (
                    "" if "outcome" not in m.group(2) else re.search(r'outcome="(\w+)"', m.group(2)).group(1)
                )
                values[key] = float(m.group(3))
        return values

    before = read(metrics_page(server))
    x = np.stack(list(images.values()))
    with client_for("http", server) as client:
        client.infer("multimix", image_inputs(x), ("label",))
    after = read(metrics_page(server))
    n, refused = len(images), len(FOREIGN)
    assert after["mmtrt_ood_score_count"] - before.get("mmtrt_ood_score_count", 0) == n
    assert after["mmtrt_images_totalrefused"] - before.get("mmtrt_images_totalrefused", 0) == refused
    assert after["mmtrt_images_totalanswered"] - before.get("mmtrt_images_totalanswered", 0) == n - refused


def test_evaluate_counts_refused_images_and_scores_the_others(server, images, tmp_path):
    """`mmtrt evaluate` through the server: images the image gate refuses are counted as refused
    (and listed in per_image.csv), not scored; the metrics are over the answered ones."""
    chest = [v for k, v in images.items() if k.startswith("chest:")]
    root = tmp_path / "cls" / "test"
    for label, pictures in (
        ("NORMAL", [chest[0], images["skimage:coins"]]),
        ("PNEUMONIA", [chest[1], images["pydicom:CT_small.dcm"]]),
    ):
        (root / label).mkdir(parents=True)
        for k, picture in enumerate(pictures):
            (root / label / f"{k}.png").write_bytes(encoded((picture[0] * 255).astype(np.uint8)))
    out = tmp_path / "evaluate"
    r = CliRunner().invoke(
        main,
        ["evaluate", "--url", server.http_url, "--cls-data", str(tmp_path / "cls"), "--out", str(out), "--bootstrap", "50"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    result = json.loads((out / "metrics.json").read_text())["results"]["triton:multimix"]["in-domain"]
    assert result["classification"]["n"] == 2 and result["classification"]["refused"] == 2
    rows = (out / "per_image.csv").read_text().splitlines()
    assert sum(row.endswith(",refused,,,,,,,,") or ",refused," in row for row in rows) == 2
    assert "refused (image gate)" in (out / "report.html").read_text()
