"""Where the node sends its results: an AE by C-STORE (pynetdicom) or a DICOMweb root by STOW-RS
(:func:`mmtrt.dicomweb.store_results`). :meth:`send` takes the results of several images (a list
of file lists) and answers per image: ``None`` once the destination acknowledged every file, else
why not: a :class:`DeliveryError` saying whether trying again later may help (``transient``) or
not (the destination refuses these results), or the ``OSError`` met reading the files.
C-STORE sends them over a few associations at once (an archive that fsyncs each instance answers
each association in turn), the files as they are on disk (no decoding)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: C-STORE statuses that acknowledge the instance (PS3.4 B.2.3: success, and the warnings
#: "coercion of data elements", "elements discarded", "data set does not match SOP class")
ACKNOWLEDGED = {0x0000, 0xB000, 0xB006, 0xB007}
_STORE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@\[\]]+):(?P<port>[0-9]{1,5})$")


class DeliveryError(RuntimeError):
    """A destination did not acknowledge the results; ``transient``: it may later (unreachable,
    association refused, out of resources, HTTP 5xx) rather than refusing them for good."""

    def __init__(self, message: str, *, transient: bool, unreached: bool = False):
        super().__init__(message)
        self.transient = transient
        self.unreached = unreached  # the destination was not reached at all


@dataclass(frozen=True)
class CStoreDestination:
    """An AE (``ae_title`` at ``host``:``port``) the results are C-STOREd to, the node calling as
    ``calling_ae`` over at most ``associations`` associations at once."""

    host: str
    port: int
    ae_title: str
    calling_ae: str = "MMTRT"
    timeout_s: float = 30.0
    associations: int = 4

    @classmethod
    def parse(cls, text: str, calling_ae: str = "MMTRT") -> CStoreDestination:
        """``AET@HOST:PORT`` (an IPv6 host in brackets); ValueError saying what is wrong."""
        m = _STORE.match(text.strip())
        if not m or not m["aet"].strip() or not 1 <= int(m["port"]) <= 65535:
            raise ValueError(f"{text!r} is not AET@HOST:PORT (AE title 1 to 16 characters, port 1 to 65535)")
        return cls(m["host"].strip("[]"), int(m["port"]), m["aet"].strip(), calling_ae)

    def __str__(self) -> str:
        return f"C-STORE {self.ae_title}@{self.host}:{self.port}"

    def send(self, results: Sequence[Sequence[Path]]) -> list[Exception | None]:
        """The images dealt round-robin to up to ``associations`` associations, sent at once."""
        from concurrent.futures import ThreadPoolExecutor

        n = max(1, min(self.associations, len(results)))
        outcomes: list[Exception | None] = [None] * len(results)
        with ThreadPoolExecutor(n, thread_name_prefix="mmtrt-c-store") as pool:
            for k, part in enumerate(
                pool.map(self._send_over_one_association, [results[k::n] for k in range(n)])
            ):
                outcomes[k::n] = part
        return outcomes

    def _send_over_one_association(self, results: Sequence[Sequence[Path]]) -> list[Exception | None]:
        from pydicom.filereader import read_file_meta_info
        from pynetdicom import AE, _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # a file is sent as stored, not decoded and encoded again

        outcomes: list[Exception | None] = [None] * len(results)
        contexts = {}
        for i, files in enumerate(results):
            try:
                for path in files:
                    meta = read_file_meta_info(path)
                    contexts[meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID] = None
            except OSError as e:
                outcomes[i] = e
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except OSError as e:
            return self._all(
                outcomes, DeliveryError(f"{self}: cannot connect: {e}", transient=True, unreached=True)
            )
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            message = f"{self}: association {why} (is it listening, and does it know AE {self.calling_ae}?)"
            return self._all(outcomes, DeliveryError(message, transient=True, unreached=True))
        try:
            for i, files in enumerate(results):
                if outcomes[i] is None:
                    if not assoc.is_established:  # lost on an earlier image: every later one waits
                        return self._all(outcomes, DeliveryError(f"{self}: association lost", transient=True))
                    outcomes[i] = self._store(assoc, files)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    def _store(self, assoc, files: Sequence[Path]) -> Exception | None:
        """C-STORE one image's result files over ``assoc``; why not all were acknowledged."""
        for path in files:
            name = Path(path).name
            try:
                status = assoc.send_c_store(Path(path))
            except OSError as e:  # the file unreadable (made again), or the link lost (later)
                return e if assoc.is_established else DeliveryError(f"{self}: {name}: {e}", transient=True)
            except (RuntimeError, ValueError) as e:  # no accepted context, lost link
                return DeliveryError(f"{self}: {name}: {e}", transient=not isinstance(e, ValueError))
            if "Status" not in status:  # no answer: time-out, abort, connection lost
                return DeliveryError(f"{self}: {name}: no C-STORE response", transient=True)
            code = int(status.Status)
            if code not in ACKNOWLEDGED:
                comment = str(status.get("ErrorComment", "") or "")
                # 0xA7xx out of resources may pass; 0xA9xx / 0xCxxx refuse these data for good
                return DeliveryError(
                    f"{self}: {name} refused with status 0x{code:04X}" + (f" ({comment})" if comment else ""),
                    transient=(code & 0xFF00) == 0xA700,
                )
        return None

    @staticmethod
    def _all(outcomes: list[Exception | None], error: DeliveryError) -> list[Exception | None]:
        """``error`` for every image that has no outcome of its own yet."""
        return [error if outcome is None else outcome for outcome in outcomes]


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb root the results are stored to with STOW-RS."""

    url: str

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"

    def send(self, results: Sequence[Sequence[Path]]) -> list[Exception | None]:
        """One STOW-RS request per image; once the archive is not reached, the later images
        are not tried (they would wait for the same time-out)."""
        from mmtrt.dicomweb import DicomWebError, store_results

        outcomes: list[Exception | None] = []
        for files in results:
            if outcomes and isinstance(outcomes[-1], DeliveryError) and outcomes[-1].unreached:
                outcomes.append(outcomes[-1])
                continue
            try:
                store_results(self.url, files, say=lambda _line: None)
            except DicomWebError as e:
                # not reached (no status), or the archive failing (5xx, 408, 429): later; other 4xx: never
                transient = e.status is None or e.status >= 500 or e.status in (408, 429)
                outcomes.append(DeliveryError(str(e), transient=transient, unreached=e.status is None))
            except OSError as e:
                outcomes.append(e)
            else:
                outcomes.append(None)
        return outcomes
