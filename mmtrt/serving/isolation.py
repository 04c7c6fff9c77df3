"""Private shared memory and a private network for a tritonserver: its own mount namespace with
a 0700 tmpfs on /dev/shm, and the network namespace of its guard.

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

Triton's HTTP front end parses whatever reaches its port (one chunked body aborts Triton 2.51),
so `mmtrt serve` lets nothing reach it directly: the nginx guard starts in a new network namespace
(:func:`private_network_preexec`; only loopback, up) holding listening sockets bound outside it,
and tritonserver enters that namespace (:func:`join_network_preexec`) before it makes its private
/dev/shm: its ports exist only there, for the guard.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Isolation",
    "join_network_preexec",
    "private_network",
    "private_network_preexec",
    "private_shm",
    "private_shm_preexec",
]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
_SHM = "/dev/shm"


@dataclass(frozen=True)
class Isolation:
    """How a server's /dev/shm (or its network) is made private: ``kind`` is "mount namespace"
    (root: plain namespaces), "user namespace" (inside a user namespace of its own) or None (not
    possible here: ``reason`` says why)."""

    kind: str | None
    reason: str = ""


def _host_shm_bytes() -> int:
    try:
        st = os.statvfs(_SHM)
        return st.f_blocks * st.f_frsize or 64 << 20
    except OSError:
        return 64 << 20


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f"writing {path}: {e.strerror}") from None


def _map_own_user(
    uid: int, gid: int, *, inside_uid: int | None = None, inside_gid: int | None = None
) -> None:
    """In a new user namespace: the caller's user and group, and nothing else, mapped (to the
    same ids inside unless told otherwise)."""
    inside_uid = uid if inside_uid is None else inside_uid
    inside_gid = gid if inside_gid is None else inside_gid
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{inside_uid} {uid} 1")
    _write("/proc/self/gid_map", f"{inside_gid} {gid} 1")


def private_shm_preexec(kind: str, *, joined: bool = False) -> Callable[[], None]:
    """A preexec_fn that moves the child into a new mount namespace (``kind`` "user namespace":
    inside a new user namespace first, unless ``joined``: the child already entered one with
    :func:`join_network_preexec`) and mounts a 0700 tmpfs on /dev/shm there. Everything it needs
    is looked up here, in the parent."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare, mount = libc.unshare, libc.mount
    user = kind == "user namespace" and not joined
    uid, gid = os.getuid(), os.getgid()
    options = f"mode=0700,size={_host_shm_bytes()}".encode()
    check = _check

    def preexec() -> None:
        check(unshare(_CLONE_NEWNS | (_CLONE_NEWUSER if user else 0)), "unshare")
        if user:
            _map_own_user(uid, gid)
        # private: the tmpfs must not propagate back to the host's /dev/shm
        check(mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
        check(mount(b"tmpfs", _SHM.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options), "mount tmpfs")

    return preexec


def private_network_preexec(kind: str) -> Callable[[], None]:
    """A preexec_fn that moves the child into a new network namespace whose only interface is
    loopback, up (``kind`` "user namespace": inside a new user namespace first). A program
    started there can only be reached through sockets it was given, and what it starts listens
    where nobody outside can connect (see :mod:`~mmtrt.serving.guard`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare = libc.unshare
    user = kind == "user namespace"
    uid, gid = os.getuid(), os.getgid()
    request = struct.pack("16sH22x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)  # struct ifreq

    def preexec() -> None:
        _check(unshare(_CLONE_NEWNET | (_CLONE_NEWUSER if user else 0)), "unshare")
        if user:  # root outside is not root inside: nginx would try to switch to a user it cannot
            _map_own_user(uid, gid, inside_uid=uid or 65534, inside_gid=gid or 65534)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, request)

    return preexec


def join_network_preexec(pid: int, kind: str) -> Callable[[], None]:
    """A preexec_fn that moves the child into the network namespace of process ``pid`` (made by
    :func:`private_network_preexec` with the same ``kind``; for "user namespace", into its user
    namespace first, which gives the rights to enter the network namespace it owns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    steps = ([("user", _CLONE_NEWUSER)] if kind == "user namespace" else []) + [("net", _CLONE_NEWNET)]

    def preexec() -> None:
        for name, flag in steps:
            fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)
            try:
                _check(setns(fd, flag), f"entering the {name} namespace of process {pid}")
            finally:
                os.close(fd)

    return preexec


@functools.cache
def private_network() -> Isolation:
    """Whether this process can start programs in a private network namespace, and how (the
    same kinds as :func:`private_shm`): tried once, remembered for the process."""
    if not sys.platform.startswith("linux"):
        return Isolation(None, "not Linux")
    why = []
    kinds = ("mount namespace", "user namespace") if os.geteuid() == 0 else ("user namespace",)
    for kind in kinds:
        problem = _try_in_child(private_network_preexec(kind))
        if not problem:
            return Isolation(kind)
        why.append(f"{kind}: {problem}")
    return Isolation(None, "; ".join(why))


@functools.cache
def private_shm() -> Isolation:
    """Whether this process can start servers with a private /dev/shm, and how: tried once (in a
    forked child that exits at once), remembered for the process."""
    if not sys.platform.startswith("linux"):
        return Isolation(None, "not Linux")
    if not os.path.isdir(_SHM):
        return Isolation(None, f"{_SHM} does not exist")
    why = []
    kinds = ("mount namespace", "user namespace") if os.geteuid() == 0 else ("user namespace",)
    for kind in kinds:
        problem = _try_in_child(private_shm_preexec(kind))
        if not problem:
            return Isolation(kind)
        why.append(f"{kind}: {problem}")
    return Isolation(None, "; ".join(why))


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
