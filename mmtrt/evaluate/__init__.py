"""`mmtrt evaluate`: metrics (mmtrt.metrics), figures and an HTML report for checkpoints and/or a
served Triton model, in-domain and cross-domain.

- :class:`CheckpointPredictor`, :class:`TritonPredictor`: the same images in, the same arrays out;
- :func:`evaluate`: every model on every domain's test split -> metrics.json, summary.csv,
  per_image.csv, figures/*.png, report.html.
"""

from .predictors import CheckpointPredictor, EvaluateError, TritonPredictor
from .run import Domain, evaluate

__all__ = ["CheckpointPredictor", "Domain", "EvaluateError", "TritonPredictor", "evaluate"]
