"""The one implementation of the metrics mmtrt reports: training's validation
(train/metrics.py) and `mmtrt evaluate` both call these functions.

Segmentation, per image (:func:`segmentation_metrics`), on binary masks (prediction = foreground
probability > 0.5):

    dice        2|P∩T| / (|P| + |T|)
    jaccard     |P∩T| / |P∪T|
    precision   |P∩T| / |P|                recall   |P∩T| / |T|
    hd95        95th-percentile Hausdorff distance between the masks' *surfaces* (border pixels),
                MONAI ``compute_hausdorff_distance(percentile=95)``: the larger of the two directed
                95th percentiles
    assd        average symmetric surface distance, MONAI
                ``compute_average_surface_distance(symmetric=True)``: the mean over the border
                pixels of both masks of the distance to the other mask's border
    avg_hausdorff  the *region-based* "average Hausdorff distance" training used to report:
                max(mean_{p in P} d(p, T), mean_{t in T} d(t, P)) over every foreground pixel
                (scipy's distance transform). Kept for comparison with earlier reports.
    ssim        (only when the probability map is given) SSIM between the foreground-probability
                map and the mask, data range 1, torchmetrics' Gaussian 11x11 window, sigma 1.5

Distances are in millimetres when ``spacing`` (mm per pixel, one value or (row, column)) is
given, else in pixels.

Which one is the papers' "HD"? The MultiMix papers report a Hausdorff figure without saying how
it is computed. The region-based average over every foreground pixel is much smaller than the
surface distances: on 10 disc pairs it came out 5-15x below MONAI/medpy's ASSD, and on the
synthetic lungs here about 10x below (interior pixels, most of them far from any error, pull
the mean towards 0). Sub-pixel figures such as the ones reported for 256x256 lungs are only
reachable by that region-based form, so it is most likely what the papers' "HD" is; the medical
imaging literature's HD95 and ASSD (MONAI, medpy) are the surface-based ones, and are what
`mmtrt evaluate` leads with.

Empty masks (no foreground in the prediction P, the target T, or both) are defined, not NaN:

    both empty      dice = jaccard = precision = recall = 1, hd95 = assd = avg_hausdorff = 0
                    (nothing to find and nothing predicted: perfect agreement; MONAI's
                    ``compute_dice(ignore_empty=False)`` gives 1 too)
    one empty       dice = jaccard = 0; precision = 0 when P is empty (zero_division = 0, as
                    sklearn and torchmetrics), recall = 0 when T is empty; the other one of the
                    two is 0 as well (its numerator |P∩T| is 0); hd95 = assd = avg_hausdorff =
                    the image diagonal (the largest distance possible on the grid; MONAI gives
                    inf or NaN there, which would poison every mean)

The overlap ratios are computed here, in float64, from the pixel counts: MONAI's and
torchmetrics' versions are float32 (they differ from these in the 7th digit) and give NaN, not
the values above, for precision and recall of empty masks.

Classification (:func:`classification_metrics`), class 0 = NORMAL, 1 = PNEUMONIA, prediction =
argmax of the probabilities: accuracy, f1_normal, f1_pneumonia (F1 of each class as the positive
one, 0 when a class is neither present nor predicted), auroc (ROC AUC of P(PNEUMONIA), ties
counted half: the trapezoidal area under the ROC curve, equal to the Mann-Whitney statistic;
NaN when the labels hold a single class). The ROC curve and its area are scikit-learn's
(``roc_curve``, ``auc``); accuracy and F1 are ratios of the confusion counts, as scikit-learn's
``accuracy_score`` and ``f1_score`` (``zero_division=0``) define them.

Calibration and the operating point (:func:`calibration_metrics`), of the predicted labels given
(by default the argmax, as above) and of P(PNEUMONIA):

    sensitivity   TP / (TP + FN)  (NaN without PNEUMONIA images)
    specificity   TN / (TN + FP)  (NaN without NORMAL images)
    ece           expected calibration error of P(PNEUMONIA): torchmetrics'
                  ``binary_calibration_error`` (L1, 15 equal-width bins): the bins' |fraction of
                  PNEUMONIA - mean P(PNEUMONIA)|, weighted by the share of images in each bin
    brier         mean (P(PNEUMONIA) - label)^2, what scikit-learn's ``brier_score_loss``
                  computes (the tests check they agree)

:func:`reliability_curve` gives the reliability diagram's points over the same bins (scikit-learn's
``calibration_curve``).

Confidence intervals (:func:`classification_ci`, :func:`calibration_ci`, :func:`mean_ci`): scipy's
percentile bootstrap (``scipy.stats.bootstrap``) over images, 95 % by default, seeded (the same
data and seed give the same interval; the same number of images, resamples and seed draw the same
resamples, so the classification and calibration intervals come from one set of resamples).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "SEG_KEYS",
    "SEG_LOWER_IS_BETTER",
    "CLS_KEYS",
    "segmentation_metrics",
    "average_hausdorff",
    "surface_distances",
    "classification_metrics",
    "confusion_matrix",
    "roc_curve",
    "auroc",
    "classification_ci",
    "CALIBRATION_KEYS",
    "ECE_BINS",
    "calibration_metrics",
    "calibration_ci",
    "reliability_curve",
    "mean_ci",
]

SEG_KEYS = ("dice", "jaccard", "precision", "recall", "hd95", "assd", "avg_hausdorff")
SEG_LOWER_IS_BETTER = ("hd95", "assd", "avg_hausdorff")
CLS_KEYS = ("accuracy", "f1_normal", "f1_pneumonia", "auroc")
CALIBRATION_KEYS = ("sensitivity", "specificity", "ece", "brier")
ECE_BINS = 15  # torchmetrics' default


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing {spacing!r} must have one value per image axis ({ndim})")
    return sp


def _diagonal(shape: Sequence[int], sp: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def _as_mask(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {np.shape(a)}")
    return a.astype(bool)


def average_hausdorff(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """Region-based symmetric average Hausdorff distance (pixels, or mm with ``spacing``)
    between two boolean masks [H, W]: max of the two directed means over all foreground pixels.
    Empty masks: see the module docstring."""
    pred, target = _as_mask(pred, "pred"), _as_mask(target, "target")
    sp = _spacing(spacing, 2)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return _diagonal(pred.shape, sp)
    d_to_target = ndimage.distance_transform_edt(~target, sampling=sp)
    d_to_pred = ndimage.distance_transform_edt(~pred, sampling=sp)
    return float(max(d_to_target[pred].mean(), d_to_pred[target].mean()))


def _monai_metrics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    return compute_hausdorff_distance, compute_average_surface_distance


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing=None) -> dict[str, float]:
    """``hd95`` and ``assd`` between two non-empty boolean masks, by MONAI's metric functions."""
    import torch

    hd_fn, asd_fn = _monai_metrics()
    sp = list(_spacing(spacing, 2))
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = hd_fn(p, t, include_background=True, percentile=95, spacing=sp)
        asd = asd_fn(p, t, include_background=True, symmetric=True, spacing=sp)
    return {"hd95": float(hd.reshape(-1)[0]), "assd": float(asd.reshape(-1)[0])}


