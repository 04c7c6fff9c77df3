"""Load on a Triton endpoint: the built-in load generator, perf_analyzer, and the server's own
queue / compute breakdown.

The built-in generator runs `concurrency` client threads (each with its own
:class:`mmtrt.serving.client.Session`), each sending batches back to back for a fixed time, and
measures what perf_analyzer measures: completed images/s and request latency percentiles. It can
spread the load over several servers and resends only what failed transiently (never an invalid
input), as every client of mmtrt does.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mmtrt.bench.measure import Measurement, percentiles


def server_statistics(url: str, model: str) -> dict:
    """Cumulative counts and nanoseconds of the model, from Triton's statistics extension."""
    from mmtrt.serving.client import TritonClient

    with TritonClient(url) as client:
        stats = client.statistics(model)
    inference = stats["inference_stats"]
    return {
        "inference_count": stats.get("inference_count", 0),
        "execution_count": stats.get("execution_count", 0),
        **{
            f"{k}_ns": inference[k]["ns"]
            for k in ("queue", "compute_input", "compute_infer", "compute_output")
        },
        "success_count": inference["success"]["count"],
    }


def server_breakdown(before: dict, after: dict) -> dict:
    """Per-request averages (ms) over a measurement, and the average executed batch size."""
    requests = max(after["success_count"] - before["success_count"], 1)
    executions = max(after["execution_count"] - before["execution_count"], 1)
    out = {
        f"server_{k[:-3]}_ms": (after[k] - before[k]) / requests / 1e6
        for k in ("queue_ns", "compute_input_ns", "compute_infer_ns", "compute_output_ns")
    }
    out["server_avg_batch"] = (after["inference_count"] - before["inference_count"]) / executions
    return out


def run_load(
    protocol: str,
    url: str | list[str],
    model: str,
    pool: np.ndarray,
    batch: int,
    concurrency: int,
    seconds: float,
    *,
    stats_url: str | None = None,
    outputs: tuple[str, ...] = ("probs", "mask", "saliency"),
    warmup: int = 2,
    retry_delay_s: float = 0.25,
    max_attempts: int = 6,
) -> Measurement:
    """`concurrency` clients sending `batch`-image requests for `seconds`; `stats_url` (the
    server's HTTP endpoint) adds the server-side queue / compute breakdown. `pool`: decoded
    images (float32 [N, 1, H, W]) or image files (an object array of N bytes objects, for
    ``multimix_image``), sent as `mmtrt infer` sends them.

    ``url`` may list several servers: each client is a :class:`mmtrt.serving.client.Session`
    of one :class:`~mmtrt.serving.client.Servers`, sending its requests to them in turn. A
    request that fails transiently (:mod:`mmtrt.serving.faults`: the server unreachable or gone, a
    5xx, a deadline) is sent again, to the next server, and its server is left alone for
    ``retry_delay_s`` (doubling while it keeps failing, up to 32 times that; a server is never
    given up during a measurement); at most ``max_attempts`` attempts a request, none after the
    deadline. A request rejected as invalid input is counted (``invalid``) and never sent again.
    ``extra``: ``failures`` (requests that never got an answer: invalid ones included),
    ``invalid``, ``retries`` (sends again), ``answered_by`` (requests per server),
    ``answered_versions`` (requests per model version that answered, from the responses)."""
    from mmtrt.serving.client import Backoff, Servers, file_inputs, image_inputs
    from mmtrt.serving.faults import INVALID, classify

    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no server url given")
    servers = Servers(urls, protocol, retries=None, backoff=Backoff(retry_delay_s, max_s=32 * retry_delay_s))
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"invalid": 0, "retries": 0}
    answered_by = {u: 0 for u in urls}
    answered_versions: dict[str, int] = {}
    lock = threading.Lock()
    warmed, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    deadline = [0.0]  # time.monotonic()

    def request(i: int) -> dict[str, np.ndarray]:
        images = _take(pool, i, batch)
        return file_inputs(list(images)) if images.dtype == np.object_ else image_inputs(images)

    def worker(offset: int) -> None:
        session = servers.session(offset)
        try:
            i = offset
            try:
                for _ in range(warmup):
                    session.send(model, request(i), outputs, max_attempts=1)
            except Exception as exc:
                failures.append(str(exc).splitlines()[0])
                warmed.abort()  # the endpoint does not work: stop everyone
                return
            try:
                warmed.wait()
                go.wait()
            except threading.BrokenBarrierError:
                return
            while time.monotonic() < deadline[0]:
                inputs = request(i)
                i += concurrency  # a failed request is not sent again below: the next batch is
                tried: list[str] = []
                t0 = time.perf_counter()
                try:
                    answer = session.send(
                        model, inputs, outputs, tried=tried, max_attempts=max_attempts, deadline=deadline[0]
                    )
                except Exception as exc:  # counted and reported, the load goes on
                    with lock:
                        failures.append(str(exc).splitlines()[0])
                        counts["retries"] += max(len(tried) - 1, 0)
                        if classify(exc) == INVALID:
                            counts["invalid"] += 1
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    counts["retries"] += len(tried) - 1
                    answered_by[answer.endpoint.url] += 1
                    v = answer.model_version
                    answered_versions[v] = answered_versions.get(v, 0) + 1
        finally:
            session.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        warmed.wait()  # warm-up requests stay out of the server's statistics too
    except threading.BrokenBarrierError:
        raise RuntimeError(f"{model} at {url} ({protocol}) failed during warm-up: {failures[:1]}") from None
    stats_before = server_statistics(stats_url, model) if stats_url else None
    deadline[0] = time.monotonic() + seconds
    started = time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if not latencies:
        raise RuntimeError(f"no request to {model} at {url} succeeded: {failures[:3]}")
    extra = {
        "concurrency": concurrency,
        "protocol": protocol,
        "failures": len(failures),
        "invalid": counts["invalid"],
        "retries": counts["retries"],
        "answered_versions": dict(sorted(answered_versions.items())),
    }
    if len(urls) > 1:
        extra["answered_by"] = dict(answered_by)
    if stats_before is not None:
        extra.update(server_breakdown(stats_before, server_statistics(stats_url, model)))
    return Measurement(
        f"triton-{protocol}",
        batch,
        len(latencies),
        images_per_s=len(latencies) * batch / elapsed,
        latency_ms=percentiles(latencies),
        extra=extra,
    )


