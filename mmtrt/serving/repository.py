"""Build a Triton model repository from an export folder, and validate Triton configs offline.

The templates live in ``model_repository/<flavour>/<model>/`` at the repository root (see
``model_repository/README.md``). ``build_repository`` copies them, renders the ``${...}`` fields of
each ``config.pbtxt`` and copies the model's ONNX file plus the export's ``manifest.json`` into the
model's version folder ``1/``. Only the ``cpu`` flavour exists for now (python backend running
onnxruntime): the GPU flavour is to be added as another template folder plus a branch in
``_FLAVOURS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Sequence

from .server import ServingError

__all__ = ["build_repository", "validate_config", "parse_config", "render_config",
           "template_dir", "FLAVOURS", "MODELS"]

#: model name -> the ONNX file of the export it serves
MODELS: dict[str, str] = {"multimix": "multimix.onnx", "classifier": "encoder.onnx"}
#: flavours with templates (the GPU one is added later by its own template folder)
FLAVOURS: tuple[str, ...] = ("cpu",)

DEFAULT_MAX_QUEUE_DELAY_US = 2000
DEFAULT_ORT_THREADS = 0  # onnxruntime's default (one thread per core)
VERSION = "1"


def template_dir(flavour: str = "cpu") -> Path:
    """Folder holding the templates of ``flavour`` (``<repo>/model_repository/<flavour>``)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown repository flavour {flavour!r}: only {', '.join(FLAVOURS)} "
                         "is supported for now (the GPU flavour is not written yet)")
    for base in (Path(__file__).resolve().parents[2] / "model_repository",
                 Path.cwd() / "model_repository"):
        if (base / flavour).is_dir():
            return base / flavour
    raise ServingError(f"templates of flavour {flavour!r} not found (expected the folder "
                       f"model_repository/{flavour} at the mmtrt source root)")


# --------------------------------------------------------------------------- configs

