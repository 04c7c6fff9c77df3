"""Several servers, one client: ``mmtrt infer --url A --url B ...``.

:func:`infer_files_failover` sends the batches of one run to several Triton servers at once (one
worker thread and one tritonclient client per server: the HTTP client is not thread-safe) and
fails over:

- a server is used only once it answers ``/v2/health/ready`` (gRPC ``ServerReady``) and serves
  the model with the same outputs and max_batch_size as the others;
- a batch whose request fails transiently (:mod:`mmtrt.serving.faults`: the server died or went
  away, a 5xx, a deadline) goes back to the front of the queue and is sent again by the next free
  server; its server is probed for readiness again with a doubling back-off (``backoff_s``, then
  twice as long ...) and given up after ``retries`` failures in a row;
- a batch the server rejects as invalid input is that batch's error and is never sent again;
- every batch is answered (or fails) exactly once: a batch is either queued or held by one worker,
  and its results are written once, by the calling thread, which also renders the overlays
  (matplotlib stays on one thread). Each image's JSON names the server that answered it.

When every server has been given up, the batches not answered yet fail with a message saying so.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .faults import INVALID, TRANSIENT, classify
from .infer import (
    ImageResult,
    InferError,
    Loaded,
    _client_module,
    _output_stems,
    _short,
    batch_request,
    capped_batch_size,
    connect,
    model_routes,
    parse_url,
    plan_batches,
    read_batch,
    send_modes,
    write_result,
)

__all__ = ["Endpoint", "infer_files_failover", "probe_ready"]


@dataclass
class Endpoint:
    """One server of a run, and what happened to it."""

    url: str
    protocol: str
    answered_batches: int = 0
    answered_images: int = 0
    failures: int = 0  # transient failures in a row
    total_failures: int = 0
    gave_up: bool = False
    reason: str = ""


@dataclass
class _Batch:
    send: str  # "tensor" or "bytes": the route it takes
    indices: list[int]
    attempts: int = 0
    loaded: list[Loaded] | None = None
    servers: list[str] = field(default_factory=list)  # every server it was sent to, in order


def probe_ready(url: str, protocol: str, headers: dict | None = None) -> str | None:
    """None when the server at ``url`` is live and ready (``/v2/health/ready``), else why not."""
    try:
        client = connect(url, protocol, retries=0, headers=headers)
    except InferError as e:
        return str(e)
    client.close()
    return None


def infer_files_failover(
    paths: Sequence[Path],
    *,
    urls: Sequence[str],
    protocol: str,
    model: str = "multimix",
    batch_size: int = 8,
    out: Path | None = None,
    overlays: bool = True,
    headers: dict | None = None,
    retries: int = 5,
    backoff_s: float = 0.5,
    say: Callable[[str], None] = lambda _m: None,
    endpoints_out: list | None = None,
    dicom_out: Path | None = None,
    checkpoint_sha256: str | None = None,
    send: str = "auto",
) -> list[ImageResult]:
    """:func:`mmtrt.serving.infer.infer_files` over several servers (``urls``), with fail-over
    (module docstring); ``send`` as there (tensors, the files' bytes, or auto: DICOM files as
    bytes). ``endpoints_out``, when given, receives the :class:`Endpoint` of every server
    (answered batches, failures). Raises InferError when no server is ready at the start after
    ``retries`` rounds of probing, or the servers serve different models."""
    if not urls:
        raise InferError("no server given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for u in urls:
        parse_url(u, protocol)  # an unusable address is refused at once
    if len({parse_url(u, protocol)[0] for u in urls}) != len(urls):
        raise InferError(f"the same server is given twice in {list(urls)}")
    module = _client_module(protocol)
    paths = [Path(p) for p in paths]
    modes = send_modes(paths, send, model)
    endpoints = [Endpoint(u, protocol) for u in urls]
    if endpoints_out is not None:
        endpoints_out.extend(endpoints)

    # --- readiness at the start: the model's interface from the first ready server
    delay = float(backoff_s)
    reference = None
    for attempt in range(int(retries) + 1):
        reasons = []
        for ep in endpoints:
            try:
                client = connect(ep.url, protocol, retries=0, headers=headers)
            except InferError as e:
                reasons.append(f"{ep.url}: {e}")
                continue
            try:
                reference, modes = model_routes(client, protocol, model, modes, send, headers, say)
            finally:
                client.close()
            break
        if reference is not None:
            break
        if attempt < retries:
            say(f"no server ready yet ({'; '.join(reasons)}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay *= 2
    if reference is None:
        raise InferError(f"none of the servers {list(urls)} is ready over {protocol}: {'; '.join(reasons)}")
    batch_size = capped_batch_size(batch_size, reference.values(), say)
    stems = _output_stems(paths)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    results = [ImageResult(p) for p in paths]
    batches = [_Batch(kind, indices) for kind, indices in plan_batches(modes, batch_size)]
    max_attempts = (int(retries) + 1) * len(endpoints)

    queue: collections.deque[_Batch] = collections.deque(batches)
    cond = threading.Condition()
    done: collections.deque = collections.deque()  # (batch, outputs | None, error | None, url)
    finished = [0]
    stop = threading.Event()
    live_workers = [len(endpoints)]

    def finish(batch: _Batch, got, error, url) -> None:
        with cond:
            done.append((batch, got, error, url))
            finished[0] += 1
            cond.notify_all()

    def wait(seconds: float) -> None:
        stop.wait(seconds)

    def worker(ep: Endpoint) -> None:
        client = None
        try:
            while not stop.is_set():
                if client is None:
                    try:
                        client = connect(ep.url, protocol, retries=0, headers=headers)
                    except InferError as e:  # not reachable or not ready: probe again later
                        ep.failures += 1
                        ep.total_failures += 1
                        ep.reason = _short(e)
                        if ep.failures > retries:
                            ep.gave_up = True
                            say(
                                f"giving up on server {ep.url} after {ep.failures} failed attempt(s): {ep.reason}"
                            )
                            return
                        wait(backoff_s * 2 ** (ep.failures - 1))
                        continue
                    try:  # the same models as the first server, taking the same kinds of input
                        info, _ = model_routes(client, protocol, model, modes, "tensor", headers, say)
                    except InferError as e:  # ready, but without the model: never usable
                        info, ep.reason = None, str(e)
                    if info != reference:
                        ep.gave_up = True
                        if info is not None:
                            ep.reason = (
                                f"serves model '{model}' as {list(info.values())}, the others as "
                                f"{list(reference.values())}"
                            )
                        say(f"server {ep.url}: {ep.reason}; not using it")
                        return
                    if ep.total_failures:
                        say(f"server {ep.url} is ready again")
                with cond:
                    while not queue and finished[0] < len(batches) and not stop.is_set():
                        cond.wait(0.2)
                    if not queue:
                        return
                    batch = queue.popleft()
                route = reference[batch.send]
                if batch.loaded is None:
                    batch.loaded = read_batch(
                        paths, batch.indices, results, say, with_bytes=route.send == "bytes"
                    )
                if not batch.loaded:
                    finish(batch, None, None, None)
                    continue
                inputs, requested = batch_request(module, route, batch.loaded)
                batch.attempts += 1
                batch.servers.append(ep.url)
                try:
                    response = client.infer(route.model, inputs, headers=headers, outputs=requested)
                    got = {o: response.as_numpy(o) for o in route.outputs}
                except Exception as e:  # noqa: BLE001 - sorted below
                    kind = classify(e)
                    if kind != TRANSIENT:
                        what = "rejected as invalid input" if kind == INVALID else "failed"
                        finish(batch, None, f"{what} by {ep.url}: {_short(e)}", ep.url)
                        continue
                    ep.failures += 1
                    ep.total_failures += 1
                    ep.reason = _short(e)
                    with cond:
                        if batch.attempts >= max_attempts:
                            gave = True
                        else:
                            gave = False
                            queue.appendleft(batch)  # the next free server sends it again
                            cond.notify_all()
                    if gave:
                        finish(
                            batch,
                            None,
                            f"still failing after {batch.attempts} attempt(s): {_short(e)}",
                            ep.url,
                        )
                    say(
                        f"server {ep.url} ({protocol}) failed a batch of {len(batch.loaded)} image(s): "
                        f"{_short(e)}; "
                        + ("giving the batch up" if gave else "it goes to the next free server")
                    )
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass
                    client = None
                    if ep.failures > retries:
                        ep.gave_up = True
                        say(f"giving up on server {ep.url} after {ep.failures} failure(s) in a row")
                        return
                    wait(backoff_s * 2 ** (ep.failures - 1))
                    continue
                ep.failures = 0
                ep.answered_batches += 1
                ep.answered_images += len(batch.loaded)
                finish(batch, got, None, ep.url)
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
            with cond:
                live_workers[0] -= 1
                cond.notify_all()

    threads = [threading.Thread(target=worker, args=(ep,), daemon=True) for ep in endpoints]
    for t in threads:
        t.start()
    written = 0
    try:
        while True:
            with cond:
                while not done and finished[0] < len(batches) and live_workers[0] > 0:
                    cond.wait(0.5)
                items = list(done)
                done.clear()
                over = finished[0] >= len(batches) or live_workers[0] == 0
            for batch, got, error, url in items:
                route = reference[batch.send]
                dicom = (dicom_out, (route.model, None, checkpoint_sha256)) if dicom_out is not None else None
                _write_batch(
                    batch, got, error, url, results, stems, out, overlays, route, protocol, dicom, say
                )
                written += 1
            if over and not done:
                break
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        for t in threads:
            t.join(30)
    unanswered = [b for b in batches if not _settled(b, results)]
    if unanswered:
        reasons = "; ".join(f"{ep.url}: {ep.reason}" for ep in endpoints)
        n = sum(len(b.indices) for b in unanswered)
        for b in unanswered:
            for i in b.indices:
                if results[i].error is None and results[i].probs is None:
                    results[i].error = f"{paths[i]}: not answered: every server was given up ({reasons})"
        say(f"error: giving up: no server left ({reasons}); {n} image(s) not answered")
    return results


def _settled(batch: _Batch, results: list[ImageResult]) -> bool:
    return all(results[i].probs is not None or results[i].error is not None for i in batch.indices)


def _write_batch(batch, got, error, url, results, stems, out, overlays, route, protocol, dicom, say):
    loaded = batch.loaded or []
    if error is not None:
        for x in loaded:
            results[x.index].error = f"{results[x.index].source}: inference failed: {error}"
        say(f"error: a batch of {len(loaded)} image(s) failed: {error}")
    elif got is not None:
        for j, x in enumerate(loaded):
            write_result(
                results[x.index],
                x.pixels,
                {o: got[o][j] for o in got},
                out=out,
                stem=stems[x.index],
                overlays=overlays,
                record=dict(model=route.model, url=url, protocol=protocol, sent=route.send),
                server={"attempts": batch.attempts, "tried": list(batch.servers)},
                dicom=dicom,
                say=say,
            )
    batch.loaded = None  # the images are no longer needed
