"""Soak test of the served joint pipeline: the fused `multimix` model on the real Triton server
(CPU flavour), `concurrency` clients (half HTTP, half gRPC) sending batch-1 requests back to back,
every answer checked against onnxruntime in-process on the same graph, bad requests of eight kinds
mixed in.

:func:`soak` measures (:func:`summarise`'s figures):

- requests served, failed and wrong (an answer that differs from onnxruntime: "lost"), by protocol;
- latency percentiles overall and p50 / p99 per window (stability of p99);
- server memory: RSS of tritonserver plus its python-backend stub processes (its process group),
  read from /proc once a second; growth = median RSS of the last window over the median RSS of
  the first window after warm-up;
- each bad request's answer: it must be rejected as invalid input, and is never sent again.

:func:`run_soak` builds a repository, starts the server, runs the soak and writes the report
(``benchmarks/soak.py`` is its command line; tests/integration/test_reliability_serving.py runs
:func:`soak` for 60 s). Its clients are sessions of :class:`mmtrt.serving.client.Servers`, so the
soak exercises the retry rule of every client of mmtrt: a request that failed transiently is sent
again (the same image, after 0.1 s), one rejected as invalid input never is. Every loop here is bounded in
time: the clients stop at the deadline, each request has a client time-out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mmtrt.serving.client import IMAGE_MODEL, JOINT_MODEL

OUTPUTS = ("probs", "label", "mask", "saliency")
REQUEST_TIMEOUT_S = 300.0  # one request, client side: never reached when the server is healthy


# --------------------------------------------------------------------------- server memory


def _proc_fields(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _rss_bytes(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def server_processes(server_pid: int) -> list[int]:
    """Live processes of the server's process group (TritonServer starts tritonserver as the
    leader of its own group; its python-backend stubs are in it)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _proc_fields(name)
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(server_pid):
            pids.append(int(name))
    return sorted(pids)


def server_rss(server_pid: int) -> tuple[int, int]:
    """(RSS in bytes of tritonserver + its stubs, number of processes counted)."""
    pids = server_processes(server_pid)
    return sum(_rss_bytes(str(p)) for p in pids), len(pids)


# --------------------------------------------------------------------------- statistics


def _pct(values, q) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