def parse_config(text: str, *, source: str = "<config>"):
    """Parse config.pbtxt text into a ``ModelConfig`` message; ServingError when invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ServingError(f"{source}: invalid Triton model config: {e}") from None
    return config


def validate_config(path: Path):
    """Parse and check a ``config.pbtxt`` offline; return its ``ModelConfig`` message.

    Catches syntax errors, unknown fields and bad enum values (protobuf text format), plus a few
    checks Triton would make at load time: the name matches the model folder, a backend is set,
    inputs and outputs exist with positive dims, preferred batch sizes fit max_batch_size.
    """
    path = Path(path)
    if not path.is_file():
        raise ServingError(f"{path}: no such config file")
    config = parse_config(path.read_text(), source=str(path))
    problems = []
    if config.name and config.name != path.parent.name:
        problems.append(f"name {config.name!r} differs from its folder {path.parent.name!r}")
    if not (config.backend or config.platform):
        problems.append("neither backend nor platform is set")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} is negative")
    if not config.input:
        problems.append("no input")
    if not config.output:
        problems.append("no output")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            if not t.name:
                problems.append(f"an {kind} has no name")
            if t.data_type == 0:  # TYPE_INVALID
                problems.append(f"{kind} {t.name!r} has no data_type")
            if any(d < 1 and d != -1 for d in t.dims):
                problems.append(f"{kind} {t.name!r} has invalid dims {list(t.dims)}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching needs max_batch_size > 0")
        too_big = [b for b in config.dynamic_batching.preferred_batch_size
                   if b > config.max_batch_size or b < 1]
        if too_big:
            problems.append(f"preferred_batch_size {too_big} outside 1..{config.max_batch_size}")
    if problems:
        raise ServingError(f"{path}: invalid Triton model config: " + "; ".join(problems))
    return config


def render_config(template: str, *, max_batch: int, max_queue_delay_us: int,
                  ort_threads: int) -> str:
    """Fill the ``${...}`` fields of a config.pbtxt template."""
    # Only the full batch is preferred: with smaller preferred sizes the batcher dispatches as
    # soon as one of them forms (e.g. 2 of 8 concurrent requests); the graphs have no favourite
    # size on CPU, so waiting up to max_queue_delay for a full batch is what pays.
    values = {
        "max_batch_size": str(max_batch),
        "preferred_batch_sizes": str(max_batch),
        "max_queue_delay_us": str(max_queue_delay_us),
        "ort_intra_op_threads": str(ort_threads),
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as e:
        raise ServingError(f"config template has an unknown or malformed field: {e}") from None


# --------------------------------------------------------------------------- building

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(export_dir: Path) -> dict:
    path = export_dir / "manifest.json"
    if not path.is_file():
        raise ServingError(f"export folder {export_dir} has no manifest.json (export the model "
                           "with mmtrt's exporter, which writes it beside the ONNX files)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ServingError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ServingError(f"{path} has no 'files' table")
    return manifest


def build_repository(export_dir: Path, out: Path, *, flavour: str = "cpu",
                     max_batch: int | None = None,
                     models: Sequence[str] = ("multimix", "classifier"),
                     max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
                     ort_threads: int = DEFAULT_ORT_THREADS,
                     overwrite: bool = False) -> Path:
    """Build a Triton model repository at ``out`` from the export folder ``export_dir``.

    Each model of ``models`` gets its rendered config.pbtxt, ``1/model.py``, its ONNX file and the
    manifest.json (whose sha256 the model checks at load time; it is checked here too).
    ``max_batch`` defaults to the manifest's ``max_batch``. The repository is assembled in a
    temporary folder beside ``out`` and renamed into place at the end, so ``out`` is never left
    half built. An existing ``out`` is an error unless ``overwrite``. Returns ``out``.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown repository flavour {flavour!r}: only {', '.join(FLAVOURS)} "
                         "is supported for now (the GPU flavour is not written yet)")
    export_dir = Path(export_dir)
    out = Path(out)
    if not export_dir.is_dir():
        raise ServingError(f"export folder {export_dir} does not exist")
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown model(s) {unknown or list(models)}: choose from {list(MODELS)}")
    manifest = _read_manifest(export_dir)

    if max_batch is None:
        max_batch = manifest.get("max_batch")
        if max_batch is None:
            raise ServingError(f"{export_dir / 'manifest.json'} has no max_batch; pass max_batch")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ServingError(f"max_batch must be a positive integer, got {max_batch!r}")
    if int(max_queue_delay_us) < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")

    for model in models:  # check every input before writing anything
        onnx = export_dir / MODELS[model]
        if not onnx.is_file():
            raise ServingError(f"export folder {export_dir} has no {MODELS[model]} "
                               f"(needed by model '{model}')")
        expected = manifest["files"].get(MODELS[model], {}).get("sha256")
        if not expected:
            raise ServingError(f"manifest.json of {export_dir} lists no sha256 for "
                               f"{MODELS[model]}")
        if _sha256(onnx).lower() != str(expected).lower():
            raise ServingError(f"sha256 mismatch for {onnx}: the file differs from the one the "
                               "manifest describes (modified or corrupted after export)")

    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists (pass overwrite=True to replace it)")
    templates = template_dir(flavour)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        for model in models:
            src = templates / model
            dst = staging / model
            (dst / VERSION).mkdir(parents=True)
            text = render_config((src / "config.pbtxt").read_text(), max_batch=max_batch,
                                 max_queue_delay_us=int(max_queue_delay_us),
                                 ort_threads=int(ort_threads))
            (dst / "config.pbtxt").write_text(text)
            validate_config(dst / "config.pbtxt")
            shutil.copy2(src / VERSION / "model.py", dst / VERSION / "model.py")
            shutil.copy2(export_dir / MODELS[model], dst / VERSION / MODELS[model])
            shutil.copy2(export_dir / "manifest.json", dst / VERSION / "manifest.json")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700
        if out.exists():  # overwrite: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