def _ssim(prob: np.ndarray, target: np.ndarray) -> float:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    p = torch.as_tensor(np.asarray(prob, dtype=np.float32)).reshape(1, 1, *target.shape)
    t = torch.as_tensor(target.astype(np.float32)).reshape(1, 1, *target.shape)
    return float(ssim(p, t, data_range=1.0))


def segmentation_metrics(pred, target, spacing=None, prob=None) -> dict[str, float]:
    """Metrics of one predicted mask against its target (both [H, W], anything truthy is
    foreground). ``spacing``: mm per pixel (a number, or (row, column)); None = pixels.
    ``prob``: the foreground-probability map, for ``ssim``. See the module docstring for the
    definitions and the empty-mask cases."""
    pred, target = _as_mask(pred, "pred"), _as_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    sp = _spacing(spacing, 2)
    n_p, n_t = int(pred.sum()), int(target.sum())
    inter = int(np.logical_and(pred, target).sum())
    union = n_p + n_t - inter
    out: dict[str, float]
    if n_p == 0 and n_t == 0:
        out = dict.fromkeys(("dice", "jaccard", "precision", "recall"), 1.0)
        out.update(hd95=0.0, assd=0.0, avg_hausdorff=0.0)
    elif n_p == 0 or n_t == 0:
        diag = _diagonal(pred.shape, sp)
        out = dict.fromkeys(("dice", "jaccard", "precision", "recall"), 0.0)
        out.update(hd95=diag, assd=diag, avg_hausdorff=diag)
    else:
        out = {
            "dice": 2.0 * inter / (n_p + n_t),
            "jaccard": inter / union,
            "precision": inter / n_p,
            "recall": inter / n_t,
            **surface_distances(pred, target, sp),
            "avg_hausdorff": average_hausdorff(pred, target, sp),
        }
    if prob is not None:
        out["ssim"] = _ssim(prob, target)
    return out


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------


