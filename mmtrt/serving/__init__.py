"""Serving MultiMix with the real Triton Inference Server.

One job per module:

- :mod:`.errors`      ServingError and InferError (a client imports nothing else of the server side);
- :mod:`.binary`      finding ``tritonserver`` and preparing the bundled python backend;
- :mod:`.processes`   the server's process group, its python-backend stubs, their /dev/shm files;
- :mod:`.isolation`   a server's private /dev/shm (its own mount namespace);
- :mod:`.admin`       the admin key: Triton's admin APIs restricted to it, the header for mmtrt's
  tools, keys redacted from command lines;
- :mod:`.logs`        reading a tritonserver log (error lines, ports it could not bind);
- :mod:`.server`      :class:`TritonServer`, the server's lifecycle (start, ready, restart, stop);
- :mod:`.supervisor`  :class:`Supervisor`, the watchdog of ``mmtrt serve`` (restarts a crashed
  server or one whose stub died, within a :class:`RestartPolicy`);
- :mod:`.replicas`    ``mmtrt serve``: N >= 1 servers of one repository (:class:`ServeSettings`),
  each under its supervisor, until a signal;
- :mod:`.config`      config.pbtxt parse / validate / render;
- :mod:`.checks`      offline checks of a whole repository (ensemble wiring, ONNX agreement, the
  image decoder of ``file_decoder``, engines);
- :mod:`.repository`  building a repository from an export folder (its manifest is the spec);
- :mod:`.infer`       the client of ``mmtrt infer`` (decoded images, or the files to ``multimix_image``);
- :mod:`.commands`    the click commands ``mmtrt repo``, ``mmtrt serve`` and ``mmtrt infer``.
"""

import importlib

# name -> the module that defines it. Imported on first use (PEP 562), so that importing the
# client (mmtrt.serving.infer) loads nothing of the server side.
_EXPORTS = {
    "AdminKey": "admin",
    "admin_headers": "admin",
    "bundled_tritonserver_root": "binary",
    "find_tritonserver": "binary",
    "missing_plan_files": "checks",
    "onnx_signature": "checks",
    "validate_repository": "checks",
    "ImageLimits": "config",
    "parse_config": "config",
    "render_config": "config",
    "validate_config": "config",
    "InferError": "errors",
    "ServingError": "errors",
    "DEFAULT_MODELS": "repository",
    "IMAGE_MODEL": "repository",
    "default_models": "repository",
    "FLAVOUR_MODELS": "repository",
    "FLAVOURS": "repository",
    "MODELS": "repository",
    "build_repository": "repository",
    "template_dir": "repository",
    "TritonServer": "server",
    "restricted_headers": "server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
