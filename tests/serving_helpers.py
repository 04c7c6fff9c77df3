"""Helpers of the serving tests (the real Triton server, the real MultiMix graphs): the export
folder under test, onnxruntime sessions set up like the served ones, server start-up, process
listing. The shared fixtures built on them (``export_dir``, ``repo``, ``server``) are in
conftest.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mmtrt.serving import ServingError, TritonServer, find_tritonserver

MAX_BATCH = 8

try:
    find_tritonserver()
    _NO_SERVER = None
except ServingError as _e:  # pragma: no cover - depends on the machine
    _NO_SERVER = str(_e)
needs_server = pytest.mark.skipif(_NO_SERVER is not None, reason=f"no tritonserver: {_NO_SERVER}")


# --------------------------------------------------------------------------- the export under test


def _export_key() -> str:
    """What the exported files depend on: the sources of the mmtrt modules the exporter runs
    (mmtrt.model, mmtrt.graphs, the loaded mmtrt.export modules) and the library versions."""
    import sys

    import onnx
    import onnxscript
    import torch

    import mmtrt.export.onnx_graphs  # noqa: F401 - loads what it depends on

    names = sorted(
        n for n in sys.modules if n in ("mmtrt.model", "mmtrt.graphs") or n.startswith("mmtrt.export")
    )
    digest = hashlib.sha256()
    for name in names:
        source = Path(sys.modules[name].__file__)
        digest.update(name.encode() + b"\0" + source.read_bytes())
    digest.update(
        f"{torch.__version__} {onnx.__version__} {onnxscript.__version__} seed=0 "
        f"max_batch={MAX_BATCH}".encode()
    )
    return digest.hexdigest()[:16]


def real_export(request, graphs=("multimix", "encoder")) -> Path:
    """An export folder of the real graphs of ``mmtrt.graphs`` over
    ``torch.manual_seed(0); MultiMix().eval()``: ``<graph>.onnx`` written by
    ``mmtrt.export.onnx_graphs.export_onnx(..., max_batch=8)`` for each of ``graphs`` (and any
    exported before), plus manifest.json with their sha256 and ``max_batch``.

    The export is deterministic (byte-identical files) but slow (~10-30 s a graph), so the folder
    is kept in pytest's cache under a key of the sources and versions it depends on; set
    MMTRT_TEST_FRESH_EXPORT=1 to export into the session's temp folder instead.
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None and not os.environ.get("MMTRT_TEST_FRESH_EXPORT"):
        folder = Path(cache.mkdir(f"mmtrt-export-{_export_key()}"))
        for stale in folder.parent.glob("mmtrt-export-*"):  # other sources, untouched for a day
            if stale != folder and time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
    else:
        folder = request.getfixturevalue("tmp_path_factory").getbasetemp() / "real-export"
        folder.mkdir(exist_ok=True)
    missing = [g for g in graphs if not (folder / f"{g}.onnx").is_file()]
    if missing:
        import torch

        from mmtrt.export.onnx_graphs import export_onnx
        from mmtrt.graphs import GRAPHS
        from mmtrt.model import MultiMix

        torch.manual_seed(0)
        model = MultiMix().eval()
        for graph in missing:
            t0 = time.monotonic()
            tmp = folder / f".{graph}.{os.getpid()}.tmp.onnx"
            export_onnx(GRAPHS[graph], model, tmp, max_batch=MAX_BATCH)
            os.replace(tmp, folder / f"{graph}.onnx")  # atomic: a parallel run sees all or nothing
            print(f"\nexported {graph}.onnx in {time.monotonic() - t0:.1f} s")
    import onnx

    from mmtrt.export.manifest import file_entry, graph_record, write_manifest

    files = sorted(folder.glob("[!.]*.onnx"))
    write_manifest(  # atomic: a parallel run sees all or nothing
        folder,
        {
            "max_batch": MAX_BATCH,
            "image_size": 256,
            "note": "tests real_export (seed 0, untrained)",
            "graphs": {f.stem: graph_record(f, onnx.load(str(f), load_external_data=False)) for f in files},
            "files": {f.name: file_entry(f, kind="onnx", graph=f.stem) for f in files},
        },
    )
    return folder


def ort_session(path: Path):
    """An onnxruntime session set up like the served one (one intra-op thread)."""
    from mmtrt.runtimes import ort

    return ort.session(path, threads=1)


def start_server(repo: Path, log: Path) -> TritonServer:
    srv = TritonServer(repo, log_file=log)
    t0 = time.monotonic()
    srv.start(timeout=180)
    print(f"\ntritonserver ready in {time.monotonic() - t0:.2f} s: {' '.join(srv.command)}")
    return srv


def processes_mentioning(text: str) -> list[str]:
    """tritonserver / python-backend stub processes whose command line contains ``text``."""
    ps = subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in ps.splitlines()
        if text in line and ("tritonserver" in line or "triton_python_backend_stub" in line)
    ]
