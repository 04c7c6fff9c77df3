"""Time a callable over rotating realistic batches: images/s and latency percentiles.

Every measurement runs the same way: warm-up calls first (not counted), then calls until both a
minimum count and a minimum duration are reached, each on the next batch of a rotation (never
the same buffer twice in a row, never zeros). On CUDA each call is timed with device events
after a synchronise, so the figure is the device time the call needs, launch gaps included.

Peak memory: on CUDA, the most the caching allocator held during the timed calls; on a Linux
CPU, the whole process's peak resident memory (VmHWM, reset after the warm-up calls), so it
counts the interpreter, libraries, weights and inputs too: compare rows of one run, or subtract
`resident_mb()` taken after loading the model. None where the peak cannot be reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Measurement:
    target: str
    batch: int
    calls: int
    images_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p95, p99 of one call (one batch)
    peak_memory_mb: float | None = None  # CUDA allocator or process resident peak: see above
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 95, 99)}


def reset_peak_rss() -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current size; False where Linux
    does not let us (no /proc, or clear_refs not writable)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_mb() -> float:
    import psutil  # (here: a GPU host running the bench from a checkout needs no psutil)

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float | None:
    """The process's peak resident memory since it started or since `reset_peak_rss` (VmHWM: psutil
    has no peak, and getrusage's maximum cannot be reset)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    peak = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return None if peak is None else int(peak) / 1024  # kB


def measure(
    target: str,
    run: Callable[[torch.Tensor], object],
    batches: Sequence[torch.Tensor],
    *,
    warmup: int = 3,
    min_calls: int = 10,
    min_seconds: float = 2.0,
    max_seconds: float = 60.0,
    progress=None,
) -> Measurement:
    device = batches[0].device
    cuda = device.type == "cuda"
    for i in range(warmup):
        run(batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    # (after the warm-up, so the peak is that of the timed calls on top of what warm-up kept)
    cpu_peak = not cuda and reset_peak_rss()
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        batch = batches[len(latencies) % len(batches)]
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run(batch)
            end.record()
            end.synchronize()
            latencies.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run(batch)
            latencies.append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress.update(1)
        elapsed = time.perf_counter() - started
        if (len(latencies) >= min_calls and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    batch_size = batches[0].shape[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb() if cpu_peak else None
    return Measurement(
        target,
        batch_size,
        len(latencies),
        images_per_s=batch_size * 1e3 / float(np.median(latencies)),
        latency_ms=percentiles(latencies),
        peak_memory_mb=peak,
    )
