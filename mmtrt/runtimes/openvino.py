"""OpenVINO compiled models and runners of exported graphs (CPU plugin).

OpenVINO reads the exported ONNX files unchanged. Its CPU plugin runs bf16 BY DEFAULT on CPUs
with native bf16 (AVX512_BF16 / AMX) unless told otherwise, which moved the fused graph's
saliency by 61% (docs: deployment notes, "CPU runtimes besides onnxruntime"), so every model
compiled here is given its precision explicitly (``INFERENCE_PRECISION_HINT``): ``f32`` unless
``bf16`` is asked for AND the host has bf16 hardware (:func:`host_has_bf16`); a bf16 request on
a host without it compiles in f32 and says so (:func:`effective_precision`).

Threads: ``INFERENCE_NUM_THREADS`` (0: OpenVINO's default, one per core); streams:
``NUM_STREAMS`` (default 1: one request at a time, like the onnxruntime sessions with one
inter-op thread). ``cache_dir`` sets ``CACHE_DIR``: compiled blobs are kept there and a later
compile of the same file with the same properties loads the blob instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEVICE = "CPU"
#: the precisions a model may be compiled in (OpenVINO's names for INFERENCE_PRECISION_HINT)
PRECISIONS = ("f32", "bf16")
DEFAULT_PRECISION = "f32"
DEFAULT_STREAMS = 1
#: lscpu / /proc/cpuinfo flags of native bf16 arithmetic
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class OpenVINOUnavailable(RuntimeError):
    """OpenVINO cannot be imported here."""


def require_openvino():
    """The ``openvino`` module, or :class:`OpenVINOUnavailable` naming how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise OpenVINOUnavailable(
            f"OpenVINO is not installed ({exc}); install it with `pip install openvino` "
            "(scripts/setup.sh does)"
        ) from None
    return openvino


def available() -> bool:
    try:
        require_openvino()
    except OpenVINOUnavailable:
        return False
    return True


def version() -> str | None:
    try:
        return require_openvino().__version__
    except OpenVINOUnavailable:
        return None


# --------------------------------------------------------------------------- bf16 hardware


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo, what lscpu prints)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def openvino_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (contains "BF16" where it has native bf16);
    () where OpenVINO is not installed."""
    try:
        ov = require_openvino()
    except OpenVINOUnavailable:
        return ()
    return tuple(str(c) for c in ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def host_has_bf16(flags: set[str] | None = None, capabilities: Sequence[str] | None = None) -> bool:
    """Whether this host has bf16 hardware: a CPU flag of :data:`BF16_FLAGS`, or OpenVINO's CPU
    plugin listing BF16 among its optimisation capabilities."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in BF16_FLAGS):
        return True
    capabilities = openvino_capabilities() if capabilities is None else capabilities
    return "BF16" in {str(c).upper() for c in capabilities}


def effective_precision(requested: str, *, has_bf16: bool | None = None) -> tuple[str, str | None]:
    """(the precision to compile in, a message when it differs from ``requested``). bf16 on a host
    without bf16 hardware falls back to f32 (OpenVINO would emulate it, far slower)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {requested!r}: choose from {', '.join(PRECISIONS)}")
    if requested == "bf16" and not (host_has_bf16() if has_bf16 is None else has_bf16):
        return "f32", (
            "bf16 requested but this host has no bf16 hardware (no avx512_bf16 / amx_bf16 CPU "
            "flag, no BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES): compiling in f32"
        )
    return requested, None


# --------------------------------------------------------------------------- compiling


def properties(
    precision: str = DEFAULT_PRECISION, *, threads: int = 0, streams: int = DEFAULT_STREAMS
) -> dict[str, str]:
    """The CPU plugin properties every model is compiled with: the precision always explicit."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if int(threads) < 0 or int(streams) < 1:
        raise ValueError(f"threads must be >= 0 and streams >= 1, got {threads} and {streams}")
    props = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": str(int(streams)),
    }
    if int(threads):
        props["INFERENCE_NUM_THREADS"] = str(int(threads))
    return props


def compile_model(
    source,
    *,
    precision: str = DEFAULT_PRECISION,
    threads: int = 0,
    streams: int = DEFAULT_STREAMS,
    cache_dir: Path | str | None = None,
):
    """An OpenVINO ``CompiledModel`` of ``source`` (an ONNX file, or a serialized ONNX model as
    bytes) on the CPU, in ``precision`` (f32 / bf16; bf16 falls back to f32 without bf16
    hardware, with a warning). ``cache_dir``: OpenVINO's compiled-blob cache (files only)."""
    ov = require_openvino()
    precision, note = effective_precision(precision)
    if note:
        log.warning(note)
    core = ov.Core()
    if cache_dir is not None and not isinstance(source, bytes):
        os.makedirs(cache_dir, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    if isinstance(source, bytes):
        model = core.read_model(source, b"")  # ONNX bytes, no weights file
    else:
        model = str(source)
    return core.compile_model(model, DEVICE, properties(precision, threads=threads, streams=streams))


def output_names(compiled) -> list[str]:
    return [o.get_any_name() for o in compiled.outputs]


def runner(
    source,
    *,
    precision: str = DEFAULT_PRECISION,
    threads: int = 0,
    streams: int = DEFAULT_STREAMS,
    cache_dir: Path | str | None = None,
):
    """A :data:`mmtrt.graphs.Runner` over an OpenVINO compiled model of ``source``: float32 arrays
    in, every output of the graph out, by name (copies: they stay valid after the next call)."""
    compiled = compile_model(
        source, precision=precision, threads=threads, streams=streams, cache_dir=cache_dir
    )
    request = compiled.create_infer_request()
    names = output_names(compiled)

    def run(inputs) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        results = request.infer(feed, share_inputs=False, share_outputs=False)
        return {name: np.asarray(results[output]) for name, output in zip(names, compiled.outputs)}

    run.compiled = compiled  # for checks of its properties
    return run


def runners(export_dir: Path, graphs: Sequence[str], **options) -> dict:
    """graph -> :func:`runner` of ``<export_dir>/<graph>.onnx``."""
    return {graph: runner(Path(export_dir) / f"{graph}.onnx", **options) for graph in graphs}
