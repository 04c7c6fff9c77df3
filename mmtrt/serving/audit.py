"""The audit trail of the served models: one JSON line per image a graph model answered or the
input gate refused, saying which model (name, version, checkpoint sha256) answered which image
(its SOP Instance UID, or the sha256 of its file or of its tensor), for which request, with what
outcome and how long it took. Never a patient's name, ID or birth date: only UIDs and hashes.

One file per model instance, ``<folder>/<instance name>.jsonl`` (e.g. ``multimix_0_0.jsonl``):
several stub processes never write one file, so lines cannot interleave, and an instance keeps
its file across server restarts. Each file is rotated by size (``<name>.jsonl.1`` ... ``.N``,
the oldest dropped) with :class:`logging.handlers.RotatingFileHandler`; the folder is 0700 and
the files 0600, created without following a planted link.

Runs inside Triton's python-backend stub (copied beside the served models with the other modules
of :data:`mmtrt.serving.checks.BACKEND_MODULES`); standard library only.
"""

import datetime as _dt
import hashlib
import json
import logging
import logging.handlers
import os
import uuid


def source_of_tensor(image) -> dict:
    """The audit source of an image sent as a tensor (a numpy array): the sha256 of its bytes."""
    return {"tensor_sha256": hashlib.sha256(image.tobytes()).hexdigest()}


def new_request_id() -> str:
    """The id an audit line gets for a request that came without one."""
    return "server-" + uuid.uuid4().hex


class AuditLog:
    """The rotated JSON-lines file of one model instance (``instance``) in ``folder``."""

    def __init__(self, folder, instance, max_bytes, backups):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, f"{instance}.jsonl")
        # create it 0600 without following a planted link; the handler then appends to it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.umask(0o077)  # the rotated files too (this process writes nothing else)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"mmtrt.audit.{instance}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)

    def write(self, **record) -> None:
        """One line: ``record`` after the time (UTC, milliseconds)."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        self._logger.info(json.dumps({"time": now, **record}, separators=(",", ":")))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
