"""Serving MultiMix with the real Triton Inference Server.

- :func:`build_repository` turns an export folder (ONNX files + manifest.json) into a Triton
  model repository from the templates in ``model_repository/``;
- :func:`validate_config` checks a ``config.pbtxt`` offline;
- :class:`TritonServer` runs ``tritonserver`` (the one on PATH, or the binary bundled in
  nvidia-pytriton, see :func:`find_tritonserver`).
"""

from .repository import (FLAVOURS, MODELS, build_repository, parse_config, render_config,
                         template_dir, validate_config)
from .server import ServingError, TritonServer, bundled_tritonserver_root, find_tritonserver

__all__ = [
    "FLAVOURS", "MODELS", "ServingError", "TritonServer", "build_repository",
    "bundled_tritonserver_root", "find_tritonserver", "parse_config", "render_config",
    "template_dir", "validate_config",
]
