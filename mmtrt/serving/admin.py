"""The admin key: Triton's admin APIs restricted to the holders of a secret.

`mmtrt serve` restricts :data:`ADMIN_APIS` on HTTP (``--http-restricted-api``) and gRPC
(``--grpc-restricted-protocol``): a request to one of them must carry the header
:data:`HEADER` (over gRPC Triton expects it as ``triton-grpc-protocol-mmtrt-admin-key``) with the
key, else Triton refuses it (HTTP 403, gRPC UNAVAILABLE). Health, metadata and inference stay
open. Without the restriction any client could register shared-memory regions (Triton < 25.07:
write into the python backend's private memory), change the log file or trace settings, and
read the models' configuration and statistics.

The key is a per-run secret (:meth:`AdminKey.create`: a 0600 file in a 0700 folder, removed when
the server stops) unless the operator gives a key file (:meth:`AdminKey.load`). It is never
printed: command lines are shown through :func:`redact`. mmtrt's tools find the file through the
environment variable :data:`KEY_FILE_ENV` (:func:`admin_headers`).

tritonserver takes the key only on its command line, which any local user can read in
/proc/<pid>/cmdline unless /proc is mounted with ``hidepid`` (:func:`proc_hides_command_lines`):
the key keeps network clients out; on a shared host it keeps other local users out only with
hidepid.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ADMIN_APIS",
    "HEADER",
    "KEY_FILE_ENV",
    "AdminKey",
    "admin_headers",
    "proc_hides_command_lines",
    "redact",
]

ADMIN_APIS = ("shared-memory", "model-repository", "model-config", "logging", "trace", "statistics")
HEADER = "mmtrt-admin-key"
KEY_FILE_ENV = "MMTRT_ADMIN_KEY_FILE"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # what Triton's gRPC front end looks for
RESTRICT_FLAGS = {"http": "--http-restricted-api", "grpc": "--grpc-restricted-protocol"}
# What Triton parses unambiguously in <apis>:<key>=<value> and what a header value may hold.
_KEY_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


@dataclass(frozen=True)
class AdminKey:
    """A key file: ``path`` holds the secret; ``folder`` is the per-run folder :meth:`create`
    made (removed by :meth:`remove`), None for the operator's own file."""

    path: Path
    folder: Path | None = None

    @classmethod
    def create(cls) -> AdminKey:
        """A fresh random key in ``<temp>/mmtrt-serve-*/admin-key`` (folder 0700, file 0600)."""
        folder = Path(tempfile.mkdtemp(prefix="mmtrt-serve-"))  # 0700
        path = folder / "admin-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        return cls(path, folder)

    @classmethod
    def load(cls, path: Path) -> AdminKey:
        """The operator's key file, checked: a regular file that only its owner can read,
        holding one key of 16 to 512 characters from ``A-Z a-z 0-9 . _ ~ + / = -``."""
        key = cls(Path(path))
        key.secret()
        return key

    def secret(self) -> str:
        """The key itself (ValueError naming the problem if the file is not fit to hold it)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise ValueError(f"admin key file {self.path}: {e.strerror}") from None
        with os.fdopen(fd) as fh:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ValueError(f"admin key file {self.path} is not a regular file")
            if mode & 0o077:
                raise ValueError(
                    f"admin key file {self.path} is readable by other users (mode "
                    f"{stat.S_IMODE(mode):04o}): `chmod 600 {self.path}`"
                )
            text = fh.read(4096).strip()
        if not _KEY_CHARS.fullmatch(text):
            raise ValueError(
                f"admin key file {self.path} must hold one key of 16 to 512 characters from "
                "A-Z a-z 0-9 . _ ~ + / = - (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return text

    def tritonserver_args(self, operator_args: Sequence[str] = ()) -> list[str]:
        """The restriction flags for both protocols: :data:`ADMIN_APIS` that ``operator_args``
        (the operator's own tritonserver flags) do not already restrict, under this key."""
        secret = self.secret()
        args = []
        for flag in RESTRICT_FLAGS.values():
            taken = _restricted_apis(operator_args, flag)
            apis = [api for api in ADMIN_APIS if api not in taken]
            if apis:
                args.append(f"{flag}={','.join(apis)}:{HEADER}={secret}")
        return args

    def headers(self, protocol: str) -> dict[str, str]:
        """The header that opens the restricted APIs over ``protocol`` ("http" or "grpc")."""
        name = HEADER if protocol == "http" else GRPC_HEADER_PREFIX + HEADER
        return {name: self.secret()}

    def remove(self) -> None:
        """Delete the per-run folder (the operator's own file is left alone)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def admin_headers(protocol: str, key_file: str | os.PathLike | None = None) -> dict[str, str]:
    """The header for the restricted APIs of a server started by `mmtrt serve`, from
    ``key_file`` or the file :data:`KEY_FILE_ENV` names; {} when neither is given."""
    key_file = key_file or os.environ.get(KEY_FILE_ENV)
    return AdminKey.load(Path(key_file)).headers(protocol) if key_file else {}


def _restricted_apis(args: Iterable[str], flag: str) -> set[str]:
    apis: set[str] = set()
    for name, value in _flag_values(args):
        if name == flag:
            apis.update(a.strip() for a in value.partition(":")[0].split(","))
    return apis


def _flag_values(args: Iterable[str]):
    """(flag, value) of each ``--flag=value`` or ``--flag value`` in ``args``."""
    args = [str(a) for a in args]
    for i, arg in enumerate(args):
        if "=" in arg:
            name, _, value = arg.partition("=")
            yield name, value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            yield arg, args[i + 1]


def redact(args: Iterable[str]) -> list[str]:
    """``args`` with the key of every restriction flag replaced by ``***`` (for logs and
    messages): ``--http-restricted-api=<apis>:<key>=***``."""
    out: list[str] = []
    args = [str(a) for a in args]
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in RESTRICT_FLAGS.values():
            out.append(f"{name}={_redacted(value)}")
        elif i > 0 and args[i - 1] in RESTRICT_FLAGS.values():
            out.append(_redacted(arg))
        else:
            out.append(arg)
    return out


def _redacted(value: str) -> str:
    apis, colon, key_value = value.partition(":")
    key, eq, _secret = key_value.partition("=")
    return f"{apis}{colon}{key}{eq}***" if eq else "***"


def proc_hides_command_lines() -> bool:
    """Whether /proc is mounted with ``hidepid`` 1, 2 or 4 (``noaccess``, ``invisible``,
    ``ptraceable``): then other users cannot read this user's processes' command lines."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    hidden = False
    for line in mounts.splitlines():  # the last mount on /proc is the one in use
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/proc" and fields[2] == "proc":
            options = dict(o.partition("=")[::2] for o in fields[3].split(","))
            hidden = options.get("hidepid", "0") not in ("0", "off")
    return hidden
