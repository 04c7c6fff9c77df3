"""DICOMweb: a study's images pulled from an archive (QIDO-RS + WADO-RS) and results pushed back
(STOW-RS), through dicomweb-client.

What is pulled: every instance of the study (or of one series) except the objects that are not
images to classify: Segmentations, Structured Reports, presentation states, key-object
selections, and Secondary Captures (mmtrt itself stores its overlays as Secondary Captures in
the same study, so a second run must not classify them). Everything else goes to `mmtrt infer`
as if given as files, where the input gate refuses what is no frontal chest radiograph (a CT
slice, a lateral view) with the reason.

The archive is the operator's own, but its answers are still bounded: at most
:data:`MAX_INSTANCES` instances a study and :data:`MAX_INSTANCE_BYTES` an instance, refused
before they are written. The pulled files hold patients' data: they are written 0600 into a 0700
temporary folder that :class:`PulledStudy` removes when done.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filebase import DicomBytesIO

from mmtrt.files import atomic_write

__all__ = [
    "MAX_INSTANCES",
    "MAX_INSTANCE_BYTES",
    "DicomWebError",
    "PulledStudy",
    "pull_study",
    "store_results",
]

MAX_INSTANCES = 2000
MAX_INSTANCE_BYTES = 64 << 20  # the decoder's own limit on a file (--max-image-bytes' default)

# SOP classes that are not images to classify (prefixes of the SOP Class UID)
_NOT_TO_CLASSIFY = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
}
_TAG = {"study": "0020000D", "series": "0020000E", "sop_instance": "00080018", "sop_class": "00080016"}


class DicomWebError(RuntimeError):
    """A DICOMweb request failed or its answer cannot be used; the message names the URL.
    ``status``: the HTTP status the archive answered, None when it gave none (not reached, or
    an answer that cannot be used)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _client(url: str):
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as e:  # a dependency of mmtrt; missing only in a broken environment
        raise DicomWebError(f"dicomweb-client is not installed ({e}): pip install dicomweb-client") from None
    client = DICOMwebClient(url=url.rstrip("/"))
    # a busy or restarting archive gets two more tries (1 s and 2 s later), not the library's 30 s
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
    return client


def _value(record: dict, key: str) -> str | None:
    values = record.get(_TAG[key], {}).get("Value") or [None]
    return values[0]


def _skipped_kind(sop_class: str | None) -> str | None:
    for prefix, kind in _NOT_TO_CLASSIFY.items():
        if sop_class and (sop_class == prefix or (prefix.endswith(".") and sop_class.startswith(prefix))):
            return kind
    return None


def _failure(url: str, what: str, e: Exception) -> DicomWebError:
    response = getattr(e, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else type(e).__name__
    code = int(response.status_code) if response is not None else None
    return DicomWebError(f"DICOMweb {url}: {what} failed: {status}: {str(e)[:300]}", code)


@dataclass
class PulledStudy:
    """The files of a pulled study, in a private temporary folder; use it as a context manager
    (or call :meth:`remove`) so the patients' data does not stay on disk."""

    folder: Path
    files: list[Path]
    skipped: list[str]  # "<SOP Instance UID>: <kind>" of each instance not pulled

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PulledStudy:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def pull_study(
    url: str, study: str, series: str | None = None, *, say: Callable[[str], None] = print
) -> PulledStudy:
    """The instances of ``study`` (only ``series`` when given) that may be images to classify,
    listed with QIDO-RS and retrieved with WADO-RS from the DICOMweb root ``url``, as
    ``<SOP Instance UID>.dcm`` files. Raises DicomWebError naming the URL and the problem."""
    client = _client(url)
    where = f"study {study}" + (f" series {series}" if series else "")
    try:
        records = client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series, limit=MAX_INSTANCES + 1
        )
    except Exception as e:  # requests' HTTPError / ConnectionError, or an unreadable answer
        raise _failure(url, f"QIDO-RS search of {where}", e) from None
    if not records:
        raise DicomWebError(f"DICOMweb {url}: {where} has no instances")
    if len(records) > MAX_INSTANCES:
        raise DicomWebError(
            f"DICOMweb {url}: {where} has more than {MAX_INSTANCES} instances: pull one series at a time (--series)"
        )
    folder = Path(tempfile.mkdtemp(prefix="mmtrt-dicomweb-"))  # 0700: the files hold patients' data
    pulled = PulledStudy(folder, [], [])
    try:
        for record in records:
            uids = {key: _value(record, key) for key in ("study", "series", "sop_instance")}
            if not all(uids.values()):
                raise DicomWebError(f"DICOMweb {url}: a QIDO-RS answer of {where} lacks a UID: {record}")
            kind = _skipped_kind(_value(record, "sop_class"))
            if kind:
                pulled.skipped.append(f"{uids['sop_instance']}: {kind}")
                continue
            pulled.files.append(_retrieve(client, url, uids, folder))
        say(
            f"pulled {len(pulled.files)} instance(s) of {where} from {url}"
            + (
                f"; skipped {len(pulled.skipped)} (not images to classify: "
                + ", ".join(sorted({s.split(": ", 1)[1] for s in pulled.skipped}))
                + ")"
                if pulled.skipped
                else ""
            )
        )
    except BaseException:
        pulled.remove()
        raise
    return pulled


def _retrieve(client, url: str, uids: dict[str, str], folder: Path) -> Path:
    uid = uids["sop_instance"]
    if not all(c.isdigit() or c == "." for c in uid) or len(uid) > 64:
        raise DicomWebError(f"DICOMweb {url}: SOP Instance UID {uid[:80]!r} is not a valid UID")
    try:
        dataset = client.retrieve_instance(uids["study"], uids["series"], uid)
    except Exception as e:
        raise _failure(url, f"WADO-RS retrieval of instance {uid}", e) from None
    buffer = DicomBytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    except Exception as e:  # e.g. no File Meta Information to write a part 10 file with
        raise DicomWebError(
            f"DICOMweb {url}: instance {uid} cannot be written as a DICOM file: {e}"
        ) from None
    data = buffer.getvalue()
    if len(data) > MAX_INSTANCE_BYTES:
        raise DicomWebError(
            f"DICOMweb {url}: instance {uid} is {len(data)} bytes, above {MAX_INSTANCE_BYTES}"
        )
    path = folder / f"{uid}.dcm"
    atomic_write(path, lambda fh: fh.write(data))
    return path


def store_results(url: str, paths: Sequence[Path], *, say: Callable[[str], None] = print) -> None:
    """STOW-RS ``paths`` (DICOM files mmtrt wrote) to the DICOMweb root ``url``, in one request.
    Raises DicomWebError naming the URL and what the archive answered."""
    if not paths:
        return
    import pydicom

    client = _client(url)
    datasets = [pydicom.dcmread(p) for p in paths]
    try:
        answer = client.store_instances(datasets=datasets)
    except Exception as e:
        raise _failure(url, f"STOW-RS of {len(datasets)} result(s)", e) from None
    failed = getattr(answer, "FailedSOPSequence", None) or []
    if failed:
        reasons = ", ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')} (0x{int(item.get('FailureReason', 0)):04X})"
            for item in failed
        )
        raise DicomWebError(
            f"DICOMweb {url}: the archive refused {len(failed)} of {len(datasets)} result(s): {reasons}",
            409,  # what STOW-RS answers when some instances failed (PS3.18 10.5.3)
        )
    say(f"stored {len(datasets)} result(s) with STOW-RS at {url}")
