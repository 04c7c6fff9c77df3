"""mmtrt.metrics against MONAI called directly, a direct scipy computation and closed forms, on
masks made here (discs, squares), with and without pixel spacing; the empty-mask cases; the
classification metrics against scikit-learn and torchmetrics; the seeded bootstrap; and every
metric and interval against metrics_reference.json, the values the earlier hand-written
implementation (Mann-Whitney ranks, its own ROC and bootstrap loops) gave on fixed inputs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmtrt.metrics import (
    CALIBRATION_KEYS,
    CLS_KEYS,
    average_hausdorff,
    calibration_ci,
    calibration_metrics,
    classification_ci,
    classification_metrics,
    confusion_matrix,
    mean_ci,
    reliability_curve,
    roc_curve,
    segmentation_metrics,
)

N = 96


def disc(cy: float, cx: float, r: float, n: int = N) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def square(y0: int, x0: int, side: int, n: int = N) -> np.ndarray:
    m = np.zeros((n, n), dtype=bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def direct_surface(pred, target, spacing=(1.0, 1.0)):
    """HD95 and ASSD from first principles: border = mask minus its erosion; distances of each
    border's pixels to the other border by an exact Euclidean distance transform."""
    edge = lambda m: m & ~ndimage.binary_erosion(m)
    ep, et = edge(pred), edge(target)
    d_pt = ndimage.distance_transform_edt(~et, sampling=spacing)[ep]
    d_tp = ndimage.distance_transform_edt(~ep, sampling=spacing)[et]
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    return hd95, np.concatenate([d_pt, d_tp]).mean()


def monai_direct(pred, target, spacing=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    t = torch.from_numpy(target.astype(np.float32))[None, None]
    return (
        float(compute_dice(p, t, include_background=True)),
        float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)),
        float(
            compute_average_surface_distance(p, t, include_background=True, symmetric=True, spacing=spacing)
        ),
    )


PAIRS = {
    "concentric discs": (disc(48, 48, 20), disc(48, 48, 25)),
    "shifted discs": (disc(45, 50, 22), disc(50, 44, 20)),
    "squares": (square(20, 20, 40), square(26, 23, 36)),
    "disc in square": (disc(48, 48, 18), square(28, 28, 40)),
}