def _labels_scores(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int [N], P(PNEUMONIA) [N], predicted class [N]) from probs [N, 2] or [N]."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError(f"probs must be [N, 2] or [N], got {p.shape}")
        pred = np.argmax(p, axis=1)  # the first maximum: a tie is NORMAL, as torch.argmax
        score = p[:, 1]
    else:
        score = p.reshape(-1)
        pred = (score > 0.5).astype(np.int64)
    if score.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {score.shape[0]} predictions")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return y, score, pred


def _confusion_counts(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """[[TN, FP], [FN, TP]] of each row of ``y``, ``pred`` [R, N]: [2, 2, R]."""
    return np.array([[np.count_nonzero((y == t) & (pred == p), axis=-1) for p in (0, 1)] for t in (0, 1)])


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN), 0 where a class is neither present nor predicted."""
    d = 2 * tp + fp + fn
    return np.divide(2.0 * tp, d, out=np.zeros(d.shape), where=d > 0)


def _classification_rows(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of each row of ``y``, ``score``, ``pred`` [R, N]: the test set (R = 1), or
    every bootstrap resample at once. Accuracy and F1 are the ratios of the confusion counts that
    scikit-learn's accuracy_score and f1_score compute (the tests check they agree), taken here
    for all rows at once: those functions spend ~2 ms a call checking their inputs, which would
    make the bootstrap several times slower."""
    (tn, fp), (fn, tp) = _confusion_counts(y, pred)
    return {
        "accuracy": (tp + tn) / y.shape[-1],
        "f1_normal": _f1(tn, fn, fp),  # NORMAL as the positive class
        "f1_pneumonia": _f1(tp, fp, fn),
        "auroc": np.array([auroc(y_r, s_r) for y_r, s_r in zip(y, score)]),
    }


def confusion_matrix(labels, pred) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows = true class (NORMAL, PNEUMONIA), columns = predicted."""
    return _confusion_counts(np.asarray(labels)[None], np.asarray(pred)[None])[..., 0]


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), from (0, 0) to (1, 1); one point
    per distinct score (predicted positive = score >= threshold), the first threshold infinite:
    scikit-learn's ``roc_curve``. The rate over a class the labels lack is 0 (scikit-learn: NaN,
    which a figure cannot draw)."""
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        fpr, tpr, thr = skm.roc_curve(np.asarray(labels).astype(bool), scores, drop_intermediate=False)
    return np.nan_to_num(fpr), np.nan_to_num(tpr), thr


def auroc(labels, scores) -> float:
    """ROC AUC of ``scores`` for the positive class 1: the area under :func:`roc_curve` (ties
    counted half), what scikit-learn's ``roc_auc_score`` computes, without its input checks
    (they would triple the bootstrap's time); NaN for one class."""
    from sklearn import metrics as skm

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")  # undefined (scikit-learn raises)
    fpr, tpr, _ = roc_curve(y, scores)
    return float(skm.auc(fpr, tpr))


def classification_metrics(labels, probs) -> dict[str, float]:
    """accuracy, f1_normal, f1_pneumonia, auroc from the labels and the class probabilities
    ([N, 2] softmax, or [N] = P(PNEUMONIA)). See the module docstring."""
    y, score, pred = _labels_scores(labels, probs)
    if y.size == 0:
        raise ValueError("no classification predictions")
    return {k: float(v[0]) for k, v in _classification_rows(y[None], score[None], pred[None]).items()}


# ------------------------------------------------------------------------------------------------
# Calibration and the operating point
# ------------------------------------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(den.shape, np.nan), where=den > 0)