def _take(pool: np.ndarray, i: int, batch: int) -> np.ndarray:
    start = (i * batch) % (len(pool) - batch + 1)
    return np.ascontiguousarray(pool[start : start + batch])


# --- perf_analyzer ------------------------------------------------------------------------------


def perf_analyzer_command() -> tuple[list[str], dict] | None:
    """The perf_analyzer shipped in tritonclient 2.51 (same version as the bundled server) and
    the environment it needs, or None where it cannot run. It links libb64 and libcudart, which
    nvidia-pytriton ships under hashed names: expose them under their sonames."""
    # tritonclient installs it beside the interpreter, which is not on PATH when a venv's
    # `mmtrt` runs without the venv activated
    binary = shutil.which("perf_analyzer") or shutil.which(
        "perf_analyzer", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        return None
    env = dict(os.environ)
    libs = _pytriton_libs()
    if libs is not None:
        links = Path(tempfile.mkdtemp(prefix="mmtrt-perf-analyzer-libs-"))
        for pattern, soname in (
            ("libb64-*.so.0d", "libb64.so.0d"),
            ("libcudart-*.so.12*", "libcudart.so.12"),
        ):
            found = sorted(libs.glob(pattern))
            if found:
                (links / soname).symlink_to(found[0])
        env["LD_LIBRARY_PATH"] = f"{links}:{env.get('LD_LIBRARY_PATH', '')}"
    probe = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True)
    if probe.returncode != 0 and "error while loading shared libraries" in probe.stderr:
        return None
    return [binary], env


def _pytriton_libs() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(list(spec.submodule_search_locations)[0]).parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def run_perf_analyzer(
    grpc_url: str,
    model: str,
    pool: np.ndarray,
    batch: int,
    concurrency: list[int],
    seconds: float,
    workdir: Path,
) -> list[Measurement]:
    found = perf_analyzer_command()
    if found is None:
        raise RuntimeError("perf_analyzer cannot run here")
    command, env = found
    data = workdir / "perf_analyzer_input.json"
    # Real images (not perf_analyzer's random or zero data), one entry per stream step.
    data.write_text(
        json.dumps(
            {
                "data": [
                    {"image": {"content": pool[i].ravel().tolist(), "shape": list(pool[i].shape)}}
                    for i in range(min(len(pool), 4))
                ]
            }
        )
    )
    rows = []
    for clients in concurrency:  # one run per value: its concurrency range is linear, the sweep need not be
        csv_path = workdir / f"perf_analyzer_b{batch}_c{clients}.csv"
        _perf_analyzer_stable_run(command, env, model, grpc_url, batch, clients, data, seconds, csv_path)
        with open(csv_path) as fh:
            for row in csv.DictReader(fh):
                lat = {f"p{q}": float(row[f"p{q} latency"]) / 1e3 for q in (50, 90, 95, 99)}
                rows.append(
                    Measurement(
                        "perf_analyzer-grpc",
                        batch,
                        0,
                        images_per_s=float(row["Inferences/Second"]),
                        latency_ms=lat,
                        extra={
                            "concurrency": int(row["Concurrency"]),
                            "server_queue_ms": float(row["Server Queue"]) / 1e3,
                            "server_compute_infer_ms": float(row["Server Compute Infer"]) / 1e3,
                        },
                    )
                )
    return rows


def _perf_analyzer_stable_run(
    command: list[str],
    env: dict,
    model: str,
    grpc_url: str,
    batch: int,
    clients: int,
    data: Path,
    seconds: float,
    csv_path: Path,
) -> None:
    """One perf_analyzer run at one concurrency. Stable = three windows within 50% of each other
    (2 shared cores rarely give the default 10%), up to 8 windows to find them; when a busy host
    gives none, the windows are doubled, twice, as perf_analyzer itself advises."""
    for attempt in range(3):
        interval_ms = int(seconds * 1000) * 2**attempt
        args = command + [
            "-m",
            model,
            "-u",
            grpc_url,
            "-i",
            "grpc",
            "-b",
            str(batch),
            "--concurrency-range",
            f"{clients}:{clients}",
            "--input-data",
            str(data),
            "--measurement-interval",
            str(interval_ms),
            "--stability-percentage",
            "50",
            "--max-trials",
            "8",
            "--percentile",
            "99",
            "-f",
            str(csv_path),
        ]
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=max(120, 20 * interval_ms / 1000)
        )
        if done.returncode == 0:
            return
        if "stable measurement" not in done.stdout + done.stderr:
            break
    raise RuntimeError(
        f"perf_analyzer failed ({done.returncode}): {done.stderr.strip()[-500:] or done.stdout[-500:]}"
    )
