"""The node's worker: spooled images -> Triton (:func:`mmtrt.serving.infer.infer_stream`, several
servers with fail-over) -> their DICOM results -> every destination -> ``done/``; each batch's
results are sent, on a thread of their own, while the next batches are inferred.

An image leaves ``incoming/`` only when each destination has acknowledged its results; until
then it stays, and a failure is sorted:

- **transient** (no Triton server could answer, a destination unreachable, busy or failing): the
  image stays in the spool and is tried again after a wait that doubles with each pass that
  fails in a row (:class:`~mmtrt.serving.client.Backoff`, 1 s .. 60 s by default), one log line
  per retry. Results already made are kept (in the worker's private folder) and only sent again,
  and a destination that acknowledged them is not sent them again;
- **permanent** (the file cannot be decoded, the server answers that the input is invalid, its
  results cannot be made, a destination refuses them for good): ``Spool.fail`` with the reason.

An image the input gate refuses (its header, or the image gate in the served model) gets no SEG,
SC or result SR but a *not-evaluated report* (:func:`mmtrt.dicom_results.make_not_evaluated_report`)
sent to the destinations like any result, so the study shows that it was looked at and why it
was not evaluated. Result UIDs come from the source and the model (:func:`mmtrt.dicom_results.result_uid`):
sending them again replaces rather than duplicates.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mmtrt.node.destinations import DeliveryError
from mmtrt.node.spool import Spool
from mmtrt.serving.client import Backoff, Servers

log = logging.getLogger("mmtrt.node")

RETRY_BACKOFF = Backoff(1.0, 60.0)


@dataclass
class _Ready:
    """The results of one spooled image, waiting to be acknowledged by every destination."""

    files: list[Path]
    acknowledged: set[int] = field(default_factory=set)  # indices of the destinations that did


@dataclass
class PassReport:
    """What one pass over the spool did."""

    finished: list[str] = field(default_factory=list)  # spool names sent everywhere -> done/
    failed: list[str] = field(default_factory=list)  # -> failed/
    waiting: dict[str, str] = field(default_factory=dict)  # name -> why it stays (transient)
    inferred: list[str] = field(default_factory=list)  # results made (sent in this pass or later)

    def merge(self, other: PassReport) -> None:
        self.finished += other.finished
        self.failed += other.failed
        self.waiting.update(other.waiting)
        self.inferred += other.inferred


class Worker:
    """Processes the spool's pending images; :meth:`run` loops until ``stop`` is set.

    ``servers``: makes the :class:`Servers` of a pass (a fresh one each time, so that servers
    given up in one pass are tried again in the next). ``destinations``: objects whose
    ``send(results)`` answers per image (:mod:`mmtrt.node.destinations`)."""

    def __init__(
        self,
        spool: Spool,
        servers: Callable[[], Servers],
        destinations: Sequence,
        *,
        batch_size: int = 8,
        max_per_pass: int = 256,
        checkpoint_sha256: str | None = None,
        relaxed: frozenset[str] = frozenset(),
        backoff: Backoff = RETRY_BACKOFF,
        poll_s: float = 1.0,
    ):
        if not destinations:
            raise ValueError("no destination: the results would have nowhere to go")
        self.spool = spool
        self.servers = servers
        self.destinations = list(destinations)
        self.batch_size = batch_size
        self.max_per_pass = max_per_pass
        self.checkpoint_sha256 = checkpoint_sha256
        self.relaxed = relaxed
        self.backoff = backoff
        self.poll_s = poll_s
        self._ready: dict[str, _Ready] = {}
        self._folder: Path | None = None
        self._passes = 0
        self._current: Servers | None = None

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Pass over the spool until ``stop`` is set: at once while images are finished, after
        ``poll_s`` when there is nothing to do, after the backoff when a pass left images waiting."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    report = self.run_once()
                except Exception as e:  # noqa: BLE001 - a bug must not end the node's worker
                    log.exception("worker pass failed: %s", e)
                    why = f"the pass failed: {type(e).__name__}: {e}"
                    report = PassReport(waiting={p.name: why for p in self.spool.pending()} or {"": why})
                if report.waiting:
                    failures += 1
                    delay = self.backoff.delay(failures)
                    why = "; ".join(sorted(set(report.waiting.values())))[:500]
                    log.warning(
                        "retrying %d image(s) in %.1f s (attempt %d): %s",
                        len(report.waiting),
                        delay,
                        failures,
                        why,
                    )
                    stop.wait(delay)
                else:
                    failures = 0
                    if not (report.finished or report.failed or report.inferred):
                        stop.wait(self.poll_s)
        finally:
            self.close()

    def interrupt(self) -> None:
        """Wake a pass that waits for a Triton server (on stopping)."""
        if self._current is not None:
            self._current.close()

    def close(self) -> None:
        """Remove the private folder of results not yet acknowledged (made again if needed)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._ready.clear()

    def results_folder(self) -> Path:
        """The private folder (0700) of the results not yet acknowledged."""
        if self._folder is None:  # mkdtemp: 0700, the results hold patients' data
            self._folder = Path(tempfile.mkdtemp(prefix="mmtrt-node-"))
        return self._folder

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> PassReport:
        """One pass: infer the pending images (at most ``max_per_pass``) and, on a thread of its
        own, send each batch's results as soon as they are made to the destinations, and the
        results made in earlier passes to those that have not acknowledged them yet; settle
        each image. Triton and the destinations work at the same time: neither waits for the
        other."""
        report, delivered = PassReport(), PassReport()
        pending = self.spool.pending()
        names = {p.name for p in pending}
        for name in [n for n in self._ready if n not in names]:  # gone meanwhile (operator)
            self._forget(name)
        ready = [p for p in pending if p.name in self._ready]
        to_infer = [p for p in pending if p.name not in self._ready][: self.max_per_pass]
        outbox: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        for path in ready:
            outbox.put(path)
        with ThreadPoolExecutor(1, thread_name_prefix="mmtrt-node-sender") as sender:
            sending = sender.submit(self._send_until_done, outbox, delivered)
            try:
                if to_infer:
                    self._infer(to_infer, report, outbox.put)
            finally:
                outbox.put(None)  # nothing more this pass
            sending.result()  # re-raises what went wrong while sending
        report.merge(delivered)
        self._remove_empty_pass_folders()
        return report

    def _infer(self, paths: list[Path], report: PassReport, send: Callable[[Path], None]) -> None:
        """Infer ``paths``; ``send`` each image whose results are made (or its not-evaluated
        report) as soon as they are."""
        from mmtrt.serving.infer import InferError, infer_stream

        self._passes += 1
        dicom_out = self.results_folder() / f"pass-{self._passes}" / "dicom"
        dicom_out.mkdir(parents=True)
        servers = self._current = self.servers()
        servers.say = lambda line: log.info("%s", line)
        settled: set[str] = set()
        try:
            for results in infer_stream(
                paths,
                servers,
                batch_size=self.batch_size,
                dicom_out=dicom_out,  # (no JSON or PNG: the DICOM results carry them)
                checkpoint_sha256=self.checkpoint_sha256,
                relaxed=self.relaxed,
            ):
                for r in results.values():
                    settled.add(r.source.name)
                    if self._settle(r, dicom_out, report):
                        send(r.source)
        except InferError as e:  # no server ready at all, or none serving the model: later
            for p in paths:
                if p.name not in settled:
                    report.waiting[p.name] = str(e)
        finally:
            servers.close()
            self._current = None

    def _settle(self, r, dicom_out: Path, report: PassReport) -> bool:
        """Sort one inferred image: its results ready to send (True), or waiting, or failed."""
        from mmtrt.dicom_results import DicomResultError, ResultInfo, write_not_evaluated

        name = r.source.name
        if r.error is not None:
            if r.transient:
                report.waiting[name] = r.error
            else:
                self._fail(r.source, r.error, report)
            return False
        if r.refused:
            info = ResultInfo(checkpoint_sha256=self.checkpoint_sha256)
            try:
                files = write_not_evaluated(
                    r.source, out=dicom_out, stem=r.source.stem, info=info, reason=r.refusal_reason
                )
            except DicomResultError as e:
                self._fail(r.source, f"refused by the input gate ({r.refusal_reason}); {e}", report)
                return False
            except OSError as e:
                report.waiting[name] = f"cannot write the not-evaluated report: {e}"
                return False
            log.info("not evaluated: %s: %s", name, r.refusal_reason)
        elif r.dicom_paths:
            files = list(r.dicom_paths)
        else:
            self._fail(r.source, "no DICOM results were made for it (is it a DICOM file?)", report)
            return False
        self._ready[name] = _Ready(files)
        report.inferred.append(name)
        return True

    def _send_until_done(self, outbox: queue.SimpleQueue, report: PassReport) -> None:
        """Deliver what arrives in ``outbox`` until None: all that waits there at once, in one
        send per destination. A destination not reached is not tried again in this pass (each
        try would wait for its time-out): its images wait for the next."""
        unreached: dict[int, DeliveryError] = {}
        more = True
        while more:
            paths = [outbox.get()]
            while not outbox.empty():
                paths.append(outbox.get())
            more = paths[-1] is not None
            paths = [p for p in paths if p is not None]
            if paths:
                self._deliver(paths, report, unreached)

    def _deliver(self, paths: list[Path], report: PassReport, unreached: dict[int, DeliveryError]) -> None:
        """Send the results of ``paths`` to each destination that has not acknowledged them (all
        of them in one call per destination), then settle each image."""
        for k, destination in enumerate(self.destinations):
            todo = [p for p in paths if p.name in self._ready and k not in self._ready[p.name].acknowledged]
            if not todo:
                continue
            if k in unreached:
                outcomes: list = [unreached[k]] * len(todo)
            else:
                outcomes = destination.send([self._ready[p.name].files for p in todo])
            for path, outcome in zip(todo, outcomes):
                ready = self._ready[path.name]
                if outcome is None:
                    ready.acknowledged.add(k)
                    log.info("sent %d result(s) of %s to %s", len(ready.files), path.name, destination)
                elif not isinstance(outcome, DeliveryError):  # the result files unreadable: make them again
                    report.waiting[path.name] = f"{destination}: cannot read the results: {outcome}"
                    self._forget(path.name)
                elif outcome.transient:
                    report.waiting[path.name] = str(outcome)
                    if outcome.unreached:
                        unreached[k] = outcome
                else:
                    done = [str(self.destinations[j]) for j in sorted(ready.acknowledged)]
                    acknowledged = f" (acknowledged by {', '.join(done)})" if done else ""
                    self._fail(path, f"{outcome}{acknowledged}", report)
        for path in paths:
            ready = self._ready.get(path.name)
            if ready is not None and len(ready.acknowledged) == len(self.destinations):
                self.spool.finish(path)
                self._forget(path.name)
                report.finished.append(path.name)

    def _fail(self, path: Path, reason: str, report: PassReport) -> None:
        log.error("failed: %s: %s", path.name, reason)
        self.spool.fail(path, reason)
        self._forget(path.name)
        report.failed.append(path.name)

    def _forget(self, name: str) -> None:
        ready = self._ready.pop(name, None)
        for p in ready.files if ready else ():
            p.unlink(missing_ok=True)

    def _remove_empty_pass_folders(self) -> None:
        """The folders of passes whose results were all acknowledged (or dropped)."""
        if self._folder is None:
            return
        for work in self._folder.glob("pass-*"):
            for folder in (work / "dicom", work):
                try:
                    folder.rmdir()
                except OSError:
                    break
