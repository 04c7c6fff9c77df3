"""mmtrt: train, export, serve and benchmark MultiMix (joint chest X-ray classification + lung
segmentation with a saliency bridge)."""

__version__ = "0.1.0"
