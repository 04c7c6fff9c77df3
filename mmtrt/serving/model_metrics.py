"""The Prometheus metrics the cpu flavour's python models publish through the python backend's
metrics API (``pb_utils.MetricFamily``), on Triton's metrics port beside its own ``nv_*``
metrics: what the model answers, not only that it answers. Every series carries the labels
``model`` and ``version``.

- ``mmtrt_requests_total{outcome}``: requests answered, ``invalid`` (the request's own fault:
  HTTP 400 / gRPC INVALID_ARGUMENT) or ``failed`` (the model's: HTTP 500);
- ``mmtrt_images_total{outcome}``: images of answered requests, ``answered`` or ``refused`` by
  the input gate (the DICOM header's or the image gate's);
- ``mmtrt_predictions_total{label}``: the labels answered (NORMAL / PNEUMONIA, at the export's
  operating point), for the models that answer one;
- ``mmtrt_pneumonia_probability``: histogram of the answered P(PNEUMONIA) (calibrated);
- ``mmtrt_lung_mask_fraction``: histogram of the fraction of each answered image inside the lung
  mask (mask > 0.5), for the models that answer a mask;
- ``mmtrt_ood_score``: histogram of the image gate's score of every image the graph ran on
  (mmtrt/ood.py; about 1 for a typical training image; above the export's threshold: refused);
- ``mmtrt_decode_seconds``: histogram of the time to decode one file (``file_decoder``);
- ``mmtrt_baseline_pneumonia_probability`` / ``mmtrt_baseline_pneumonia_rate``: gauges of the
  mean P(PNEUMONIA) and the PNEUMONIA rate on the validation images the export was calibrated on
  (its manifest), the baseline of the drift alerts in deploy/monitoring/; absent without one.

It runs inside Triton's python-backend stub only (copied beside the served models with the other
modules of :data:`mmtrt.serving.checks.BACKEND_MODULES`); mmtrt itself never imports it. Several
instances of one model share each series (Triton hands them the same metric for the same name
and labels).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

PROBABILITY_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
MASK_FRACTION_BUCKETS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0]
OOD_SCORE_BUCKETS = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0]
DECODE_SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
CLASSES = ("NORMAL", "PNEUMONIA")
MASK_THRESHOLD = 0.5


def _family(name, description, kind):
    return pb_utils.MetricFamily(name=name, description=description, kind=kind)


class ModelMetrics:
    """The metrics of one served model (``model_name``, ``version``)."""

    def __init__(self, model_name, version, baseline=None):
        labels = {"model": model_name, "version": str(version)}
        counter, gauge, histogram = (
            pb_utils.MetricFamily.COUNTER,
            pb_utils.MetricFamily.GAUGE,
            pb_utils.MetricFamily.HISTOGRAM,
        )
        # the families are kept: a Metric must not outlive its MetricFamily
        self._requests = _family(
            "mmtrt_requests_total", "Requests by outcome: answered, invalid, failed", counter
        )
        self._images = _family(
            "mmtrt_images_total", "Images of answered requests: answered, refused by the input gate", counter
        )
        self._predictions = _family(
            "mmtrt_predictions_total", "Labels answered, at the export's operating point", counter
        )
        self._probability = _family(
            "mmtrt_pneumonia_probability", "Answered P(PNEUMONIA), calibrated", histogram
        )
        self._mask = _family(
            "mmtrt_lung_mask_fraction", "Fraction of each answered image inside the lung mask", histogram
        )
        self._ood = _family("mmtrt_ood_score", "The image gate's score of each image run", histogram)
        self._decode = _family("mmtrt_decode_seconds", "Seconds to decode one image file", histogram)
        self._baseline_probability = _family(
            "mmtrt_baseline_pneumonia_probability",
            "Mean P(PNEUMONIA) on the export's validation images",
            gauge,
        )
        self._baseline_rate = _family(
            "mmtrt_baseline_pneumonia_rate", "PNEUMONIA rate on the export's validation images", gauge
        )
        self.requests = {
            o: self._requests.Metric(labels={**labels, "outcome": o})
            for o in ("answered", "invalid", "failed")
        }
        self.images = {
            o: self._images.Metric(labels={**labels, "outcome": o}) for o in ("answered", "refused")
        }
        self.predictions = [self._predictions.Metric(labels={**labels, "label": c}) for c in CLASSES]
        self.probability = self._probability.Metric(labels=labels, buckets=PROBABILITY_BUCKETS)
        self.mask_fraction = self._mask.Metric(labels=labels, buckets=MASK_FRACTION_BUCKETS)
        self.ood_score = self._ood.Metric(labels=labels, buckets=OOD_SCORE_BUCKETS)
        self.decode_seconds = self._decode.Metric(labels=labels, buckets=DECODE_SECONDS_BUCKETS)
        if baseline:
            self._baseline_probability.Metric(labels=labels).set(
                float(baseline["mean_pneumonia_probability"])
            )
            self._baseline_rate.Metric(labels=labels).set(float(baseline["pneumonia_rate"]))

    def request(self, outcome):
        self.requests[outcome].increment(1)

    def images_answered(self, accepted, probs=None, labels=None, mask=None, ood_scores=None):
        """One answered request: ``accepted`` bool [n] (the gates' verdicts), the outputs of its
        accepted images: ``probs`` [k, 2], ``labels`` [k], ``mask`` [k, 1, H, W], and the image
        gate's scores of the images it ran on."""
        self.request("answered")
        n_accepted = int(np.count_nonzero(accepted))
        if n_accepted:
            self.images["answered"].increment(n_accepted)
        if n_accepted < len(accepted):
            self.images["refused"].increment(len(accepted) - n_accepted)
        if probs is not None:
            for p in np.asarray(probs)[:, 1]:
                self.probability.observe(float(p))
        if labels is not None:
            for label in np.asarray(labels).reshape(-1):
                self.predictions[int(label)].increment(1)
        if ood_scores is not None:
            for score in np.asarray(ood_scores).reshape(-1):
                self.ood_score.observe(float(score))
        if mask is not None and len(mask):
            m = np.asarray(mask)
            for fraction in (m.reshape(len(m), -1) > MASK_THRESHOLD).mean(axis=1):
                self.mask_fraction.observe(float(fraction))
