"""`mmtrt evaluate` of a model served by the real Triton server gives the same numbers as the
same model's checkpoint evaluated in this process, on the same images (the server runs the
exported graphs of ``torch.manual_seed(0); MultiMix()``, see helpers.real_export), calibrated
by `mmtrt calibrate` (a temperature and a Youden operating point, both non-trivial): the served
models and the checkpoint given the export's calibration answer the same probabilities and
labels."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import needs_server

from mmtrt.calibration import Calibration
from mmtrt.checkpoint import save_checkpoint
from mmtrt.cli import main
from mmtrt.data import write_synthetic_datasets
from mmtrt.evaluate import CheckpointPredictor, TritonPredictor
from mmtrt.serving.client import Servers

pytestmark = needs_server


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    write_synthetic_datasets(root, n_cls={"val": 24, "test": 6}, n_seg={"test": 4}, seed=3, difficulty=0.0)
    return root


@pytest.fixture(scope="module")
def export_dir(request, data, tmp_path_factory):
    """A copy of the real export, calibrated on the validation images (conftest's repo and server
    serve it)."""
    from helpers import real_export

    folder = tmp_path_factory.mktemp("calibrated") / "export"
    shutil.copytree(real_export(request), folder, ignore=shutil.ignore_patterns(".lock"))
    args = ["calibrate", str(folder), "--data", str(data / "cls"), "--operating-point", "youden"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return folder


@pytest.fixture(scope="module")
def calibration(export_dir):
    record = json.loads((export_dir / "manifest.json").read_text())["calibration"]
    return Calibration(record["temperature"], record["threshold"])


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The served model's weights (conftest's ``model`` and helpers.real_export: seed 0)."""
    path = tmp_path_factory.mktemp("ckpt") / "seed0.pt"
    save_checkpoint(path, model, meta={"origin": "seed 0"})
    return path


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_outputs_equal_in_process(server, checkpoint, data, calibration, protocol):
    from mmtrt.data import ClassificationFolder, SegmentationPairs

    seg, cls = SegmentationPairs(data / "seg", "test"), ClassificationFolder(data / "cls", "val")
    x = np.stack([seg[i][0].numpy() for i in range(len(seg))] + [cls[i][0].numpy() for i in range(8)])
    url = server.grpc_url if protocol == "grpc" else server.http_url
    served = TritonPredictor(Servers([url], protocol, retries=0))
    try:
        a, b = CheckpointPredictor(checkpoint, calibration=calibration).predict(x), served.predict(x)
    finally:
        served.close()
    # the calibration is not the identity here: it changes the probabilities and some labels
    assert calibration.temperature > 1.5
    assert np.abs(a["probs"] - a["uncalibrated_probs"]).max() > 1e-3
    assert not np.array_equal(a["label"], a["uncalibrated_probs"].argmax(1))
    np.testing.assert_array_equal(b["label"], a["label"])
    np.testing.assert_allclose(b["probs"], a["probs"], atol=1e-5)
    np.testing.assert_allclose(b["mask"], a["mask"], atol=1e-4)
    # The saliency is piecewise smooth (LeakyReLU / max-pool gates): onnxruntime's rounding flips
    # a few gates and moves it by ~0.5 % (README: the saliency graph across runtimes).
    sa, sb = a["saliency"].ravel().astype(np.float64), b["saliency"].ravel().astype(np.float64)
    assert np.linalg.norm(sb - sa) / np.linalg.norm(sa) < 2e-2
    assert sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb)) > 0.999


