"""The node's durable spool: a received instance is on disk (fsync + atomic rename, folder
fsynced) before its C-STORE success is answered. Layout under the spool root:

- ``incoming/<SOP Instance UID>.dcm``: received, not yet processed (found again after a restart);
- ``done/``: processed, results acknowledged by every destination;
- ``failed/<name>.dcm`` + ``failed/<name>.reason.txt``: gave up, with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mmtrt.files import atomic_write, atomic_write_text

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the rename lives in the folder's entry)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_name(sop_instance_uid: str | None, data: bytes) -> str:
    """A file name from the SOP Instance UID when it is a valid UID (a resend replaces the same
    file), else from the bytes' hash: never a path taken from the peer as it is."""
    uid = str(sop_instance_uid or "").strip()
    if _UID.match(uid) and len(uid) <= 64:
        return f"{uid}.dcm"
    return f"sha256-{hashlib.sha256(data).hexdigest()}.dcm"


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        for folder in (self.incoming, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def store(self, data: bytes, sop_instance_uid: str | None) -> Path:
        """Write one received instance (a DICOM file's bytes) durably into ``incoming/``."""
        path = self.incoming / spool_name(sop_instance_uid, data)
        atomic_write(path, lambda fh: fh.write(data))
        os.chmod(path, 0o600)
        _fsync_folder(self.incoming)
        return path

    def pending(self) -> list[Path]:
        """The instances waiting in ``incoming/``, oldest first (left there by a stopped node too)."""
        files = [p for p in self.incoming.glob("*.dcm") if not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))

    def finish(self, path: Path) -> Path:
        """Move a processed instance to ``done/`` (its results were acknowledged)."""
        return self._move(path, self.done)

    def fail(self, path: Path, reason: str) -> Path:
        """Move an instance to ``failed/`` with ``<name>.reason.txt`` saying why."""
        atomic_write_text(self.failed / f"{Path(path).stem}.reason.txt", reason.rstrip() + "\n")
        return self._move(path, self.failed)

    def _move(self, path: Path, folder: Path) -> Path:
        target = folder / Path(path).name
        os.replace(path, target)
        _fsync_folder(folder)
        _fsync_folder(Path(path).parent)
        return target
