"""Housekeeping of a tritonserver's processes and shared memory: its process group, its
python-backend stub processes (psutil) and their /dev/shm regions."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still exists
        return True
    return True


def parent_death_signal():
    """A preexec_fn making the child get SIGTERM when the thread that started it ends (its
    process exiting, even by SIGKILL, included): Linux's PR_SET_PDEATHSIG. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def preexec():
        prctl(1, sigterm, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


_STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"


def stub_argvs(server_pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live python-backend stub processes that are children of
    ``server_pid`` (zombies left out). Empty when that process is gone."""
    if server_pid is None:  # (psutil.Process(None) would be this process)
        return []
    try:
        children = psutil.Process(server_pid).children()
    except psutil.Error:
        return []
    stubs = []
    for child in children:
        try:
            if child.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
            argv = child.cmdline()
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
        if argv and Path(argv[0]).name == _STUB_NAME:
            stubs.append((child.pid, argv))
    return sorted(stubs)


def python_stub_processes(server_pid: int) -> list[tuple[int, str, str]]:
    """(pid, model, instance) of every live python-backend stub process of the tritonserver
    ``server_pid`` (its children running ``triton_python_backend_stub``). A stub that died and
    was not reaped (a zombie: tritonserver does not wait for it) is not listed."""
    stubs = []
    for pid, argv in stub_argvs(server_pid):
        # argv: stub, <repository>/<model>/<version>/model.py, shm region, ..., instance name, ...
        model = Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"
        instance = argv[8] if len(argv) > 8 and argv[8] else model
        stubs.append((pid, model, instance))
    return stubs


def remove_shm_regions(names) -> None:
    """Remove the /dev/shm files a crashed or killed server's stubs left (1 MB and up each, for
    good; a server that stopped cleanly removed them itself)."""
    for name in names:
        try:
            (Path("/dev/shm") / name).unlink()
        except OSError:
            pass