def test_evaluate_cli_served_equals_checkpoint(server, checkpoint, data, export_dir, tmp_path):
    out = tmp_path / "eval"
    args = [
        "evaluate", str(checkpoint), "--name", "ckpt", "--url", server.grpc_url, "--protocol", "grpc",
        "--calibration", str(export_dir),
        "--cls-data", str(data / "cls"), "--seg-data", str(data / "seg"), "--out", str(out),
        "--bootstrap", "50", "--gallery", "2",
    ]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["models"]) == {"ckpt", "triton:multimix"}
    local, served = m["results"]["ckpt"]["in-domain"], m["results"]["triton:multimix"]["in-domain"]
    assert local["classification"]["n"] == served["classification"]["n"] == 6
    assert local["classification"]["confusion"] == served["classification"]["confusion"]
    for k in ("accuracy", "f1_normal", "f1_pneumonia", "auroc", "sensitivity", "specificity"):
        assert served["classification"][k]["value"] == pytest.approx(
            local["classification"][k]["value"], abs=1e-9
        )
    for k in ("ece", "brier"):  # of the probabilities, equal to float32 rounding
        assert served["classification"][k]["value"] == pytest.approx(
            local["classification"][k]["value"], abs=1e-5
        )
    assert local["segmentation"]["n"] == served["segmentation"]["n"] == 4
    for k in ("dice", "jaccard", "precision", "recall", "ssim"):
        assert served["segmentation"][k]["mean"] == pytest.approx(local["segmentation"][k]["mean"], abs=1e-3)
    for k in ("hd95", "assd", "avg_hausdorff"):
        assert served["segmentation"][k]["mean"] == pytest.approx(
            local["segmentation"][k]["mean"], rel=1e-2, abs=0.05
        )
    # ECE and Brier before the temperature: reported for the checkpoint given the calibration
    for k in ("ece_uncalibrated", "brier_uncalibrated"):
        lo, hi = local["classification"][k]["ci95"]
        assert 0 <= lo <= hi and k not in served["classification"]
    assert m["models"]["ckpt"]["calibration"]["threshold"] == pytest.approx(
        json.loads((export_dir / "manifest.json").read_text())["calibration"]["threshold"]
    )
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (6 + 4)
    assert (out / "report.html").is_file() and (out / "summary.csv").is_file()


def test_infer_answers_the_served_label_at_the_operating_point(
    server, checkpoint, data, calibration, tmp_path
):
    """`mmtrt infer`'s JSON: the calibrated probabilities and the label at the export's operating
    point, as the checkpoint given the same calibration answers them."""
    from mmtrt.data import ClassificationFolder

    val = ClassificationFolder(data / "cls", "val")
    picks = range(0, len(val), 2)
    x = np.stack([val[i][0].numpy() for i in picks])
    local = CheckpointPredictor(checkpoint, calibration=calibration).predict(x, need_mask=False)
    assert not np.array_equal(local["label"], local["uncalibrated_probs"].argmax(1))
    out = tmp_path / "out"
    files = [str(val.paths[i]) for i in picks]
    res = CliRunner().invoke(main, ["infer", "--url", server.http_url, "--out", str(out), *files])
    assert res.exit_code == 0, res.output
    for j, f in enumerate(files):
        record = json.loads((out / f"{Path(f).stem}.json").read_text())
        assert record["label_index"] == local["label"][j]
        assert record["label"] == ("NORMAL", "PNEUMONIA")[local["label"][j]]
        got = [record["probabilities"]["NORMAL"], record["probabilities"]["PNEUMONIA"]]
        np.testing.assert_allclose(got, local["probs"][j], atol=1e-5)


def test_served_models_publish_the_calibration_baseline(server, export_dir):
    """The drift alerts' baseline (deploy/monitoring/): each served graph model publishes the mean
    P(PNEUMONIA) and the PNEUMONIA rate of the validation images the export was calibrated on."""
    from helpers import metrics_page

    validation = json.loads((export_dir / "manifest.json").read_text())["calibration"]["validation"]
    page = metrics_page(server)
    for name, key in (
        ("mmtrt_baseline_pneumonia_probability", "mean_pneumonia_probability"),
        ("mmtrt_baseline_pneumonia_rate", "pneumonia_rate"),
    ):
        values = {
            m.group(1): float(m.group(2))
            for m in re.finditer(rf'^{name}{{model="(\w+)",version="1"}} (\S+)$', page, re.M)
        }
        assert set(values) >= {"multimix", "classifier"}, page[:2000]
        assert 0 <= validation[key] <= 1
        for model, value in values.items():
            assert value == pytest.approx(validation[key], abs=1e-9), (name, model)