@pytest.mark.parametrize("spacing", [None, 0.7, (0.5, 1.25)], ids=["pixels", "iso0.7mm", "aniso"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_overlap_and_surface_metrics_match_monai_and_direct(name, spacing):
    pred, target = PAIRS[name]
    m = segmentation_metrics(pred, target, spacing=spacing)
    inter, n_p, n_t = (pred & target).sum(), pred.sum(), target.sum()
    assert m["dice"] == pytest.approx(2 * inter / (n_p + n_t), abs=1e-12)
    assert m["jaccard"] == pytest.approx(inter / (pred | target).sum(), abs=1e-12)
    assert m["precision"] == pytest.approx(inter / n_p) and m["recall"] == pytest.approx(inter / n_t)
    sp = (1.0, 1.0) if spacing is None else ((spacing, spacing) if np.isscalar(spacing) else spacing)
    dice, hd95, assd = monai_direct(pred, target, None if spacing is None else list(sp))
    assert m["dice"] == pytest.approx(dice, abs=1e-6)
    assert m["hd95"] == pytest.approx(hd95, rel=1e-6) and m["assd"] == pytest.approx(assd, rel=1e-6)
    d_hd95, d_assd = direct_surface(pred, target, sp)
    assert m["hd95"] == pytest.approx(d_hd95, rel=1e-5) and m["assd"] == pytest.approx(d_assd, rel=1e-5)


def test_closed_forms_and_spacing_scale():
    # concentric discs of radii 20 and 25: every border point is ~5 px from the other border
    m = segmentation_metrics(disc(48, 48, 20), disc(48, 48, 25))
    assert 4.0 <= m["assd"] <= 6.0 and 4.0 <= m["hd95"] <= 6.0
    # squares shifted by 4 columns: the Hausdorff distance is 4, its 95th percentile at most that
    a, b = square(20, 20, 40), square(20, 24, 40)
    m = segmentation_metrics(a, b)
    assert m["dice"] == pytest.approx(36 / 40) and m["hd95"] == pytest.approx(4.0)
    # isotropic spacing scales every distance and leaves overlap alone
    m2 = segmentation_metrics(a, b, spacing=0.5)
    for k in ("hd95", "assd", "avg_hausdorff"):
        assert m2[k] == pytest.approx(0.5 * m[k], rel=1e-6)
    assert m2["dice"] == m["dice"]
    # anisotropic: a shift along columns counts with the column spacing only
    m3 = segmentation_metrics(a, b, spacing=(3.0, 0.25))
    assert m3["hd95"] == pytest.approx(1.0)


def test_region_average_hausdorff_is_much_smaller_than_assd():
    pred, target = PAIRS["shifted discs"]
    m = segmentation_metrics(pred, target)
    assert m["avg_hausdorff"] == pytest.approx(average_hausdorff(pred, target))
    assert m["avg_hausdorff"] < m["assd"] / 3  # the region-based form averages in interior pixels


def test_empty_masks_are_defined():
    empty, full = np.zeros((N, N), bool), disc(48, 48, 20)
    both = segmentation_metrics(empty, empty)
    assert both == {
        "dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0,
        "hd95": 0.0, "assd": 0.0, "avg_hausdorff": 0.0,
    }  # fmt: skip
    for pred, target in ((empty, full), (full, empty)):
        m = segmentation_metrics(pred, target, spacing=(0.5, 2.0))
        diag = math.hypot(N * 0.5, N * 2.0)
        assert (m["dice"], m["jaccard"], m["precision"], m["recall"]) == (0.0, 0.0, 0.0, 0.0)
        assert m["hd95"] == m["assd"] == m["avg_hausdorff"] == pytest.approx(diag)
        assert all(math.isfinite(v) for v in m.values())


def test_ssim_with_probability_map():
    target = disc(48, 48, 20)
    assert segmentation_metrics(target, target, prob=target.astype(float))["ssim"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert segmentation_metrics(target, target, prob=np.full((N, N), 0.5))["ssim"] < 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(1, 2, 3))


def test_classification_metrics_match_scikit_learn_and_torchmetrics():
    from sklearn import metrics as skm
    from torchmetrics.functional.classification import binary_auroc, multiclass_f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1)
    p1[:20] = np.round(p1[:20], 1)  # ties
    probs = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, probs)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    f1 = multiclass_f1_score(torch.from_numpy(pred), torch.from_numpy(y), num_classes=2, average=None)
    assert m["f1_normal"] == pytest.approx(float(f1[0])) and m["f1_pneumonia"] == pytest.approx(float(f1[1]))
    assert m["auroc"] == pytest.approx(
        float(binary_auroc(torch.from_numpy(p1), torch.from_numpy(y))), abs=1e-6
    )
    fpr, tpr, _ = roc_curve(y, p1)
    assert np.trapz(tpr, fpr) == pytest.approx(m["auroc"], abs=1e-9)
    assert confusion_matrix(y, pred).sum() == 200
    assert confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]).tolist() == [[1, 1], [1, 2]]
    assert math.isnan(classification_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]])["auroc"])
    # the ratios of the confusion counts are scikit-learn's, on the data and on resamples of it,
    # a class absent from some of them (zero_division=0)
    right_pneumonia = np.flatnonzero((y == 1) & (pred == 1))[:10]  # NORMAL neither present nor predicted
    for i in [np.arange(200), *rng.integers(0, 200, (30, 200)), np.flatnonzero(y == 1)[:15], right_pneumonia]:
        yi, pi = y[i], probs[i]
        m, pred_i = classification_metrics(yi, pi), pi.argmax(1)
        f1_normal, f1_pneumonia = skm.f1_score(yi, pred_i, labels=[0, 1], average=None, zero_division=0)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(yi, pred_i), abs=1e-15)
        assert m["f1_normal"] == pytest.approx(f1_normal, abs=1e-15)
        assert m["f1_pneumonia"] == pytest.approx(f1_pneumonia, abs=1e-15)
        assert (
            confusion_matrix(yi, pred_i).tolist() == skm.confusion_matrix(yi, pred_i, labels=[0, 1]).tolist()
        )
        if 0 < yi.sum() < yi.size:
            assert m["auroc"] == pytest.approx(skm.roc_auc_score(yi, pi[:, 1]), abs=1e-12)


