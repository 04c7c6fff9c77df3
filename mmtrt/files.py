"""Files on disk: hashing, atomic writes and atomic folder swaps (no torch import here)."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import tempfile
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Call `write(file_object)` on a temporary file beside `path`, fsync it, then rename it over
    `path`: readers see the old file or the complete new one, never a half-written one. A write
    that runs out of space raises OSError(ENOSPC or EFBIG) naming `path`; the old file stays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        out_of_space = _out_of_space(exc, Path(tmp))  # before the unlink frees the space
        Path(tmp).unlink(missing_ok=True)
        if out_of_space is None:
            raise
        code, why = out_of_space
        raise OSError(code, f"cannot write {path}: {why}; the previous file is unchanged", str(path)) from exc


def atomic_write_text(path: Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8); returns ``path``."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return Path(path)


def _out_of_space(exc: BaseException, tmp: Path) -> tuple[int, str] | None:
    """(errno, reason) when a failed write ran out of room, else None. Writers that keep their
    own buffers (torch.save's zip writer) report a short write as a RuntimeError ("unexpected
    pos N vs M") and drop the errno, so the file-size limit and the free space are looked at."""
    code = getattr(exc, "errno", None)
    if not isinstance(exc, Exception) or (
        isinstance(exc, OSError) and code not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    ):
        return None
    try:
        written = tmp.stat().st_size
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code == errno.EFBIG or (limit != resource.RLIM_INFINITY and written >= limit):
        return errno.EFBIG, f"file too large (the process may write at most {limit} bytes a file)"
    if code in (errno.ENOSPC, errno.EDQUOT) or free < (1 << 20):
        return errno.ENOSPC, f"no space left on {tmp.parent} ({free} bytes free)"
    return None


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files that writers of `path` killed mid-write left beside it
    (``.<name>.*.tmp``: a SIGKILL gives atomic_write no chance to clean up). Call it only where
    no other writer of `path` can be running."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


#: The file mmtrt leaves in every folder it writes whole (an export, a repository, a failed export
#: kept for inspection). Replacing a folder (`--overwrite`) is allowed only where it is present:
#: a mistyped --out must not delete a folder mmtrt did not write.
FOLDER_MARK = ".mmtrt-folder"


class NotOurFolder(FileExistsError):
    """A folder that would be replaced was not written by mmtrt (the message says which)."""


def written_by_mmtrt(folder: Path) -> bool:
    """True for a real folder (not a link) holding mmtrt's mark as a regular file."""
    folder = Path(folder)
    mark = folder / FOLDER_MARK
    return folder.is_dir() and not folder.is_symlink() and mark.is_file() and not mark.is_symlink()


def check_replaceable(out: Path) -> None:
    """Raise NotOurFolder unless ``out`` is absent, an empty folder, or one that mmtrt wrote."""
    out = Path(out)
    if out.is_symlink():
        raise NotOurFolder(f"{out} is a symbolic link: not replaced (give the folder itself)")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())) or written_by_mmtrt(out):
        return
    raise NotOurFolder(
        f"{out} was not written by mmtrt (it has no {FOLDER_MARK}): not replaced; "
        "remove it yourself or choose another folder"
    )


def move_folder_into_place(staging: Path, out: Path, *, writer: str = "mmtrt") -> None:
    """Mark a completely written ``staging`` folder as mmtrt's and rename it to ``out``,
    replacing an existing ``out`` (only one mmtrt wrote, see check_replaceable) by a swap: never a
    half-replaced folder."""
    check_replaceable(out)
    atomic_write(Path(staging) / FOLDER_MARK, lambda fh: fh.write(f"written by {writer}\n".encode()))
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
