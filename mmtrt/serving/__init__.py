"""Serving MultiMix with the real Triton Inference Server.

- :func:`build_repository` turns an export folder (ONNX files + manifest.json, and TensorRT
  engines for the gpu flavour) into a Triton model repository from the templates in
  ``model_repository/``; :func:`validate_config` and :func:`validate_repository` check one
  config or a whole repository offline;
- :class:`TritonServer` runs ``tritonserver`` (the one on PATH, or the binary bundled in
  nvidia-pytriton, see :func:`find_tritonserver`);
- ``mmtrt repo``, ``mmtrt serve`` and ``mmtrt infer`` (:mod:`mmtrt.serving.commands`) are the
  command-line faces of the above and of :mod:`mmtrt.serving.infer`, the client.
"""

from .repository import (
    DEFAULT_MODELS,
    FLAVOUR_MODELS,
    FLAVOURS,
    MODELS,
    build_repository,
    missing_plan_files,
    onnx_signature,
    parse_config,
    render_config,
    template_dir,
    validate_config,
    validate_repository,
)
from .server import (
    ServingError,
    TritonServer,
    bundled_tritonserver_root,
    find_tritonserver,
    restricted_headers,
)

__all__ = [
    "DEFAULT_MODELS",
    "FLAVOURS",
    "FLAVOUR_MODELS",
    "MODELS",
    "ServingError",
    "TritonServer",
    "build_repository",
    "bundled_tritonserver_root",
    "find_tritonserver",
    "missing_plan_files",
    "onnx_signature",
    "parse_config",
    "render_config",
    "restricted_headers",
    "template_dir",
    "validate_config",
    "validate_repository",
]