def test_calibration_metrics_match_torchmetrics_scikit_learn_and_closed_forms():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss
    from torchmetrics.classification import BinaryCalibrationError

    rng = np.random.default_rng(4)
    p1 = rng.uniform(0, 1, 300)
    y = (rng.uniform(0, 1, 300) < p1**2).astype(int)  # over-confident in PNEUMONIA
    probs = np.stack([1 - p1, p1], 1)
    for i in [np.arange(300), *rng.integers(0, 300, (10, 300))]:
        m = calibration_metrics(y[i], probs[i])
        ece = BinaryCalibrationError(n_bins=15, norm="l1")(torch.from_numpy(p1[i]), torch.from_numpy(y[i]))
        assert m["ece"] == pytest.approx(float(ece), abs=1e-6)
        assert m["brier"] == pytest.approx(brier_score_loss(y[i], p1[i]), abs=1e-15)
    # the reliability diagram's bins: scikit-learn's, and their counts add up to the images
    r = reliability_curve(y, probs)
    fraction, mean = calibration_curve(y, p1, n_bins=15)
    assert r["fraction_positive"] == fraction.tolist() and r["mean_predicted"] == mean.tolist()
    assert sum(r["count"]) == 300 and len(r["count"]) == len(mean) == 15
    # closed forms: sensitivity and specificity of the labels given, ECE of a constant prediction
    y4, p4 = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.7, 0.8, 0.4, 0.9])
    m = calibration_metrics(y4, p4)  # labels: p > 0.5
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(2 / 3), 0.5)
    m = calibration_metrics(y4, p4, predicted=[0, 0, 1, 1, 1])
    assert (m["sensitivity"], m["specificity"]) == (1.0, 1.0)
    assert m["brier"] == pytest.approx(np.mean((p4 - y4) ** 2))
    assert calibration_metrics(y4, np.full(5, 0.6))["ece"] == pytest.approx(0.0)
    assert calibration_metrics(y4, np.full(5, 0.9))["ece"] == pytest.approx(0.3)
    assert math.isnan(calibration_metrics([1, 1], [0.2, 0.8])["specificity"])  # no NORMAL image
    with pytest.raises(ValueError, match="predicted labels"):
        calibration_metrics(y4, p4, predicted=[0, 1])


def test_calibration_intervals_are_seeded_and_share_the_classification_resamples():
    y = np.array([0, 1] * 40)
    p = np.clip(y * 0.3 + np.random.default_rng(2).uniform(0, 0.7, 80), 0, 1)
    ci = calibration_ci(y, p, n_boot=200, seed=5)
    assert list(ci) == list(CALIBRATION_KEYS) and ci == calibration_ci(y, p, n_boot=200, seed=5)
    m = calibration_metrics(y, p)
    for k in ("sensitivity", "specificity", "brier"):
        assert ci[k][0] <= m[k] <= ci[k][1] and ci[k][0] < ci[k][1]
    # the same resamples as classification_ci: at one label per image, the accuracy's interval
    # is the sensitivity's (all images PNEUMONIA)
    ones = np.ones(30, dtype=int)
    q = np.random.default_rng(3).uniform(0, 1, 30)
    assert calibration_ci(ones, q, n_boot=100, seed=1)["sensitivity"] == pytest.approx(
        classification_ci(ones, q, n_boot=100, seed=1)["accuracy"], abs=1e-15
    )


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    v = np.random.default_rng(1).normal(0.9, 0.05, 60)
    lo, hi = mean_ci(v, seed=3)
    assert (lo, hi) == mean_ci(v, seed=3) and (lo, hi) != mean_ci(v, seed=4)
    assert lo < v.mean() < hi and hi - lo < 0.05
    y = np.array([0, 1] * 30)
    p = np.clip(y * 0.3 + np.random.default_rng(2).uniform(0, 0.7, 60), 0, 1)
    acc = float(((p > 0.5) == y).mean())
    ci = classification_ci(y, p, n_boot=300, seed=0)
    assert ci == classification_ci(y, p, n_boot=300, seed=0) and ci != classification_ci(
        y, p, n_boot=300, seed=1
    )
    lo, hi = ci["accuracy"]
    assert lo <= acc <= hi and lo < hi
    assert all(lo <= classification_metrics(y, p)[k] <= hi for k, (lo, hi) in ci.items())
    with pytest.raises(ValueError, match="no images"):
        mean_ci([])


# ------------------------------------------------------------------------------------------------
# The recorded values of the earlier implementation
# ------------------------------------------------------------------------------------------------

