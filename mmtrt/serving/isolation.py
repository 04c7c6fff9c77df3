"""Private shared memory for a tritonserver: its own mount namespace with a 0700 tmpfs on /dev/shm.

The python backend passes every request's bytes (image files, DICOM with patient names) to its
stub processes through /dev/shm regions that it creates mode 0644 (``umask`` does not change
that), so on a shared host any local user could read them. A tritonserver started with
:func:`private_shm_preexec` runs in a mount namespace of its own where /dev/shm is a fresh tmpfs
(mode 0700, the size of the host's /dev/shm): its stubs inherit it, nobody outside sees its files
(``/proc/<pid>/root`` needs ptrace rights on the server), and the kernel frees it, with whatever
a crashed server left in it, when the last process of the namespace exits.

As root the namespace is a plain mount namespace; otherwise an unprivileged user namespace that
maps only the caller's own uid and gid (the server runs as that same user). Where neither is
allowed (a container without CAP_SYS_ADMIN whose seccomp profile refuses user namespaces,
``kernel.unprivileged_userns_clone=0``) :func:`private_shm` says why and the server uses the
host's /dev/shm.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PrivateShm", "private_shm", "private_shm_preexec"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_SHM = "/dev/shm"


@dataclass(frozen=True)
class PrivateShm:
    """How a server's /dev/shm is made private: ``kind`` is "mount namespace", "user namespace"
    or None (not possible here: ``reason`` says why)."""

    kind: str | None
    reason: str = ""


def _host_shm_bytes() -> int:
    try:
        st = os.statvfs(_SHM)
        return st.f_blocks * st.f_frsize or 64 << 20
    except OSError:
        return 64 << 20


def private_shm_preexec(kind: str) -> Callable[[], None]:
    """A preexec_fn that moves the child into a new mount namespace (``kind`` "user namespace":
    inside a new user namespace first) and mounts a 0700 tmpfs on /dev/shm there. Everything it
    needs is looked up here, in the parent."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare, mount = libc.unshare, libc.mount
    user = kind == "user namespace"
    uid, gid = os.getuid(), os.getgid()
    options = f"mode=0700,size={_host_shm_bytes()}".encode()

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def write(path: str, text: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"writing {path}: {e.strerror}") from None

    def preexec() -> None:
        check(unshare(_CLONE_NEWNS | (_CLONE_NEWUSER if user else 0)), "unshare")
        if user:  # the same user inside as outside, nothing else mapped
            write("/proc/self/setgroups", "deny")
            write("/proc/self/uid_map", f"{uid} {uid} 1")
            write("/proc/self/gid_map", f"{gid} {gid} 1")
        # private: the tmpfs must not propagate back to the host's /dev/shm
        check(mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
        check(mount(b"tmpfs", _SHM.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options), "mount tmpfs")

    return preexec


@functools.cache
def private_shm() -> PrivateShm:
    """Whether this process can start servers with a private /dev/shm, and how: tried once (in a
    forked child that exits at once), remembered for the process."""
    if not sys.platform.startswith("linux"):
        return PrivateShm(None, "not Linux")
    if not os.path.isdir(_SHM):
        return PrivateShm(None, f"{_SHM} does not exist")
    why = []
    kinds = ("mount namespace", "user namespace") if os.geteuid() == 0 else ("user namespace",)
    for kind in kinds:
        problem = _try_in_child(private_shm_preexec(kind))
        if not problem:
            return PrivateShm(kind)
        why.append(f"{kind}: {problem}")
    return PrivateShm(None, "; ".join(why))


def _try_in_child(preexec: Callable[[], None]) -> str:
    """Run ``preexec`` in a forked child: "" if it worked, else its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing but the attempt, then _exit
        try:
            preexec()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(write, str(getattr(e, "strerror", None) or e).encode()[:500])
            code = 1
        os._exit(code)
    os.close(write)
    try:
        message = os.read(read, 1000).decode("utf-8", "replace")
    finally:
        os.close(read)
    _, status = os.waitpid(pid, 0)
    return "" if os.waitstatus_to_exitcode(status) == 0 else (message or "failed")
