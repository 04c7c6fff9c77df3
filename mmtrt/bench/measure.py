"""Time a callable over rotating realistic batches: images/s and latency percentiles.

Every measurement runs the same way: warm-up calls first (not counted), then calls until both a
minimum count and a minimum duration are reached, each on the next batch of a rotation (never
the same buffer twice in a row, never zeros). On CUDA each call is timed with device events
after a synchronise, so the figure is the device time the call needs, launch gaps included.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch


@dataclass
class Measurement:
    target: str
    batch: int
    calls: int
    images_per_s: float
    latency_ms: dict[str, float]  # p50, p90, p95, p99 of one call (one batch)
    peak_memory_mb: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 95, 99)}


def measure(target: str, run: Callable[[torch.Tensor], object], batches: Sequence[torch.Tensor], *,
            warmup: int = 3, min_calls: int = 10, min_seconds: float = 2.0, max_seconds: float = 60.0,
            progress=None) -> Measurement:
    device = batches[0].device
    cuda = device.type == "cuda"
    for i in range(warmup):
        run(batches[i % len(batches)])
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
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
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return Measurement(target, batch_size, len(latencies),
                       images_per_s=batch_size * 1e3 / float(np.median(latencies)),
                       latency_ms=percentiles(latencies), peak_memory_mb=peak)