def summarise(
    records: list[tuple], memory: list[tuple], seconds: float, window_s: float, warmup_s: float
) -> dict:
    """Figures from per-request records (protocol, t_start, t_end, latency_s, status, message[,
    pool index]; status ok, wrong, failed or invalid: rejected as invalid input) and memory samples (t, rss_bytes, n_processes); times relative to the start of the load."""
    bad_requests = [r for r in records if r[4] in BAD_REQUEST_STATUSES]
    records = [r for r in records if r[4] not in BAD_REQUEST_STATUSES]  # the valid requests
    ok = [r for r in records if r[4] == "ok"]
    failed = [r for r in records if r[4] == "failed"]
    wrong = [r for r in records if r[4] == "wrong"]
    invalid = [r for r in records if r[4] == "invalid"]  # a valid request rejected: lost too
    lat_ms = [1000 * r[3] for r in ok]
    windows = []
    n_windows = max(1, int(np.ceil(seconds / window_s - 1e-9)))
    for w in range(n_windows):
        lo, hi = w * window_s, (w + 1) * window_s
        inside = [r for r in records if lo <= r[2] < hi]
        lat = [1000 * r[3] for r in inside if r[4] == "ok"]
        mem = [m[1] for m in memory if lo <= m[0] < hi]
        windows.append(
            {
                "start_s": lo,
                "end_s": hi,
                "completed": len(inside),
                "failed": sum(r[4] != "ok" for r in inside),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
                "max_ms": max(lat) if lat else None,
                "rss_mib": (float(np.median(mem)) / 2**20) if mem else None,
            }
        )
    steady = [w for w in windows if w["start_s"] >= warmup_s and w["p99_ms"] is not None]
    p99s = [w["p99_ms"] for w in steady]
    stability = None
    if p99s:
        first_half, second_half = p99s[: max(1, len(p99s) // 2)], p99s[len(p99s) // 2 :]
        stability = {
            "windows": len(p99s),
            "median_window_p99_ms": float(np.median(p99s)),
            "max_window_p99_ms": float(max(p99s)),
            "max_over_median": float(max(p99s) / np.median(p99s)),
            # > 1: p99 got worse over the run (drift), ~1: stable
            "second_half_over_first_half": float(np.median(second_half) / np.median(first_half)),
        }
    mem_steady = [w["rss_mib"] for w in windows if w["start_s"] >= warmup_s and w["rss_mib"]]
    memory_figures = None
    if memory:
        rss = [m[1] / 2**20 for m in memory]
        memory_figures = {
            "samples": len(memory),
            "processes": int(max(m[2] for m in memory)),
            "start_mib": rss[0],
            "peak_mib": max(rss),
            "end_mib": rss[-1],
            "after_warmup_mib": mem_steady[0] if mem_steady else None,
            "last_window_mib": mem_steady[-1] if mem_steady else None,
            "growth_after_warmup": (mem_steady[-1] / mem_steady[0] - 1) if len(mem_steady) > 1 else None,
            # the second half of the run alone: does it still grow once the allocators settled?
            "growth_second_half": (mem_steady[-1] / mem_steady[len(mem_steady) // 2] - 1)
            if len(mem_steady) > 3
            else None,
        }
    by_protocol = {}
    for proto in sorted({r[0] for r in records}):
        rs = [r for r in records if r[0] == proto]
        by_protocol[proto] = {
            "requests": len(rs),
            "ok": sum(r[4] == "ok" for r in rs),
            "failed": sum(r[4] == "failed" for r in rs),
            "wrong": sum(r[4] == "wrong" for r in rs),
        }
    messages = sorted({r[5] for r in failed + wrong + invalid})[:10]
    messages += sorted({r[5] for r in bad_requests if r[4] != "rejected"})[:10]
    return {
        "seconds": seconds,
        "window_s": window_s,
        "warmup_s": warmup_s,
        "requests": len(records),
        "ok": len(ok),
        "failed": len(failed),
        "wrong": len(wrong),
        "invalid": len(invalid),
        "lost": len(failed) + len(wrong) + len(invalid),
        "bad_requests": _bad_request_figures(bad_requests),
        "error_messages": messages,
        "throughput_rps": len(ok) / seconds if seconds else None,
        "latency_ms": {
            "p50": _pct(lat_ms, 50),
            "p90": _pct(lat_ms, 90),
            "p99": _pct(lat_ms, 99),
            "max": max(lat_ms) if lat_ms else None,
        },
        "p99_stability": stability,
        "memory": memory_figures,
        "by_protocol": by_protocol,
        "windows": windows,
    }


def _bad_request_figures(records: list[tuple]) -> dict:
    """Per kind of bad request (the message field starts with it): sent, rejected as invalid input
    (HTTP 400 / gRPC INVALID_ARGUMENT, as they must be), answered otherwise (an error of another
    kind), accepted (served as if valid)."""
    kinds: dict[str, dict] = {}
    for r in records:
        kind = r[5].split(":", 1)[0]
        entry = kinds.setdefault(kind, {"sent": 0, "rejected": 0, "other_error": 0, "accepted": 0})
        entry["sent"] += 1
        entry[{"rejected": "rejected", "bad-accepted": "accepted"}.get(r[4], "other_error")] += 1
    return dict(sorted(kinds.items()))


# --------------------------------------------------------------------------- the load

#: a bad request's outcome: rejected as invalid input (right), served (wrong), another error (wrong)
BAD_REQUEST_STATUSES = ("rejected", "bad-accepted", "bad-other")


#: the image-file model's limit in the soak's repository: small, so that an oversize file is cheap
SOAK_MAX_IMAGE_BYTES = 2 * 2**20


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(side: int = 20_000) -> bytes:
    """A real PNG of side x side black pixels: a few hundred kB on the wire, 400 million pixels
    once decoded (a decompression bomb to any limit below that)."""
    import struct
    import zlib

    row = b"\x00" + bytes(side)  # filter byte + one row of 8-bit grey
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


_BAD_FILES: dict[str, bytes] = {}


def _make_bad_files() -> None:
    rng = np.random.default_rng(0)
    _BAD_FILES["flat"] = _png(np.full((256, 256), 128, np.uint8))
    _BAD_FILES["oversize"] = _png(rng.integers(0, 256, (1600, 1600), dtype=np.uint8))  # ~2.4 MiB
    assert len(_BAD_FILES["oversize"]) > SOAK_MAX_IMAGE_BYTES
    _BAD_FILES["bomb"] = _bomb_png()


def bad_requests(image: np.ndarray, max_batch: int = 8) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """kind -> (model, inputs) of a request that is the client's own fault, one of each kind the
    server must answer as invalid input: to the tensor model ``multimix`` a wrong dtype, a wrong
    image shape, a batch above max_batch, non-finite values; to the image-file model
    ``multimix_image`` undecodable bytes, a degenerate (flat) image, a file above its size limit
    and a decompression bomb."""
    from mmtrt.serving.client import file_inputs

    if not _BAD_FILES:
        _make_bad_files()
    nan = image.copy()
    nan[0, 0, :8, :8] = np.nan
    tensors = {
        "dtype": image.astype(np.float64),
        "shape": np.ascontiguousarray(image[:, :, :128, :128]),
        "batch": np.repeat(image, max_batch + 1, axis=0),
        "non-finite": nan,
    }
    files = {
        "undecodable": b"%PDF-1.7 not an image " * 64,
        "degenerate": _BAD_FILES["flat"],
        "oversize": _BAD_FILES["oversize"],
        "bomb": _BAD_FILES["bomb"],
    }
    return {
        **{kind: (JOINT_MODEL, {"image": array}) for kind, array in tensors.items()},
        **{kind: (IMAGE_MODEL, file_inputs([data])) for kind, data in files.items()},
    }


def reference_outputs(onnx_path: Path, pool: np.ndarray) -> list[dict[str, np.ndarray]]:
    """What the server must answer for each image of ``pool`` (batch 1): the same ONNX graph in
    onnxruntime in-process."""
    from mmtrt.runtimes import ort

    session = ort.session(onnx_path, threads=1)
    refs = []
    for x in pool:
        probs, mask, saliency = session.run(["probs", "mask", "saliency"], {"image": x[None]})
        refs.append(
            {"probs": probs, "mask": mask, "saliency": saliency, "label": probs.argmax(axis=1).reshape(-1, 1)}
        )
    return refs


def mismatch(got: dict, want: dict) -> str | None:
    """None when the served outputs ``got`` equal the reference ``want``, else what differs."""
    for name in ("probs", "mask", "saliency"):
        a, b = got.get(name), want[name]
        if a is None or a.shape != b.shape:
            return f"{name}: shape {None if a is None else a.shape}, expected {b.shape}"
        if not np.allclose(a, b, rtol=1e-4, atol=1e-4):
            return f"{name}: max |diff| {float(np.abs(a - b).max()):.3g} from onnxruntime"
    if not np.array_equal(got["label"], want["label"]):
        return f"label {got['label'].ravel()}, expected {want['label'].ravel()}"
    return None


def soak(
    http_url: str,
    grpc_url: str,
    *,
    pool: np.ndarray,
    references: list[dict],
    seconds: float,
    concurrency: int = 16,
    model: str = JOINT_MODEL,
    server_pid: int | None = None,
    window_s: float = 10.0,
    warmup_s: float = 10.0,
    protocols=("http", "grpc"),
    progress=None,
    bad_every: int = 0,
) -> dict:
    """``concurrency`` client threads (worker i uses ``protocols[i % len]``) each send batch-1
    requests of ``pool`` images back to back until ``seconds`` have passed; every answer is
    compared with ``references``; a request that failed transiently (mmtrt.serving.faults) is
    sent again (the same image, once its server's 0.1-s back-off has passed), one rejected as
    invalid input never is; the server's RSS is sampled once a second. With ``bad_every`` N,
    every N-th request of a worker is a bad one (:func:`bad_requests`, the kinds in turn), which
    must be rejected as invalid input and is never sent again; before the timed load each worker
    sends each kind once, uncounted (the server's first large request and the decoder's first
    files grow its memory: part of the warm-up). Returns :func:`summarise`'s figures. Bounded: no
    request starts after the deadline, and each has a client time-out of REQUEST_TIMEOUT_S."""
    from mmtrt.serving.client import Backoff, Servers, image_inputs
    from mmtrt.serving.faults import INVALID, TRANSIENT, classify

    urls = {"http": http_url, "grpc": grpc_url}
    # each request's own fate is recorded: one attempt a send; a server is never given up, and
    # one that failed is left alone for 0.1 s (no spinning on a dead server)
    servers = {
        p: Servers(
            urls[p],
            p,
            timeout_s=REQUEST_TIMEOUT_S,
            connect_timeout_s=30.0,
            retries=None,
            backoff=Backoff(0.1, max_s=0.1),
        )  # fmt: skip
        for p in dict.fromkeys(protocols)
    }
    bad = bad_requests(pool[:1]) if bad_every else {}
    records: list[tuple] = []
    memory: list[tuple] = []
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1, timeout=120)
    go = threading.Event()  # set once the deadline is set: the timed load starts
    t0 = [0.0]
    deadline = [0.0]
    stop_sampling = threading.Event()

    def worker(index: int) -> None:
        proto = protocols[index % len(protocols)]
        session = servers[proto].session()
        try:
            for bad_model, bad_inputs in bad.values():  # warm-up: each kind once, not counted
                try:
                    session.send(bad_model, bad_inputs, OUTPUTS, max_attempts=1)
                except Exception:  # noqa: BLE001, S110 - rejected, as expected; counted in the timed load
                    pass
            start_barrier.wait()
            go.wait()
            k = index
            sent = 0
            while time.monotonic() < deadline[0]:
                sent += 1
                if bad_every and sent % bad_every == 0:
                    kind = list(bad)[(sent // bad_every + index) % len(bad)]
                    bad_model, bad_inputs = bad[kind]
                    begin = time.monotonic()
                    try:
                        session.send(bad_model, bad_inputs, OUTPUTS, max_attempts=1)
                        status, message = "bad-accepted", f"{kind}: answered as if valid"
                    except Exception as e:  # noqa: BLE001 - the answer is the point
                        status = "rejected" if classify(e) == INVALID else "bad-other"
                        message = f"{kind}: {type(e).__name__}: {str(e)[:200]}"
                    end = time.monotonic()
                    with lock:
                        records.append((proto, begin - t0[0], end - t0[0], end - begin, status, message, -1))
                    continue
                i = k % len(pool)
                k += concurrency
                tried: list[str] = []
                begin = time.monotonic()
                try:
                    answer = session.send(
                        model, image_inputs(pool[i : i + 1]), OUTPUTS, tried=tried, max_attempts=1,
                        deadline=deadline[0],
                    )  # fmt: skip
                    problem = mismatch(answer.outputs, references[i])
                    status, message = ("ok", "") if problem is None else ("wrong", problem)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    if not tried and time.monotonic() >= deadline[0]:
                        break  # it waited out the deadline for its server: not a request
                    # a rejected input is never sent again; a transient failure is (same image)
                    kind = classify(e)
                    status = "invalid" if kind == INVALID else "failed"
                    message = f"{type(e).__name__}: {str(e)[:300]}"
                    if kind == TRANSIENT:
                        k -= concurrency
                end = time.monotonic()
                with lock:
                    records.append((proto, begin - t0[0], end - t0[0], end - begin, status, message, i))
        finally:
            session.close()

    def sampler() -> None:
        while not stop_sampling.is_set():
            if server_pid is not None:
                rss, n = server_rss(server_pid)
                memory.append((time.monotonic() - t0[0], rss, n))
            if progress is not None:
                with lock:
                    done = len(records)
                    failed = sum(r[4] not in ("ok", "rejected") for r in records)
                progress(time.monotonic() - t0[0], done, failed, memory[-1][1] if memory else 0)
            stop_sampling.wait(1.0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait()  # every worker warmed up
    t0[0] = time.monotonic()
    deadline[0] = t0[0] + seconds
    go.set()
    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    for t in threads:
        t.join(max(1.0, deadline[0] + REQUEST_TIMEOUT_S + 30 - time.monotonic()))
    stop_sampling.set()
    sampling.join(10)
    hung = sum(t.is_alive() for t in threads)
    elapsed = time.monotonic() - t0[0]
    figures = summarise(sorted(records, key=lambda r: r[2]), memory, max(seconds, 1e-9), window_s, warmup_s)
    figures.update(
        {
            "concurrency": concurrency,
            "model": model,
            "protocols": list(protocols),
            "wall_s": elapsed,
            "hung_clients": hung,
            "batch": 1,
            "pool_images": len(pool),
        }
    )
    return figures


# --------------------------------------------------------------------------- report


def markdown(figures: dict, *, command: str, environment: dict) -> str:
    f = figures
    lat, stab, mem = f["latency_ms"], f["p99_stability"] or {}, f["memory"] or {}

    def num(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    per_protocol = ", ".join(f"{p}: {v['requests']}" for p, v in f["by_protocol"].items())

    lines = [
        f"# Soak: `{f['model']}` under concurrency {f['concurrency']} for {f['seconds'] / 60:.1f} min",
        "",
        f"- date: {environment['date']}",
        f"- machine: {environment['machine']}",
        f"- command: `{command}`",
        f"- server: {environment.get('server', '?')}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {f['requests']} ({per_protocol}) |",
        f"| valid: ok / failed / wrong / rejected | {f['ok']} / {f['failed']} / {f['wrong']} / {f['invalid']} |",
        f"| lost (valid requests failed, wrong or rejected) | {f['lost']} |",
        f"| clients still hanging at the end | {f['hung_clients']} |",
        f"| throughput | {num(f['throughput_rps'], '{:.2f}')} requests/s (batch 1) |",
        f"| latency p50 / p90 / p99 / max | {num(lat['p50'])} / {num(lat['p90'])} / {num(lat['p99'])} / {num(lat['max'])} ms |",
        f"| p99 per {f['window_s']:.0f}-s window after warm-up: median / max | {num(stab.get('median_window_p99_ms'))} / {num(stab.get('max_window_p99_ms'))} ms (max/median {num(stab.get('max_over_median'), '{:.2f}')}) |",
        f"| p99 drift: 2nd half / 1st half of the windows | {num(stab.get('second_half_over_first_half'), '{:.2f}')} |",
        f"| server RSS (tritonserver + {mem.get('processes', '?')} processes in its group): start / after warm-up / last window / peak | {num(mem.get('start_mib'))} / {num(mem.get('after_warmup_mib'))} / {num(mem.get('last_window_mib'))} / {num(mem.get('peak_mib'))} MiB |",
        f"| memory growth after warm-up | {num(None if mem.get('growth_after_warmup') is None else 100 * mem['growth_after_warmup'], '{:+.2f}')} % |",
        f"| memory growth over the second half | {num(None if mem.get('growth_second_half') is None else 100 * mem['growth_second_half'], '{:+.2f}')} % |",
        "",
        *_bad_request_lines(f.get("bad_requests") or {}),
        f"Per {f['window_s']:.0f}-s window (by completion time):",
        "",
        "| window | completed | failed | p50 ms | p99 ms | RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for w in f["windows"]:
        lines.append(
            f"| {w['start_s']:.0f}-{w['end_s']:.0f} s | {w['completed']} | {w['failed']} | "
            f"{num(w['p50_ms'])} | {num(w['p99_ms'])} | {num(w['rss_mib'])} |"
        )
    if f["error_messages"]:
        lines += ["", "Errors (distinct, first 10):", ""] + [f"- `{m}`" for m in f["error_messages"]]
    return "\n".join(lines) + "\n"


def _bad_request_lines(kinds: dict) -> list[str]:
    if not kinds:
        return []
    lines = [
        "Bad requests (the client's own fault, mixed in; each must be answered HTTP 400 / gRPC",
        "INVALID_ARGUMENT and is never sent again):",
        "",
        "| kind | sent | rejected as invalid input | other error | served as if valid |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {kind} | {v['sent']} | {v['rejected']} | {v['other_error']} | {v['accepted']} |"
        for kind, v in kinds.items()
    ]
    return lines + [""]


def environment() -> dict:
    import platform

    from mmtrt.bench.report import cpu_model

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "load_average_at_start": load,
    }


# --------------------------------------------------------------------------- the whole run


def _export(out: Path) -> Path:
    """A seeded random checkpoint exported with the mmtrt CLI (no TensorRT engines)."""
    mmtrt = [sys.executable, "-c", "from mmtrt.cli import main; main()"]
    ckpt = out / "init.pt"
    subprocess.run(mmtrt + ["init", str(ckpt)], check=True)
    # the image gate is fitted on synthetic chest X-rays (the soak sends random tensors: a
    # refused image is still an answer)
    subprocess.run(
        mmtrt + ["synth", str(out / "data"), "--n-cls", "12", "--n-seg", "0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        mmtrt
        + [
            "export",
            str(ckpt),
            "--out",
            str(out / "export"),
            "--no-engines",
            "--ood-data",
            str(out / "data" / "cls"),
        ],
        check=True,
    )
    return out / "export"


def run_soak(
    *,
    minutes: float,
    out: Path,
    command: str,
    concurrency: int = 16,
    export: Path | None = None,
    window_s: float = 10.0,
    bad_every: int = 10,
    warmup_s: float = 10.0,
    ort_threads: int = 1,
    max_queue_delay_us: int = 2000,
    say: Callable[[str], None] = print,
) -> bool:
    """The soak as a benchmark: a repository of ``export`` (default: ``mmtrt init`` + ``mmtrt
    export`` into a temporary folder) with the soak's small file-size limit, its server, the load
    for ``minutes``, and the report in ``out``.json and ``out``.md. True when nothing was lost,
    no client hung and every bad request was rejected as invalid input (a last line says so,
    with the memory growth)."""
    from mmtrt.bench.runner import xray_pool
    from mmtrt.serving import TritonServer, build_repository
    from mmtrt.serving.settings import ImageLimits

    work = Path(tempfile.mkdtemp(prefix="mmtrt-soak-"))
    try:
        export_dir = export or _export(work)
        repo = build_repository(
            export_dir,
            work / "repo",
            ort_threads=ort_threads,
            max_queue_delay_us=max_queue_delay_us,
            image_limits=ImageLimits(max_bytes=SOAK_MAX_IMAGE_BYTES),
        )
        pool = xray_pool(16)
        refs = reference_outputs(export_dir / "multimix.onnx", pool)
        env = environment()
        seconds = 60.0 * minutes
        with TritonServer(repo, log_file=work / "triton.log") as server:
            env["server"] = (
                f"tritonserver (bundled nvidia-pytriton 0.7.0 = Triton 2.51) pid "
                f"{server.pid}, cpu flavour, ort_intra_op_threads {ort_threads}, "
                f"max_batch 8, max_queue_delay {max_queue_delay_us} us, {IMAGE_MODEL} limits "
                f"{SOAK_MAX_IMAGE_BYTES // 2**20} MiB a file, 36 million pixels"
            )
            say(f"server ready (pid {server.pid}); {concurrency} clients for {seconds:.0f} s")
            last = [0.0]

            def progress(t, done, bad, rss):
                if t - last[0] >= 30 or t < 1:
                    last[0] = t
                    say(f"  {t:6.0f} s  {done:6d} requests  {bad} failed/wrong  RSS {rss / 2**20:.0f} MiB")

            figures = soak(
                server.http_url,
                server.grpc_url,
                pool=pool,
                references=refs,
                seconds=seconds,
                concurrency=concurrency,
                server_pid=server.pid,
                window_s=window_s,
                warmup_s=warmup_s,
                progress=progress,
                bad_every=bad_every,
            )
            figures["server_alive_after"] = server.is_running()
            figures["server_log_errors"] = server.log_errors()[:10]
        figures["environment"] = env
        figures["command"] = command
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
        text = markdown(figures, command=command, environment=env)
        out.with_suffix(".md").write_text(text)
        say(text)
        misanswered = sum(v["sent"] - v["rejected"] for v in figures["bad_requests"].values())
        ok = figures["lost"] == 0 and figures["hung_clients"] == 0 and misanswered == 0
        growth = (figures["memory"] or {}).get("growth_after_warmup")
        say(
            f"{'PASS' if ok and (growth is None or growth < 0.10) else 'FAIL'}: "
            f"{figures['ok']} served, {figures['lost']} lost, {misanswered} bad requests not "
            "rejected as invalid input, memory growth "
            f"{'-' if growth is None else f'{100 * growth:+.2f} %'}"
        )
        return ok
    finally:
        shutil.rmtree(work, ignore_errors=True)
