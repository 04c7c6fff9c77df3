"""What turns a model's class probabilities into the probability and the label it answers: a
temperature and an operating point, fitted on validation images by `mmtrt calibrate` and stored
in the export's manifest (``calibration``).

    P(PNEUMONIA) = sigmoid(m / T)    m = log p(PNEUMONIA) - log p(NORMAL), the logit margin the
                                     graph's softmax probabilities carry (temperature scaling,
                                     Guo et al., ICML 2017: softmax(logits / T) of two classes)
    label        = PNEUMONIA if P(PNEUMONIA) > threshold, else NORMAL

An export without a ``calibration`` record answers as it always has: T = 1 (the graph's softmax,
unchanged) and threshold 0.5, which is the argmax of the probabilities (a tie is NORMAL, as
``numpy.argmax``). The served models (model_repository/cpu/model.py, through the copy of this
module in ``mmtrt_backend``) and the in-process predictors apply the same :class:`Calibration`
to the same probabilities, so they answer the same label.

The saliency is not affected: it is the gradient of the predicted-class logit (argmax, as the
model was trained), computed inside the graph, and it feeds the decoder.

Fitting (:func:`fit_temperature`, :func:`choose_threshold`) needs scipy; applying needs numpy only
(the served models import this module without the rest of mmtrt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MANIFEST_KEY = "calibration"
#: the ``--operating-point`` rules: the default keeps the argmax label
OPERATING_POINTS = ("argmax", "youden", "sensitivity=X", "specificity=X")
TEMPERATURE_RANGE = (0.05, 20.0)  # what the fit searches (log-uniform); a T outside is refused


class CalibrationError(ValueError):
    """A calibration record, an operating point or validation data that cannot be used."""


def margins(probs) -> np.ndarray:
    """log p(PNEUMONIA) - log p(NORMAL) of each row of ``probs`` [N, 2], in float64: the logit
    margin up to the float32 rounding of the probabilities (+-inf where one underflowed to 0)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise CalibrationError(f"probabilities must be [N, 2] (NORMAL, PNEUMONIA), got {p.shape}")
    with np.errstate(divide="ignore"):
        return np.log(p[:, 1]) - np.log(p[:, 0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """A temperature and a threshold on the temperature-scaled P(PNEUMONIA)."""

    temperature: float = 1.0
    threshold: float = 0.5

    def __post_init__(self):
        t, thr = self.temperature, self.threshold
        if not (isinstance(t, (int, float)) and TEMPERATURE_RANGE[0] <= t <= TEMPERATURE_RANGE[1]):
            raise CalibrationError(f"temperature {t!r} is not a number in {list(TEMPERATURE_RANGE)}")
        if not (isinstance(thr, (int, float)) and 0.0 < thr < 1.0):
            raise CalibrationError(f"threshold {thr!r} is not a probability strictly between 0 and 1")

    def probabilities(self, probs) -> np.ndarray:
        """The calibrated probabilities [N, 2] (float32) of the graph's ``probs`` [N, 2]. At
        T = 1 they are the graph's own (softmax(logits / 1)): recomputing them would only add
        rounding."""
        probs = np.asarray(probs)
        if self.temperature == 1.0:
            return probs.astype(np.float32, copy=False)
        z = margins(probs) / self.temperature
        return np.stack([_sigmoid(-z), _sigmoid(z)], axis=1).astype(np.float32)

    def labels(self, probs) -> np.ndarray:
        """The label of each row of the graph's ``probs`` [N, 2]: 1 (PNEUMONIA) where the
        calibrated P(PNEUMONIA) is above the threshold, else 0; int64 [N]. Compared as logits
        (m / T > logit(threshold)): at T = 1 and 0.5 that is exactly p1 > p0, the argmax."""
        return (margins(probs) / self.temperature > _logit(self.threshold)).astype(np.int64)

    @classmethod
    def from_manifest(cls, manifest: dict) -> Calibration:
        """The export manifest's calibration; the default (T = 1, threshold 0.5) without one."""
        record = manifest.get(MANIFEST_KEY)
        if record is None:
            return cls()
        if not isinstance(record, dict):
            raise CalibrationError(f"the manifest's {MANIFEST_KEY!r} is not a record")
        try:
            return cls(float(record["temperature"]), float(record["threshold"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"the manifest's {MANIFEST_KEY!r} record is unusable: {e!r}") from None


# --------------------------------------------------------------------------- fitting


def nll(labels, margin, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under P(PNEUMONIA) = sigmoid(margin / T)."""
    from scipy.special import log_expit

    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(margin, dtype=np.float64) / temperature
    return float(-np.mean(y * log_expit(z) + (1.0 - y) * log_expit(-z)))


def fit_temperature(labels, probs) -> float:
    """The temperature that minimises the validation images' NLL (scipy's bounded scalar
    minimiser, over log T in :data:`TEMPERATURE_RANGE`). Needs both classes; images whose
    probability saturated to 0 or 1 (infinite margin) carry no information on T and are left out."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels).reshape(-1)
    m = margins(probs)
    if y.shape != m.shape:
        raise CalibrationError(f"{y.size} labels but {m.size} predictions")
    keep = np.isfinite(m)
    y, m = y[keep], m[keep]
    if not (np.any(y == 1) and np.any(y == 0)):
        raise CalibrationError("fitting a temperature needs NORMAL and PNEUMONIA images")
    lo, hi = (math.log(b) for b in TEMPERATURE_RANGE)
    res = minimize_scalar(lambda s: nll(y, m, math.exp(s)), bounds=(lo, hi), method="bounded")
    return float(math.exp(res.x))


def parse_operating_point(text: str) -> tuple[str, float | None]:
    """("argmax" | "youden" | "sensitivity" | "specificity", target or None) of an
    ``--operating-point``; CalibrationError naming the accepted forms otherwise."""
    rule, _, value = str(text).strip().lower().partition("=")
    if rule in ("argmax", "youden") and not value:
        return rule, None
    if rule in ("sensitivity", "specificity") and value:
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0.0 < target <= 1.0:
            return rule, target
    raise CalibrationError(
        f"operating point {text!r}: choose argmax, youden, sensitivity=X or specificity=X with X in (0, 1]"
    )


def choose_threshold(labels, scores, operating_point: str) -> float:
    """The threshold on ``scores`` (calibrated P(PNEUMONIA)) that ``operating_point`` picks on
    these validation images (label PNEUMONIA where score > threshold). Candidates: the midpoints
    between consecutive distinct scores (a threshold between images, not on one), and a point
    below the lowest and one above the highest.

    - ``argmax``: 0.5, whatever the data (today's label);
    - ``youden``: the largest sensitivity + specificity - 1 (of equal ones, the lowest threshold);
    - ``sensitivity=X``: the highest threshold whose sensitivity is >= X (the most specific);
    - ``specificity=X``: the lowest threshold whose specificity is >= X (the most sensitive).
    """
    rule, target = parse_operating_point(operating_point)
    if rule == "argmax":
        return 0.5
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (np.any(y == 1) and np.any(y == 0)):
        raise CalibrationError("choosing an operating point needs NORMAL and PNEUMONIA images")
    u = np.unique(s)
    lowest, highest = max(u[0] / 2, 1e-9), min((1 + u[-1]) / 2, 1 - 1e-9)
    candidates = np.concatenate([[lowest], (u[:-1] + u[1:]) / 2, [highest]])
    pred = s[None, :] > candidates[:, None]
    sens = (pred & (y == 1)).sum(1) / (y == 1).sum()
    spec = (~pred & (y == 0)).sum(1) / (y == 0).sum()
    if rule == "youden":
        return float(candidates[int(np.argmax(sens + spec))])
    ok = (sens if rule == "sensitivity" else spec) >= target - 1e-12
    if not ok.any():
        raise CalibrationError(f"no threshold reaches {operating_point} on these images")
    index = np.flatnonzero(ok)
    return float(candidates[index[-1] if rule == "sensitivity" else index[0]])
