"""OpenVINO compiled models and runners of exported graphs (CPU plugin).

OpenVINO reads the exported ONNX files unchanged. Its CPU plugin runs bf16 BY DEFAULT on CPUs
with native bf16 (AVX512_BF16 / AMX) unless told otherwise, which moved the fused graph's
saliency by 61% (docs: deployment notes, "CPU runtimes besides onnxruntime"), so every model is
compiled with ``INFERENCE_PRECISION_HINT`` f32: the file's own types decide. A mixed-precision
copy of the export (``<graph>.bf16.onnx``, :mod:`mmtrt.export.precision`) then runs exactly its
reduced convolutions in bf16 and everything else in f32. :func:`reduced_precision_native` says
whether this host can run them natively (a bf16 / fp16 CPU flag, or the CPU plugin's
``OPTIMIZATION_CAPABILITIES``); without the hardware OpenVINO would emulate them, far slower.

Threads: ``INFERENCE_NUM_THREADS`` (0: OpenVINO's default, one per core); streams:
``NUM_STREAMS`` (default 1: one request at a time, like the onnxruntime sessions with one
inter-op thread). ``cache_dir`` sets ``CACHE_DIR``: compiled blobs are kept there and a later
compile of the same file with the same properties loads the blob instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEVICE = "CPU"
DEFAULT_STREAMS = 1
#: reduced precision -> the lscpu / /proc/cpuinfo flags of its native arithmetic, and the CPU
#: plugin's name for it in OPTIMIZATION_CAPABILITIES
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


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


def host_has(
    precision: str, flags: set[str] | None = None, capabilities: Sequence[str] | None = None
) -> bool:
    """Whether this host has native ``precision`` (bf16 / fp16) arithmetic: a CPU flag of
    :data:`NATIVE_FLAGS`, or OpenVINO's CPU plugin listing it among its optimisation capabilities."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in NATIVE_FLAGS[precision]):
        return True
    capabilities = openvino_capabilities() if capabilities is None else capabilities
    return CAPABILITY[precision] in {str(c).upper() for c in capabilities}


def reduced_precision_native(precision: str, *, has_hardware: bool | None = None) -> tuple[bool, str | None]:
    """(whether OpenVINO runs the ``precision`` copies of an export natively here, a message
    when it does not). fp32: (False, None)."""
    if precision == "fp32":
        return False, None
    if precision not in NATIVE_FLAGS:
        raise ValueError(f"unknown precision {precision!r}: choose from fp32, {', '.join(NATIVE_FLAGS)}")
    if not available():
        return False, f"OpenVINO is not installed: the {precision} copies run in onnxruntime only"
    if not (host_has(precision) if has_hardware is None else has_hardware):
        return False, (
            f"this host has no {precision} hardware (no {' / '.join(NATIVE_FLAGS[precision])} CPU flag, "
            f"no {CAPABILITY[precision]} in OpenVINO's OPTIMIZATION_CAPABILITIES): the {precision} "
            "copies are checked in onnxruntime only, and CPU serving runs float32"
        )
    return True, None


# --------------------------------------------------------------------------- compiling


def properties(*, threads: int = 0, streams: int = DEFAULT_STREAMS) -> dict[str, str]:
    """The CPU plugin properties every model is compiled with: precision hint f32 always (the
    file's own types decide where bf16 runs)."""
    if int(threads) < 0 or int(streams) < 1:
        raise ValueError(f"threads must be >= 0 and streams >= 1, got {threads} and {streams}")
    props = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": str(int(streams)),
    }
    if int(threads):
        props["INFERENCE_NUM_THREADS"] = str(int(threads))
    return props


def compile_model(
    source, *, threads: int = 0, streams: int = DEFAULT_STREAMS, cache_dir: Path | str | None = None
):
    """An OpenVINO ``CompiledModel`` of ``source`` (an ONNX file, or a serialized ONNX model as
    bytes) on the CPU. ``cache_dir``: OpenVINO's compiled-blob cache (files only)."""
    ov = require_openvino()
    core = ov.Core()
    if cache_dir is not None and not isinstance(source, bytes):
        os.makedirs(cache_dir, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    if isinstance(source, bytes):
        model = core.read_model(source, b"")  # ONNX bytes, no weights file
    else:
        model = str(source)
    return core.compile_model(model, DEVICE, properties(threads=threads, streams=streams))


def output_names(compiled) -> list[str]:
    return [o.get_any_name() for o in compiled.outputs]


class GraphRunner:
    """A :data:`mmtrt.graphs.Runner` over an OpenVINO compiled model (``compiled``): float32
    arrays in, the graph's outputs out by name (all of them, or those asked for; copies: they
    stay valid after the next call). ``inputs``: the graph's input names; ``output_shapes``:
    output name -> shape (None for a dynamic dim)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.inputs = [i.get_any_name() for i in compiled.inputs]
        self.ports = dict(zip(output_names(compiled), compiled.outputs))
        self.output_shapes = {
            name: [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            for name, port in self.ports.items()
        }

    def __call__(self, inputs, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        results = self.request.infer(feed, share_inputs=False, share_outputs=False)
        return {name: np.asarray(results[self.ports[name]]) for name in outputs or self.ports}


def runner(
    source, *, threads: int = 0, streams: int = DEFAULT_STREAMS, cache_dir: Path | str | None = None
) -> GraphRunner:
    """A :class:`GraphRunner` over :func:`compile_model` of ``source``."""
    return GraphRunner(compile_model(source, threads=threads, streams=streams, cache_dir=cache_dir))


def runners(export_dir: Path, graphs: Sequence[str], precision: str = "fp32", **options) -> dict:
    """graph -> :func:`runner` of ``<export_dir>/<graph>.onnx``, or of its ``precision`` copy
    ``<graph>.<precision>.onnx`` where the export has one."""
    folder = Path(export_dir)

    def source(graph):
        reduced = folder / f"{graph}.{precision}.onnx"
        return reduced if precision != "fp32" and reduced.is_file() else folder / f"{graph}.onnx"

    return {graph: runner(source(graph), **options) for graph in graphs}
