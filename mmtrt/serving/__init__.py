"""Serving MultiMix with the real Triton Inference Server.

One job per module:

- :mod:`.errors`      ServingError and InferError (a client imports nothing else of the server side);
- :mod:`.binary`      finding ``tritonserver`` and preparing the bundled python backend;
- :mod:`.processes`   the server's process group, its python-backend stubs, their /dev/shm files;
- :mod:`.logs`        reading a tritonserver log (error lines, ports it could not bind);
- :mod:`.server`      :class:`TritonServer`, the server's lifecycle (start, ready, restart, stop);
- :mod:`.supervisor`  :class:`Supervisor`, the watchdog of ``mmtrt serve`` (restarts a crashed
  server or one whose stub died);
- :mod:`.config`      config.pbtxt parse / validate / render;
- :mod:`.checks`      offline checks of a whole repository (ensemble wiring, ONNX agreement, engines);
- :mod:`.repository`  building a repository from an export folder (its manifest is the spec);
- :mod:`.infer`       the client of ``mmtrt infer``;
- :mod:`.commands`    the click commands ``mmtrt repo``, ``mmtrt serve`` and ``mmtrt infer``.
"""

from .binary import bundled_tritonserver_root, find_tritonserver
from .checks import missing_plan_files, onnx_signature, validate_repository
from .config import parse_config, render_config, validate_config
from .errors import InferError, ServingError
from .repository import DEFAULT_MODELS, FLAVOUR_MODELS, FLAVOURS, MODELS, build_repository, template_dir
from .server import TritonServer, restricted_headers

__all__ = [
    "DEFAULT_MODELS",
    "FLAVOURS",
    "FLAVOUR_MODELS",
    "MODELS",
    "InferError",
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
