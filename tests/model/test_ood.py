"""The image gate (mmtrt/ood.py): its statistics, its score in PyTorch and numpy, and the graphs
that carry it in onnxruntime and OpenVINO, on synthetic chest X-rays and on real non-chest
images from installed packages (mmtrt.data.foreign)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmtrt.data import foreign, write_synthetic_datasets
from mmtrt.graphs import GRAPHS
from mmtrt.model import MultiMix
from mmtrt.ood import (
    OODError,
    fit_gate,
    fit_statistics,
    read_stats,
    score_features,
    stage_features,
    stats_bytes,
)


def test_score_is_about_one_in_distribution_and_large_far_from_it():
    """Lee et al.'s shared-covariance Gaussians: held-out points of the fitted distribution score
    about 1 (each stage's squared distance / its dimension, averaged), shifted ones far more."""
    rng = np.random.default_rng(0)
    widths, n = (3, 5), 4000
    mixing = rng.normal(size=(8, 8))
    labels = rng.integers(0, 2, size=n)
    means = np.stack([np.zeros(8), np.full(8, 3.0)])
    features = means[labels] + rng.normal(size=(n, 8)) @ mixing
    stats = fit_statistics(features, labels, widths, 2)
    held = means[labels[:500]] + rng.normal(size=(500, 8)) @ mixing
    # own class: each stage's chi2(d)/d has mean 1; the nearest of two classes is a little closer
    assert 0.8 < np.mean(score_features(held, stats)) <= 1.05
    far = held + 10 * np.abs(mixing).sum(axis=0)
    assert score_features(far, stats).min() > 20 * np.median(score_features(held, stats))


def test_the_gate_in_torch_computes_what_numpy_does(model):
    rng = np.random.default_rng(1)
    widths = model.ood.widths
    features = rng.gamma(2.0, size=(200, sum(widths)))
    stats = fit_statistics(features, rng.integers(0, 2, 200), widths, 2)
    gate = MultiMix().ood.load({**stats, "threshold": np.float64(1.5)})
    skips = [torch.rand(3, w, 8, 8) for w in widths]
    score, inside = gate(skips)
    expected = score_features(stage_features(skips).double().numpy(), stats)
    np.testing.assert_allclose(score.reshape(-1).numpy(), expected, rtol=1e-5)
    assert inside.dtype == torch.bool and inside.shape == (3, 1)
    assert torch.equal(inside.reshape(-1), score.reshape(-1) <= 1.5)


def test_an_unfitted_gate_lets_every_image_through(model):
    assert not model.ood.fitted and math.isinf(float(model.ood.threshold))
    with torch.no_grad():
        _, inside = model.ood(model.encoder(torch.rand(2, 1, 64, 64)).skips)
    assert inside.all()


def test_statistics_are_checked_before_use(tmp_path, model):
    gate = MultiMix().ood
    with pytest.raises(OODError, match="'centers'"):
        gate.load({"centers": np.zeros((2, 3)), "whitening": np.eye(sum(gate.widths)), "threshold": 1.0})
    good = gate.statistics()
    with pytest.raises(OODError, match="not finite"):
        gate.load({**good, "whitening": np.full_like(good["whitening"], np.nan)})
    (tmp_path / "ood.npz").write_bytes(b"not an npz")
    with pytest.raises(OODError, match="ood.npz"):
        read_stats(tmp_path / "ood.npz")
    (tmp_path / "good.npz").write_bytes(stats_bytes(gate))
    assert set(read_stats(tmp_path / "good.npz")) == {"centers", "whitening", "threshold"}
    with pytest.raises(OODError, match="more images"):
        fit_statistics(np.zeros((3, sum(gate.widths))), np.array([0, 1, 0]), gate.widths, 2)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The seed-0 model with its gate fitted on synthetic chest X-rays, and its record."""
    data = tmp_path_factory.mktemp("ood") / "data"
    write_synthetic_datasets(data, n_cls={"train": 24, "val": 16, "test": 0}, n_seg=0, seed=3)
    torch.manual_seed(0)
    model = MultiMix().eval()
    record = fit_gate(model, data / "cls", quantile=0.99, echo=lambda *_: None)
    return model, record


def test_fitting_records_its_threshold_and_false_rejects(fitted):
    model, record = fitted
    assert model.ood.fitted
    assert record["threshold"] == pytest.approx(float(model.ood.threshold))
    assert record["fit"]["images"] == 24 and record["held_out"]["images"] == 16
    # the "higher" quantile of 16 held-out scores at 0.99 is their largest: none rejected
    assert record["held_out"]["false_reject_rate"] == 0.0


def test_graphs_carry_the_gate_in_every_runtime_on_real_non_chest_images(fitted, tmp_path):
    """The encoder graph's ood_score / in_distribution in onnxruntime and OpenVINO equal
    PyTorch's on non-chest images from pydicom, scikit-image and matplotlib, and on chest X-rays."""
    from mmtrt.export.onnx_graphs import export_onnx
    from mmtrt.export.validate import TOLERANCES
    from mmtrt.parity import make_image
    from mmtrt.runtimes import openvino, ort

    model, _ = fitted
    images = foreign.collect()
    assert {"CT", "MR"} <= {i.kind for i in images} and sum(
        i.name.startswith("skimage:") for i in images
    ) >= 10
    batch = np.stack([i.image for i in images[:7]] + [make_image("xray", s).numpy() for s in range(1)])
    export_onnx(GRAPHS["encoder"], model, tmp_path / "encoder.onnx", max_batch=8)
    with torch.no_grad():
        expected = GRAPHS["encoder"].build(model)(torch.from_numpy(batch))
    score, inside = (t.numpy().reshape(-1) for t in expected[-2:])
    for runner in (ort.runner(tmp_path / "encoder.onnx"), openvino.runner(tmp_path / "encoder.onnx")):
        got = runner({"image": batch}, outputs=["ood_score", "in_distribution"])
        error = np.linalg.norm(got["ood_score"].reshape(-1) - score) / np.linalg.norm(score)
        assert error <= TOLERANCES["fp32"].ood_rel  # the export's parity rule for the score
        assert got["in_distribution"].dtype == np.bool_
        np.testing.assert_array_equal(got["in_distribution"].reshape(-1), inside)
