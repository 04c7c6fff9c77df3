"""Which runtime the cpu flavour's python model runs the ONNX graphs with: onnxruntime, OpenVINO,
or ``auto``.

``auto`` measures, on this host, at repository-build time: each ONNX file the repository serves
(multimix.onnx and encoder.onnx by default) is compiled in both runtimes with the thread
settings the repository will use, run once to warm up and then :data:`AUTO_CALLS` times on a batch
of :data:`AUTO_BATCH` fixed random images; the runtime with the smaller sum of the per-file
medians serves every model, OpenVINO only when it is at least :data:`AUTO_MARGIN` faster
(onnxruntime is the default; a difference within the noise of a busy host does not flip it).
Why a measurement and not a fixed rule: which one is faster depends on the CPU (vendor,
AVX-512 or not, core count) and on the thread settings, and the difference is a few tens of
percent either way; a fixed rule would be wrong on some hosts. The cost is a few seconds per
served graph at build time, once. OpenVINO is left out of ``auto`` (with the reason) when it is
not installed, or when the export's parity report does not cover it (an export validates the
runtimes installed where it ran: ``manifest.parity.runtimes``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CPU_RUNTIMES, DEFAULT_OPENVINO, OpenVINOSettings
from .errors import ServingError

RUNTIME_CHOICES = (*CPU_RUNTIMES, "auto")
AUTO_BATCH = 2
AUTO_CALLS = 3
AUTO_MARGIN = 0.05  # OpenVINO must be at least 5% faster to be chosen


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str
    reason: str
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # runtime -> file -> ms


def check_runtime(name: str) -> str:
    if name not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {name!r}: choose from {', '.join(RUNTIME_CHOICES)}")
    return name


def validated_runtimes(manifest: dict) -> list[str] | None:
    """The runtimes the export's parity check covered; None when the manifest does not say
    (an export without a parity record, or one made before OpenVINO was validated)."""
    runtimes = (manifest.get("parity") or {}).get("runtimes")
    return list(runtimes) if isinstance(runtimes, list) else None


def openvino_problem(manifest: dict) -> str | None:
    """Why OpenVINO cannot serve this export here, or None."""
    from mmtrt.runtimes import openvino

    if not openvino.available():
        return "OpenVINO is not installed here (pip install openvino; scripts/setup.sh installs it)"
    covered = validated_runtimes(manifest)
    parity = manifest.get("parity") or {}
    if parity and covered is not None and "openvino" not in covered:
        return (
            f"the export's parity check covered {', '.join(covered)} only: export again where "
            "OpenVINO is installed so that its graphs are validated in OpenVINO too"
        )
    if parity and covered is None:
        return (
            "the export's parity check predates OpenVINO validation (manifest.parity.runtimes "
            "missing): export again with OpenVINO installed"
        )
    return None


def _time_runner(run: Callable, images: np.ndarray, calls: int) -> float:
    run({"image": images})  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run({"image": images})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(
    files: Sequence[Path], *, ort_threads: int, openvino: OpenVINOSettings, batch: int = AUTO_BATCH
) -> dict[str, dict[str, float]]:
    """runtime -> file name -> median ms of one call at ``batch``, for both runtimes."""
    from mmtrt.runtimes import openvino as ov_runtime
    from mmtrt.runtimes import ort

    images = np.random.default_rng(0).random((batch, 1, 256, 256), dtype=np.float32)
    makers = {
        "onnxruntime": lambda f: ort.runner(f, threads=ort_threads),
        "openvino": lambda f: ov_runtime.runner(f, threads=openvino.threads, streams=openvino.streams),
    }
    return {
        runtime: {Path(f).name: _time_runner(make(f), images, AUTO_CALLS) for f in files}
        for runtime, make in makers.items()
    }


def choose_runtime(
    requested: str,
    manifest: dict,
    files: Sequence[Path],
    *,
    ort_threads: int = 0,
    openvino: OpenVINOSettings = DEFAULT_OPENVINO,
    batch: int = AUTO_BATCH,
    measure_fn: Callable[..., dict] = measure,
    precision: str = "fp32",
) -> RuntimeChoice:
    """The runtime serving the repository. An explicit ``openvino`` that cannot serve this export
    here raises :class:`ServingError`; ``auto`` measures (see the module docstring), except for
    reduced ``precision``, which only OpenVINO runs natively."""
    check_runtime(requested)
    if requested == "onnxruntime":
        return RuntimeChoice("onnxruntime", "asked for")
    problem = openvino_problem(manifest)
    if requested == "openvino":
        if problem:
            raise ServingError(f"--runtime openvino: {problem}")
        return RuntimeChoice("openvino", "asked for")
    if precision != "fp32":
        if problem:
            raise ServingError(f"{precision} is served by OpenVINO: {problem}")
        return RuntimeChoice(
            "openvino", f"auto: openvino, the CPU runtime that runs {precision} convolutions natively"
        )
    if problem:
        return RuntimeChoice("onnxruntime", f"auto: onnxruntime, since {problem}")
    timings = measure_fn(files, ort_threads=ort_threads, openvino=openvino, batch=batch)
    totals = {runtime: sum(per_file.values()) for runtime, per_file in timings.items()}
    winner = "openvino" if totals["openvino"] < (1 - AUTO_MARGIN) * totals["onnxruntime"] else "onnxruntime"
    names = "+".join(Path(f).name for f in files)
    reason = (
        f"auto: {winner} (measured here, {names} at batch {batch}, median of {AUTO_CALLS}: "
        f"onnxruntime {totals['onnxruntime']:.1f} ms, openvino {totals['openvino']:.1f} ms; "
        f"openvino is chosen when at least {AUTO_MARGIN:.0%} faster)"
    )
    return RuntimeChoice(winner, reason, timings)
