"""mmtrt.calibration (temperature scaling and the operating point) against closed forms and
torch's softmax, and `mmtrt calibrate` on a copy of the real export: what it writes into the
manifest, what it leaves alone, its bad inputs, and the gpu flavour's refusal of a calibrated
export. (Served and in-process answers of a calibrated export: tests/evaluate/test_eval_served.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmtrt.calibration import (
    Calibration,
    CalibrationError,
    choose_threshold,
    fit_temperature,
    margins,
    parse_operating_point,
)
from mmtrt.cli import main


def softmax_probs(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, 1).numpy()


def test_the_default_is_the_argmax_and_the_graphs_probabilities():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, (500, 2)).astype(np.float32))
    logits[:5] = torch.tensor([0.7, 0.7])  # ties: NORMAL, as argmax
    probs = softmax_probs(logits)
    default = Calibration()
    assert np.array_equal(default.labels(probs), probs.argmax(1))
    assert default.labels(probs)[:5].tolist() == [0] * 5
    assert np.array_equal(default.probabilities(probs), probs)  # unchanged, not recomputed
    assert Calibration.from_manifest({}) == default


def test_temperature_scaling_is_softmax_of_the_logits_over_t():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 4, (300, 2)))
    probs = softmax_probs(logits.float())
    for t in (0.5, 1.7, 6.0):
        got = Calibration(t).probabilities(probs)
        np.testing.assert_allclose(got, softmax_probs(logits / t), atol=2e-6)
        assert got.dtype == np.float32
    # the threshold applies to the calibrated probability, at any temperature
    c = Calibration(2.5, 0.3)
    p1 = c.probabilities(probs)[:, 1]
    assert np.array_equal(c.labels(probs), (p1 > 0.3).astype(np.int64))
    # an underflowed probability: an infinite margin, still a valid answer
    saturated = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert margins(saturated).tolist() == [np.inf, -np.inf]
    assert c.labels(saturated).tolist() == [1, 0]
    assert c.probabilities(saturated).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_bad_calibrations_are_refused():
    for t, thr in ((0.0, 0.5), (100.0, 0.5), (1.0, 0.0), (1.0, 1.0), ("2", 0.5)):
        with pytest.raises(CalibrationError):
            Calibration(t, thr)
    with pytest.raises(CalibrationError, match="unusable"):
        Calibration.from_manifest({"calibration": {"temperature": 2.0}})
    with pytest.raises(CalibrationError, match=r"\[N, 2\]"):
        Calibration().labels(np.zeros(3))


def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 6, 20000)  # an over-confident model: the labels follow sigmoid(z / 3)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z / 3))).astype(int)
    probs = softmax_probs(torch.from_numpy(np.stack([np.zeros_like(z), z], 1)))
    assert fit_temperature(y, probs) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(CalibrationError, match="NORMAL and PNEUMONIA"):
        fit_temperature(np.ones(10), probs[:10])


def test_operating_points():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert choose_threshold(y, s, "argmax") == 0.5
    t = choose_threshold(y, s, "youden")  # 3 of 4 right each side: between 0.3 and 0.4, or 0.6 and 0.7
    assert t == pytest.approx(0.35)  # of equal ones, the lowest threshold
    t = choose_threshold(y, s, "sensitivity=1")  # the most specific that finds every PNEUMONIA
    assert t == pytest.approx(0.35)
    t = choose_threshold(y, s, "specificity=1")  # the most sensitive that clears every NORMAL
    assert t == pytest.approx(0.65)
    t = choose_threshold(y, s, "sensitivity=0.5")
    assert t == pytest.approx(0.75) and ((s > t) & (y == 1)).sum() == 2
    assert parse_operating_point(" Specificity=0.9 ") == ("specificity", 0.9)
    for bad in ("sens=0.9", "sensitivity", "sensitivity=1.5", "youden=1", "specificity=x"):
        with pytest.raises(CalibrationError, match="choose argmax, youden"):
            parse_operating_point(bad)


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    from mmtrt.data import write_synthetic_datasets

    root = tmp_path_factory.mktemp("caldata")
    write_synthetic_datasets(root, n_cls={"val": 16}, n_seg=0, seed=5, size=64)
    return root / "cls"


@pytest.fixture
def export_copy(export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder, ignore=shutil.ignore_patterns(".lock"))
    return folder


def test_calibrate_writes_the_record_and_nothing_else(export_copy, val_data):
    from mmtrt.export.manifest import read_manifest

    before = read_manifest(export_copy)
    res = CliRunner().invoke(
        main, ["calibrate", str(export_copy), "--data", str(val_data), "--operating-point", "youden"]
    )
    assert res.exit_code == 0, res.output
    after = read_manifest(export_copy)  # every file still matches its sha256
    record = after.pop("calibration")
    assert after == before
    v = record["validation"]
    assert (v["images"], v["normal"], v["pneumonia"], v["split"]) == (16, 8, 8, "val")
    assert v["graph"] == "encoder.onnx" and v["nll_after"] <= v["nll_before"]
    assert record["operating_point"] == "youden" and 0 < record["threshold"] < 1
    assert Calibration.from_manifest({"calibration": record}) == Calibration(
        record["temperature"], record["threshold"]
    )
    assert f"temperature {record['temperature']:.4f}" in res.output
    # calibrating again replaces the record (the graphs' probabilities are never calibrated)
    res = CliRunner().invoke(main, ["calibrate", str(export_copy), "--data", str(val_data)])
    assert res.exit_code == 0, res.output
    again = read_manifest(export_copy)["calibration"]
    assert again["temperature"] == pytest.approx(record["temperature"]) and again["threshold"] == 0.5


def test_calibrate_bad_inputs(export_copy, val_data, tmp_path):
    def run(*args):
        return CliRunner().invoke(main, ["calibrate", *map(str, args)])

    res = run(export_copy, "--data", val_data, "--operating-point", "sensitivity=2")
    assert res.exit_code == 1 and "sensitivity=X" in res.output
    res = run(export_copy, "--data", tmp_path / "nope")
    assert res.exit_code == 1 and "no such folder" in res.output
    res = run(export_copy, "--data", val_data, "--split", "test")
    assert res.exit_code == 1 and "split folder not found" in res.output
    res = run(tmp_path / "nothing", "--data", val_data)
    assert res.exit_code == 1 and "no such export folder" in res.output
    assert "calibration" not in json.loads((export_copy / "manifest.json").read_text())


def test_a_calibrated_export_is_served_by_the_cpu_flavour_only(export_copy, tmp_path):
    from mmtrt.serving import build_repository
    from mmtrt.serving.errors import ServingError

    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["calibration"] = {"temperature": 1.5, "threshold": 0.4}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="--flavour cpu"):
        build_repository(export_copy, tmp_path / "gpu", flavour="gpu")
    manifest["calibration"] = {"temperature": "hot", "threshold": 0.4}
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="calibration"):
        build_repository(export_copy, tmp_path / "cpu")