REFERENCE = json.loads(Path(__file__).with_name("metrics_reference.json").read_text())
# The bootstrap draws the same resamples as before (scipy takes them from the same seeded
# generator, in the same order), so its interval ends agree as closely as the point estimates.
TOL = 1e-12


def _close(actual, expected, tol=TOL):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=0, atol=tol
    )


@pytest.mark.parametrize("name", sorted(REFERENCE["classification"]))
def test_classification_matches_the_recorded_values(name):
    ref = REFERENCE["classification"][name]
    y, probs = np.array(ref["labels"]), np.array(ref["probs"])
    score = probs[:, 1] if probs.ndim == 2 else probs
    pred = probs.argmax(1) if probs.ndim == 2 else (probs > 0.5).astype(int)
    m = classification_metrics(y, probs)
    assert list(m) == list(CLS_KEYS)
    _close([m[k] for k in CLS_KEYS], [ref["metrics"][k] for k in CLS_KEYS])
    assert confusion_matrix(y, pred).tolist() == ref["confusion"]
    for got, key in zip(roc_curve(y, score), ("fpr", "tpr", "thresholds")):
        _close(got, ref["roc"][key])
    ci = classification_ci(y, probs, **REFERENCE["classification_bootstrap"])
    for k in CLS_KEYS:
        _close(ci[k], ref["ci"][k])


def test_classification_intervals_at_the_default_resamples_match_the_recorded_values():
    ref = REFERENCE["classification_ci_1000_resamples_seed_3"]
    case = REFERENCE["classification"][ref["case"]]
    ci = classification_ci(np.array(case["labels"]), np.array(case["probs"]), n_boot=1000, seed=3)
    for k in CLS_KEYS:
        _close(ci[k], ref["ci"][k])


def test_an_auroc_undefined_on_some_resamples_leaves_them_out():
    # 2 NORMAL images of 20: about one resample in eight draws no NORMAL image
    case = REFERENCE["classification"]["2 normal of 20"]
    lo, hi = classification_ci(np.array(case["labels"]), np.array(case["probs"]), n_boot=300)["auroc"]
    assert math.isfinite(lo) and math.isfinite(hi)
    case = REFERENCE["classification"]["one class (normal)"]
    ci = classification_ci(np.array(case["labels"]), np.array(case["probs"]), n_boot=300)
    assert all(math.isnan(v) for v in ci["auroc"]) and all(math.isfinite(v) for v in ci["accuracy"])


@pytest.mark.parametrize("name", sorted(REFERENCE["mean_ci"]))
def test_mean_intervals_match_the_recorded_values(name):
    ref = REFERENCE["mean_ci"][name]
    for s in (0, 3):
        for level in (0.95, 0.9):
            _close(
                mean_ci(ref["values"], n_boot=1000, seed=s, level=level),
                ref["ci"][f"seed {s}, level {level}"],
            )


def test_segmentation_matches_the_recorded_values():
    irregular = [
        np.array([[c == "1" for c in row] for row in REFERENCE["irregular_masks"][k]])
        for k in ("pred", "target")
    ]
    pairs = {
        "concentric discs": (disc(48, 48, 20), disc(48, 48, 25)),
        "shifted discs": (disc(45, 50, 22), disc(50, 44, 20)),
        "squares": (square(20, 20, 40), square(26, 23, 36)),
        "disc in square": (disc(48, 48, 18), square(28, 28, 40)),
        "identical": (disc(48, 48, 20), disc(48, 48, 20)),
        "disjoint": (square(5, 5, 10), square(70, 70, 12)),
        "both empty": (np.zeros((N, N), bool), np.zeros((N, N), bool)),
        "empty prediction": (np.zeros((N, N), bool), disc(48, 48, 20)),
        "empty target": (disc(48, 48, 20), np.zeros((N, N), bool)),
        "irregular": tuple(irregular),
    }
    for name, (pred, target) in pairs.items():
        prob = ndimage.gaussian_filter(pred.astype(np.float64), 1.5)
        for spacing in (None, 0.7, (0.5, 1.25)):
            ref = REFERENCE["segmentation"][f"{name}, spacing {spacing}"]
            m = segmentation_metrics(pred, target, spacing=spacing, prob=prob)
            assert sorted(m) == sorted(ref)
            _close([m[k] for k in ref], list(ref.values()))
