"""Serving MultiMix with the real Triton Inference Server.

One job per module:

- :mod:`.errors`      ServingError, InferError, RequestError (a client imports nothing else of the
  server side);
- :mod:`.faults`      which failed requests are sent again (transient) and which never (invalid input);
- :mod:`.client`      talking to Triton, the one module that imports tritonclient: TritonClient (one
  server), Servers (N servers with fail-over, N = 1 included), the served model names and ports;
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
- :mod:`.settings`    what a repository and each served model are configured with
  (:class:`RepositorySettings`, the python models' parameters), one place per setting;
- :mod:`.config`      config.pbtxt: :class:`ServedModel` and its rendering, parse, validate;
- :mod:`.checks`      offline checks of a whole repository (ensemble wiring, ONNX agreement, the
  copy of mmtrt beside its python models, engines);
- :mod:`.cpu_runtime` the cpu flavour's runtime (``auto``: a fixed rule) and precision;
- :mod:`.repository`  building a repository from an export folder (its manifest is the spec);
- :mod:`.python_backend` what the python models share (runs inside Triton's stub only);
- :mod:`.infer`       ``mmtrt infer``'s run: files in, results out (decoded images, or the files to
  ``multimix_image``);
- :mod:`.commands`    the click commands ``mmtrt repo``, ``mmtrt serve`` and ``mmtrt infer``.
"""

import importlib

# name -> the module that defines it. Imported on first use (PEP 562), so that importing the
# client (mmtrt.serving.client, .infer) loads nothing of the server side.
_EXPORTS = {
    "AdminKey": "admin",
    "admin_headers": "admin",
    "Servers": "client",
    "TritonClient": "client",
    "connect": "client",
    "bundled_tritonserver_root": "binary",
    "find_tritonserver": "binary",
    "missing_plan_files": "checks",
    "onnx_signature": "checks",
    "validate_repository": "checks",
    "ServedModel": "config",
    "parse_config": "config",
    "render_config": "config",
    "validate_config": "config",
    "InferError": "errors",
    "RequestError": "errors",
    "ServingError": "errors",
    "DEFAULT_MODELS": "repository",
    "IMAGE_MODEL": "client",
    "default_models": "repository",
    "FLAVOUR_MODELS": "repository",
    "FLAVOURS": "repository",
    "MODELS": "repository",
    "build_repository": "repository",
    "python_model_file": "repository",
    "served_model": "repository",
    "GraphSettings": "settings",
    "ImageLimits": "settings",
    "DecoderQueue": "settings",
    "OnnxRuntimeSettings": "settings",
    "OpenVINOSettings": "settings",
    "RepositorySettings": "settings",
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
