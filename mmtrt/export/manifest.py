"""The export folder's manifest.json: what every file is, its sha256, and how it was made.

The manifest is the one spec of an export, as a MONAI bundle's metadata is: serving reads it
(through :func:`read_manifest`) to build and check a Triton repository. Keys other code relies
on: `format`, `files.<name>.sha256` for every file of the folder, the top-level `max_batch`, and
`graphs.<graph>` = {"file", "inputs", "outputs"} with every tensor's shape and dtype
(:func:`graph_record`), from which the repository's config.pbtxt tensor blocks are rendered;
and `calibration` when `mmtrt calibrate` has run (read by :mod:`mmtrt.calibration`, applied by
the served models).
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import onnx

from mmtrt.files import atomic_write, file_sha256

MANIFEST = "manifest.json"
PARITY = "parity.json"  # ONNX graphs vs PyTorch
ENGINE_PARITY = "parity.engines.json"  # TensorRT engines vs onnxruntime
TIMING_CACHE = "timing.cache"
FORMAT = "mmtrt.export"
FORMAT_VERSION = 1


class ExportError(RuntimeError):
    """An export that cannot be made or used; the message says why and what to do."""


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime
    import torch

    try:
        mmtrt_version = version("mmtrt")
    except PackageNotFoundError:
        mmtrt_version = None
    try:
        import tensorrt

        tensorrt_version = str(tensorrt.__version__)
    except Exception:  # absent, or a stub without libraries
        tensorrt_version = None
    from mmtrt.runtimes.openvino import version as openvino_version

    return {
        "python": platform.python_version(),
        "mmtrt": mmtrt_version,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version(),
        "tensorrt": tensorrt_version,
    }


def tensor_shapes(proto: onnx.ModelProto) -> dict:
    """{"inputs": {name: {"shape": [...], "dtype": ...}}, "outputs": {...}}; the batch axis is "batch"."""

    def describe(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            out[v.name] = {
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            }
        return out

    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output)}


def graph_record(path: Path, proto: onnx.ModelProto) -> dict:
    """The manifest's record of one exported graph: its file and its tensors."""
    return {"file": Path(path).name, **tensor_shapes(proto)}


def file_entry(path: Path, **extra) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size, **extra}


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, allow_nan=True) + "\n"
    write_file(path, text.encode())


def write_file(path: Path, data: bytes) -> None:
    """Atomically, readable by all like the ONNX files (the temporary file is 0600)."""
    atomic_write(path, lambda fh: fh.write(data))
    os.chmod(path, 0o644)


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write ``folder``/manifest.json atomically, stamped with the format tag; return it."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path, *, check_files: bool = True) -> dict:
    """The manifest of the export ``folder``; ExportError when it is missing, not JSON, not an
    mmtrt export manifest (format tag), or without a files table. With ``check_files`` every
    listed file must be there with its sha256; without, the reader checks only the files it uses
    (a repository of a subset of the graphs)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such export folder")
    if not path.is_file():
        raise ExportError(
            f"{folder} has no {MANIFEST}: not a complete mmtrt export (run `mmtrt export` again)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path} is not an mmtrt export manifest (no '{FORMAT}' format tag)")
    if not isinstance(manifest.get("files"), dict):
        raise ExportError(f"{path} has no 'files' table")
    _check_file_names(manifest, path)
    for name, entry in manifest["files"].items() if check_files else ():
        if name == TIMING_CACHE:  # rewritten by every engine build, even a failed one
            continue
        if not (folder / name).is_file():
            raise ExportError(f"{folder / name} is listed in the manifest but missing")
        if file_sha256(folder / name) != entry.get("sha256"):
            raise ExportError(
                f"{folder / name} differs from the file the manifest describes (sha256 mismatch)"
            )
    return manifest


def _check_file_names(manifest: dict, path: Path) -> None:
    """Every file a manifest names is a plain name inside the export folder: readers join these
    names to the folder and copy or load them, so a path (``../x``, ``/etc/x``) is refused."""
    names = [("files", name) for name in manifest["files"]]
    for graph, info in (manifest.get("graphs") or {}).items():
        for key in ("file", "reduced_precision_file"):
            if isinstance(info, dict) and info.get(key) is not None:
                names.append((f"graphs.{graph}.{key}", info[key]))
    for graph, plan in ((manifest.get("engines") or {}).get("plans") or {}).items():
        if isinstance(plan, dict) and plan.get("file") is not None:
            names.append((f"engines.plans.{graph}.file", plan["file"]))
    for where, name in names:
        if not _is_plain_file_name(name):
            raise ExportError(f"{path}: {where} is {name!r}, not a plain file name in the export folder")


def _is_plain_file_name(name) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and Path(name).name == name
    )
