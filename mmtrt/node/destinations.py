"""Where the node sends its results: an AE by C-STORE (pynetdicom) or a DICOMweb root by STOW-RS
(:func:`mmtrt.dicomweb.store_results`). Each :meth:`send` returns only once the destination has
acknowledged every file, else raises :class:`DeliveryError` saying whether trying again later
may help (``transient``) or not (the destination refuses these results)."""

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

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class CStoreDestination:
    """An AE (``ae_title`` at ``host``:``port``) the results are C-STOREd to, the node calling as
    ``calling_ae``."""

    host: str
    port: int
    ae_title: str
    calling_ae: str = "MMTRT"
    timeout_s: float = 30.0

    @classmethod
    def parse(cls, text: str, calling_ae: str = "MMTRT") -> CStoreDestination:
        """``AET@HOST:PORT`` (an IPv6 host in brackets); ValueError saying what is wrong."""
        m = _STORE.match(text.strip())
        if not m or not m["aet"].strip() or not 1 <= int(m["port"]) <= 65535:
            raise ValueError(f"{text!r} is not AET@HOST:PORT (AE title 1 to 16 characters, port 1 to 65535)")
        return cls(m["host"].strip("[]"), int(m["port"]), m["aet"].strip(), calling_ae)

    def __str__(self) -> str:
        return f"C-STORE {self.ae_title}@{self.host}:{self.port}"

    def send(self, paths: Sequence[Path]) -> None:
        import pydicom
        from pynetdicom import AE

        datasets = [pydicom.dcmread(p) for p in paths]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class, syntax in dict.fromkeys(
            (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets
        ):
            ae.add_requested_context(sop_class, syntax)
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        except OSError as e:
            raise DeliveryError(f"{self}: cannot connect: {e}", transient=True) from None
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise DeliveryError(
                f"{self}: association {why} (is it listening, and does it know AE {self.calling_ae}?)",
                transient=True,
            )
        try:
            for path, ds in zip(paths, datasets):
                try:
                    status = assoc.send_c_store(ds)
                except (OSError, RuntimeError, ValueError) as e:  # no accepted context, lost link
                    raise DeliveryError(
                        f"{self}: {Path(path).name}: {e}", transient=not isinstance(e, ValueError)
                    ) from None
                if "Status" not in status:  # no answer: time-out, abort, connection lost
                    raise DeliveryError(f"{self}: {Path(path).name}: no C-STORE response", transient=True)
                code = int(status.Status)
                if code not in ACKNOWLEDGED:
                    comment = str(status.get("ErrorComment", "") or "")
                    # 0xA7xx out of resources may pass; 0xA9xx / 0xCxxx refuse these data for good
                    raise DeliveryError(
                        f"{self}: {Path(path).name} refused with status 0x{code:04X}"
                        + (f" ({comment})" if comment else ""),
                        transient=(code & 0xFF00) == 0xA700,
                    )
        finally:
            if assoc.is_established:
                assoc.release()


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb root the results are stored to with STOW-RS."""

    url: str

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"

    def send(self, paths: Sequence[Path]) -> None:
        from mmtrt.dicomweb import DicomWebError, store_results

        try:
            store_results(self.url, paths, say=lambda _line: None)
        except DicomWebError as e:
            # not reached (no status), or the archive failing (5xx, 408, 429): later; other 4xx: never
            transient = e.status is None or e.status >= 500 or e.status in (408, 429)
            raise DeliveryError(str(e), transient=transient) from None
