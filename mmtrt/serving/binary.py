"""Finding the ``tritonserver`` binary and preparing the bundled python backend.

Two sources for the binary, in this order (see :func:`find_tritonserver`):

1. a ``tritonserver`` on PATH (inside NVIDIA's Triton container: it brings its own backends);
2. the binary bundled in ``nvidia-pytriton`` (``pip install --no-deps nvidia-pytriton==0.7.0``):
   a real Triton 2.51.0 with only the python backend. For it :func:`prepare_backend_dir` makes a
   backend directory (links to ``libtriton_python.so``, ``triton_python_backend_utils.py`` and
   the python-backend stub built for the running Python version).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from .errors import ServingError

INSTALL_HINT = (
    "install the Triton server binary with `pip install --no-deps nvidia-pytriton==0.7.0` "
    "(or `pip install -e '.[serve]'`, see scripts/setup.sh), or run inside NVIDIA's Triton "
    "Inference Server container where `tritonserver` is on PATH"
)

# "failed to start HTTP service: Unavailable - Socket '127.0.0.1:60385' already in use", or


def bundled_tritonserver_root() -> Path | None:
    """``site-packages/pytriton/tritonserver`` of an installed nvidia-pytriton, else None.

    The pytriton package is located without importing it (its Python API and dependencies are
    not installed here, only the binary is used).
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    for entry in sys.path:
        if entry:
            candidates.append(Path(entry) / "pytriton")
    for pkg in candidates:
        root = pkg / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    return None


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary: one on PATH first, else the one bundled in nvidia-pytriton."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    root = bundled_tritonserver_root()
    if root is not None:
        binary = root / "bin" / "tritonserver"
        if os.access(binary, os.X_OK):
            return binary
        raise ServingError(
            f"the bundled tritonserver at {binary} is not executable; reinstall it: {INSTALL_HINT}"
        )
    raise ServingError(
        f"no tritonserver binary found (none on PATH, no nvidia-pytriton "
        f"installed for {sys.executable}): {INSTALL_HINT}"
    )


def bundled_root_of(binary: Path) -> Path | None:
    """The pytriton ``tritonserver`` folder if ``binary`` is the bundled one, else None."""
    root = binary.resolve().parent.parent
    if (root / "backends" / "python" / "libtriton_python.so").is_file() and (
        root / "python_backend_stubs"
    ).is_dir():
        return root
    return None


def prepare_backend_dir(root: Path, dest: Path) -> Path:
    """Build ``dest/python/`` with links to the bundled python backend and the stub for this
    Python version; return ``dest`` (the value for ``--backend-directory``)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir())
        raise ServingError(
            f"the bundled Triton has no python-backend stub for Python {version} "
            f"(it has {', '.join(have) or 'none'}); run mmtrt with one of those "
            "Python versions"
        )
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        if not src.is_file():
            raise ServingError(
                f"the bundled Triton is incomplete: {src} is missing; reinstall it: {INSTALL_HINT}"
            )
        (py / src.name).symlink_to(src)
    return dest
