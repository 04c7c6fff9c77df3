"""Model updates without downtime: a new export becomes a new version of the served models of a
repository, and running servers switch to it (or back) while they keep answering.

A repository built by `mmtrt repo` holds version ``1/`` of each model. :func:`add_version` adds
``N+1/`` to each graph model (the models that run an ONNX file of the export: ``multimix``,
``classifier``) from another export of the same architecture: the same folder as the served
version, with the new export's graph file and manifest (the python model checks that file's
sha256 against that manifest when it loads). The model's ``config.pbtxt`` is shared by its
versions, so the new export must have the same interface (its graph's tensors); the calibration,
the image gate and the checkpoint travel with its manifest. :func:`serve_version` writes the
version policy (``specific``: the one version to serve) into each graph model's config.

:func:`load_on` then asks each running server to load the models again (Triton's repository
API, explicit model control: `mmtrt serve` runs so): Triton loads the policy's version while the
one loaded keeps answering, then unloads the old one once its requests are answered. The file
model ``multimix_image`` calls ``multimix`` at version -1 (the newest loaded), so it follows.
Rolling back is :func:`serve_version` of the old version and the same load.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from mmtrt.files import atomic_write_text

from .config import validate_config
from .errors import ServingError

CONFIG = "config.pbtxt"
_POLICY = re.compile(r"\nversion_policy\s*:?\s*\{[^{}]*\{[^{}]*\}\s*\}\n?", re.S)


def graph_models(repository: Path) -> dict[str, str]:
    """model name -> the ONNX file it runs, for the models of ``repository`` that run one."""
    models = {}
    for config in sorted(Path(repository).glob(f"*/{CONFIG}")):
        parsed = validate_config(config)
        if "onnx_file" in parsed.parameters:
            models[config.parent.name] = parsed.parameters["onnx_file"].string_value
    if not models:
        raise ServingError(
            f"{repository} has no model that runs an ONNX file (not a repository of `mmtrt repo`?)"
        )
    return models


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def served_version(model_dir: Path) -> int:
    """The version the model's policy serves: its ``specific`` one, else its newest."""
    parsed = validate_config(model_dir / CONFIG)
    if parsed.HasField("version_policy") and parsed.version_policy.HasField("specific"):
        return int(parsed.version_policy.specific.versions[0])
    return versions(model_dir)[-1]


def _tensors(manifest: dict, onnx_file: str) -> dict:
    for record in (manifest.get("graphs") or {}).values():
        if record.get("file") == onnx_file:
            return {"inputs": record.get("inputs"), "outputs": record.get("outputs")}
    return {}


def add_version(repository: Path, export: Path) -> int:
    """Add the export ``export`` as the next version of every graph model of ``repository``
    (not served until :func:`serve_version`); return its number."""
    from mmtrt.export.manifest import ExportError, read_manifest

    repository, export = Path(repository), Path(export)
    try:
        manifest = read_manifest(export)  # every file's sha256 checked
    except ExportError as e:
        raise ServingError(f"the new version: {e}") from None
    models = graph_models(repository)
    new = max(max(versions(repository / m)) for m in models) + 1
    staged = []
    try:
        for model, onnx_file in models.items():
            model_dir = repository / model
            current = model_dir / str(served_version(model_dir))
            if not (export / onnx_file).is_file():
                raise ServingError(f"{export} has no {onnx_file} (model '{model}' runs it)")
            old = json.loads((current / "manifest.json").read_text())
            if _tensors(manifest, onnx_file) != _tensors(old, onnx_file):
                raise ServingError(
                    f"{export / onnx_file} has other tensors than version {current.name} of '{model}' "
                    f"(its config.pbtxt is shared by its versions): build a new repository for it"
                )
            stage = Path(tempfile.mkdtemp(prefix=f".{new}.adding-", dir=model_dir))
            staged.append((stage, model_dir / str(new)))
            shutil.copytree(current, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            for name in (onnx_file, "manifest.json"):
                shutil.copy2(export / name, stage / name)
        for stage, final in staged:  # only once every model's version is complete
            stage.rename(final)
    except BaseException:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    return new


def serve_version(repository: Path, version: int) -> dict[str, int]:
    """Make ``version`` the one every graph model of ``repository`` serves (its config's version
    policy); return model -> the version it served before."""
    repository = Path(repository)
    models = graph_models(repository)
    missing = [m for m in models if not (repository / m / str(version)).is_dir()]
    if missing:
        have = sorted(set().union(*(versions(repository / m) for m in models)))
        raise ServingError(f"version {version} does not exist for {', '.join(missing)} (versions: {have})")
    before = {}
    for model in models:
        path = repository / model / CONFIG
        before[model] = served_version(path.parent)
        text = _POLICY.sub("\n", path.read_text()).rstrip("\n")
        text += f"\nversion_policy: {{ specific: {{ versions: [{int(version)}] }} }}\n"
        atomic_write_text(path, text)
        validate_config(path)
    return before


def load_on(
    urls: Iterable[str], protocol: str, models: Iterable[str], say=print, unload_wait_s: float = 120.0
) -> None:
    """Load ``models`` again on each server, one server at a time (with several, the others
    answer while one switches). A model still unloading a version (its last requests being
    answered) is waited for first: Triton 2.51 can hang loading a version again while its
    previous copy finishes unloading."""
    from .client import TritonClient

    for url in urls:
        with TritonClient(url, protocol, timeout_s=300.0) as client:
            for model in models:
                _wait_unloaded(client, model, unload_wait_s, say)
                client.load_model(model)
                say(f"  {url}: '{model}' loaded")


def _wait_unloaded(client, model: str, timeout_s: float, say) -> None:
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        unloading = [
            m["version"] for m in client.models() if m["name"] == model and m["state"] == "UNLOADING"
        ]
        if not unloading:
            return
        if time.monotonic() > deadline:
            raise ServingError(
                f"'{model}' at {client.url} is still unloading version(s) {unloading} after {timeout_s:.0f} s"
            )
        if not said:
            say(f"  {client.url}: '{model}' version(s) {', '.join(unloading)} still answering; waiting")
            said = True
        time.sleep(0.2)