def _calibration_rows(y: np.ndarray, score: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """The calibration metrics of each row of ``y``, ``score``, ``pred`` [R, N] (see
    :func:`_classification_rows`)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    (tn, fp), (fn, tp) = _confusion_counts(y, pred)
    ece = [
        binary_calibration_error(
            torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(t), n_bins=ECE_BINS, norm="l1",
            validate_args=False,
        ).item()
        for s, t in zip(score, y)
    ]  # fmt: skip
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ece": np.array(ece),
        "brier": np.mean((score - y) ** 2, axis=-1),
    }


def _with_predicted(labels, probs, predicted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, score, pred = _labels_scores(labels, probs)
    if predicted is not None:
        pred = np.asarray(predicted).astype(np.int64).reshape(-1)
        if pred.shape != y.shape:
            raise ValueError(f"{y.size} labels but {pred.size} predicted labels")
    return y, score, pred


def calibration_metrics(labels, probs, predicted=None) -> dict[str, float]:
    """sensitivity, specificity (of ``predicted``, the labels the model gave; default: the argmax
    of ``probs``), ece, brier (of P(PNEUMONIA)); ``probs`` [N, 2] or [N]. See the module docstring."""
    y, score, pred = _with_predicted(labels, probs, predicted)
    if y.size == 0:
        raise ValueError("no classification predictions")
    return {k: float(v[0]) for k, v in _calibration_rows(y[None], score[None], pred[None]).items()}


def reliability_curve(labels, probs, n_bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram of P(PNEUMONIA) over ``n_bins`` equal-width bins, its non-empty
    bins only: ``mean_predicted`` and ``fraction_positive`` (scikit-learn's ``calibration_curve``)
    and ``count`` (images in the bin)."""
    from sklearn.calibration import calibration_curve

    y, score, _ = _labels_scores(labels, probs)
    fraction, mean = calibration_curve(y, score, n_bins=n_bins, strategy="uniform")
    # the bins calibration_curve puts the scores in (it returns no counts)
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], score)
    count = np.bincount(bins, minlength=n_bins)
    return {
        "mean_predicted": mean.tolist(),
        "fraction_positive": fraction.tolist(),
        "count": count[count > 0].tolist(),
    }


# ------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# ------------------------------------------------------------------------------------------------


def _percentile_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int, seed: int, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """(low [K], high [K]) of ``statistic(i)`` [K, R] over R = ``n_boot`` resamples ``i``
    [R, n] of the image indices: scipy's percentile bootstrap of the indices, so that all that is
    known of an image is drawn together (as scipy's ``paired=True``). Resamples where a value is
    NaN are left out of its interval; all NaN gives (NaN, NaN)."""
    if n == 0:
        raise ValueError("no images to resample")
    if n == 1:  # scipy needs two images; one resamples only to itself
        v = statistic(np.zeros((1, 1), dtype=np.int64))[:, 0]
        return v, v.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # NaN resamples, below
        res = stats.bootstrap(
            (np.arange(n),),
            lambda i, axis=-1: statistic(i),
            n_resamples=n_boot,
            vectorized=True,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = (np.array(v, dtype=np.float64) for v in res.confidence_interval)
    # A value undefined on some resamples (an AUROC over one class) is NaN there, and so is
    # scipy's interval of it: take the percentiles over the resamples where it is defined.
    undefined = np.isnan(low)
    if undefined.any():
        a = (1.0 - level) / 2.0
        q = stats.quantile(
            res.bootstrap_distribution[undefined], np.array([a, 1.0 - a]), axis=-1, nan_policy="omit"
        )
        low[undefined], high[undefined] = q[:, 0], q[:, 1]
    return low, high


def classification_ci(
    labels, probs, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of :func:`classification_metrics`: the images (label and
    prediction together) resampled with replacement, ``n_boot`` times, from a generator seeded
    with ``seed``. Resamples where a metric is NaN (an AUROC over one class) are left out of its
    interval; all NaN gives (NaN, NaN)."""
    y, score, pred = _labels_scores(labels, probs)

    def rows(i: np.ndarray) -> np.ndarray:
        m = _classification_rows(y[i], score[i], pred[i])
        return np.stack([m[k] for k in CLS_KEYS])

    low, high = _percentile_bootstrap(rows, y.size, n_boot, seed, level)
    return {k: (float(lo), float(hi)) for k, lo, hi in zip(CLS_KEYS, low, high)}


def calibration_ci(
    labels, probs, predicted=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of :func:`calibration_metrics`, resampled as
    :func:`classification_ci` (the same resamples for the same images, ``n_boot`` and ``seed``)."""
    y, score, pred = _with_predicted(labels, probs, predicted)

    def rows(i: np.ndarray) -> np.ndarray:
        m = _calibration_rows(y[i], score[i], pred[i])
        return np.stack([m[k] for k in CALIBRATION_KEYS])

    low, high = _percentile_bootstrap(rows, y.size, n_boot, seed, level)
    return {k: (float(lo), float(hi)) for k, lo, hi in zip(CALIBRATION_KEYS, low, high)}


def mean_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values (resampled as above)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    low, high = _percentile_bootstrap(lambda i: v[i].mean(axis=-1)[None], v.size, n_boot, seed, level)
    return float(low[0]), float(high[0])
