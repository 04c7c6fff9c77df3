"""Build a Triton model repository from an export folder, and validate it offline.

Two flavours:

``cpu``  python backend running onnxruntime or OpenVINO (the ``runtime`` setting, chosen by
         :mod:`.cpu_runtime`'s fixed rule for ``auto``): ``multimix`` (multimix.onnx) and
         ``classifier`` (encoder.onnx), both run by the one shared
         ``model_repository/cpu/model.py``; and ``multimix_image``, an ensemble of
         ``file_decoder`` (image files as BYTES -> images, ``model_repository/cpu/file_decoder/
         model.py``) and ``multimix``.
``gpu``  TensorRT engines ``encoder``, ``saliency`` and ``decoder`` (``tensorrt_plan``, built by
         ``mmtrt build-engines``) plus the ensembles ``multimix`` (saliency -> decoder) and
         ``classifier`` (encoder -> probs).

``build_repository`` resolves its :class:`~mmtrt.serving.settings.RepositorySettings` into one
:class:`~mmtrt.serving.config.ServedModel` per model (tensors from the export manifest), writes
each ``config.pbtxt`` from it, copies the files each model needs into its version folder ``1/``
(a python model: its model.py and the mmtrt modules it imports, :data:`.checks.BACKEND_MODULES`),
and validates the result offline (:func:`validate_repository`) before renaming it into place.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mmtrt.files import NotOurFolder, check_replaceable, file_sha256, move_folder_into_place
from mmtrt.graphs import GRAPHS, JOINT_OUTPUTS, OOD, PIPELINES

from . import client
from .checks import (
    BACKEND_MODULES,
    BACKEND_PACKAGE,
    BUILD_ENGINES_HINT,
    VERSION,
    missing_plan_files,
    validate_repository,
)
from .client import IMAGE_MODEL
from .config import (
    ENSEMBLE,
    PLAN_FILE,
    PYTHON,
    TENSORRT_PLAN,
    EnsembleStep,
    ModelTensors,
    ServedModel,
    Tensor,
    render_config,
)
from .cpu_runtime import ONNXRUNTIME_ASKED_FOR, RuntimeChoice, choose_runtime, served_precision
from .errors import ServingError
from .settings import FLAVOURS, GraphSettings, RepositorySettings, from_options

__all__ = [
    "build_repository",
    "python_model_file",
    "served_model",
    "DEFAULT_MODELS",
    "IMAGE_MODEL",
    "default_models",
    "FLAVOURS",
    "MODELS",
    "FLAVOUR_MODELS",
    "ModelSpec",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model of a flavour. ``kind``: "onnx" (python backend + onnxruntime, runs
    ``<graph>.onnx``), "plan" (TensorRT engine of ``graph``), "decode" (python backend running
    mmtrt's image decoder: image files as BYTES -> images and their native sizes) or "ensemble"
    (an ensemble of the engine models of ``pipeline``, one of :data:`mmtrt.graphs.PIPELINES`,
    or of the models of ``steps``: (name, spec) pairs, in order). ``outputs``: the tensors it
    serves (default: all its graph's); ``label`` is derived by the python model (the class at the
    export's operating point, :mod:`mmtrt.calibration`), which also calibrates ``probs``. Its tensors' types and dims come from the export manifest's graphs.
    ``description``: what it is, the first line of its config.pbtxt."""

    kind: str
    graph: str | None = None
    pipeline: str | None = None
    outputs: tuple[str, ...] | None = None
    steps: tuple[tuple[str, ModelSpec], ...] = ()
    optional_inputs: tuple[Tensor, ...] = ()
    description: str = ""

    @property
    def onnx_file(self) -> str | None:
        return f"{self.graph}.onnx" if self.graph else None

    @property
    def platform(self) -> str:
        return {"onnx": PYTHON, "decode": PYTHON, "plan": TENSORRT_PLAN, "ensemble": ENSEMBLE}[self.kind]

    @property
    def needs(self) -> tuple[str, ...]:
        """The models an ensemble is made of (the GPU flavour names each engine by its graph)."""
        if self.kind != "ensemble":
            return ()
        return tuple(name for name, _ in self.steps) if self.steps else PIPELINES[self.pipeline]


FILE = Tensor("file", "TYPE_STRING", (1,))  # one image file per batch item
ORIGINAL_SIZE = Tensor("original_size", "TYPE_INT32", (2,))  # rows, columns of that file
# the input gate's verdict on that file (mmtrt.data.gate), and the reason of a refusal
ACCEPTED = Tensor(client.ACCEPTED, "TYPE_BOOL", (1,))
REFUSAL_REASON = Tensor(client.REFUSAL_REASON, "TYPE_STRING", (1,))
# what the audit trail names the file by: JSON, its SOP Instance UID or its sha256
SOURCE = Tensor("source", "TYPE_STRING", (1,))

_CPU_MULTIMIX = ModelSpec(
    "onnx",
    "multimix",
    outputs=("probs", "label", "mask", "saliency", *OOD),
    optional_inputs=tuple(replace(t, optional=True) for t in (ACCEPTED, REFUSAL_REASON, SOURCE)),
    description="MultiMix fused graph (classification + lung mask + saliency), cpu flavour: the "
    "python model model.py runs the ONNX file of its parameter onnx_file with onnxruntime or OpenVINO. "
    "The image gate inside the graph answers ood_score and in_distribution; an image out of "
    "distribution gets zeros and label -1 otherwise. Optional inputs from file_decoder in multimix_image: accepted (the input gate's verdict: an "
    "image given false is not run, its outputs are zeros and its label -1), refusal_reason and "
    "source (what the audit trail names the file by).",
)
_FILE_DECODER = ModelSpec(
    "decode",
    description="image files (BYTES: PNG, JPEG, TIFF, 16-bit PNG, DICOM; one per batch item) -> "
    "the network's input images, the files' native sizes and the input gate's verdict on their "
    "DICOM header (accepted, refusal_reason; a refused file's image: zeros, size 0 x 0), "
    "with mmtrt's decoder and gate (the first step of multimix_image). No warm-up request: a "
    "file of zeros is not an image.",
)


def _engine(graph: str) -> ModelSpec:
    return ModelSpec(
        "plan",
        graph,
        description=f"the TensorRT engine that `mmtrt build-engines` builds from {graph}.onnx, gpu "
        "flavour (1/model.plan; other GPU architectures' engines listed in cc_model_filenames).",
    )


FLAVOUR_MODELS: dict[str, dict[str, ModelSpec]] = {
    "cpu": {
        "multimix": _CPU_MULTIMIX,
        "classifier": ModelSpec(
            "onnx",
            "encoder",
            outputs=("probs", "label", *OOD),
            description="MultiMix classification only (encoder graph; no mask, no saliency), cpu "
            "flavour: the python model model.py runs the ONNX file of its parameter onnx_file; an "
            "image out of distribution (image gate) gets zeros and label -1.",
        ),
        "file_decoder": _FILE_DECODER,
        IMAGE_MODEL: ModelSpec(
            "ensemble",
            steps=(("file_decoder", _FILE_DECODER), ("multimix", _CPU_MULTIMIX)),
            outputs=(*_CPU_MULTIMIX.outputs, ORIGINAL_SIZE.name, ACCEPTED.name, REFUSAL_REASON.name),
            description="MultiMix on encoded image files, cpu flavour: the ensemble file_decoder -> "
            "multimix; a request whose file cannot be decoded fails alone, as invalid input; a file "
            "the input gate refuses is answered: accepted false, refusal_reason, zeros, label -1.",
        ),
    },
    "gpu": {
        "encoder": _engine("encoder"),
        "saliency": _engine("saliency"),
        "decoder": _engine("decoder"),
        # no `label`: it would need a python step between engines; clients take argmax(probs)
        "multimix": ModelSpec(
            "ensemble",
            pipeline="joint",
            outputs=JOINT_OUTPUTS,
            description="MultiMix joint pipeline, gpu flavour: the ensemble saliency -> decoder (no "
            "label: clients take argmax(probs); no python step either: an image whose "
            "in_distribution is false is answered like any other, and clients must refuse it).",
        ),
        "classifier": ModelSpec(
            "ensemble",
            pipeline="classify",
            outputs=("probs", *OOD),
            description="MultiMix classification only, gpu flavour: the encoder engine's probs and "
            "image gate (clients must refuse an image whose in_distribution is false).",
        ),
    },
}
assert tuple(FLAVOUR_MODELS) == FLAVOURS
LABEL = Tensor("label", "TYPE_INT64", (1,))  # derived by the python model: the operating point's class
#: CPU flavour: model name -> the ONNX file of the export it serves (the models that run one)
MODELS: dict[str, str] = {
    name: spec.onnx_file for name, spec in FLAVOUR_MODELS["cpu"].items() if spec.onnx_file
}
#: the models a client talks to, in both flavours (the GPU engines are their building blocks)
DEFAULT_MODELS: tuple[str, ...] = ("multimix", "classifier")
#: what a repository serves unless told otherwise: the cpu flavour adds the image-file model
_FLAVOUR_DEFAULTS = {"cpu": (*DEFAULT_MODELS, IMAGE_MODEL), "gpu": DEFAULT_MODELS}
#: the python-backend model of each python kind, under model_repository/ at the source root; it
#: becomes 1/model.py of each model of that kind
_PYTHON_MODELS = {"onnx": "cpu/model.py", "decode": "cpu/file_decoder/model.py"}
MODEL_FILE = "model.py"


def default_models(flavour: str) -> tuple[str, ...]:
    _check_flavour(flavour)
    return _FLAVOUR_DEFAULTS[flavour]


# Engine files in the engines folder, as `mmtrt build-engines` names them:
# "<graph>.<precision>.sm<major><minor>.plan" (saliency.fp32.sm90.plan: compute capability 9.0);
# the precision and the architecture parts are optional (decoder.plan, encoder.sm86.plan).
_PLAN = re.compile(
    r"^(?P<graph>[A-Za-z0-9_-]+?)(?:\.(?P<precision>fp32|fp16|bf16))?"
    r"(?:\.sm(?P<major>\d+)(?P<minor>\d))?\.plan$"
)


def python_model_file(kind: str) -> Path:
    """The python-backend model of the models of ``kind`` ("onnx", "decode"):
    ``model_repository/cpu/model.py`` or ``model_repository/cpu/file_decoder/model.py`` at the
    mmtrt source root (or the current folder)."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = base / "model_repository" / _PYTHON_MODELS[kind]
        if path.is_file():
            return path
    raise ServingError(
        f"the python model model_repository/{_PYTHON_MODELS[kind]} was not found at the mmtrt source root"
    )


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOUR_MODELS:
        raise ValueError(f"unknown repository flavour {flavour!r}: choose from {', '.join(FLAVOURS)}")


# --------------------------------------------------------------------------- building


def _read_manifest(export_dir: Path) -> dict:
    """The export's manifest, through the one reader; only the files a build uses are checked
    (:func:`_check_sha256`), so a repository of a subset of the graphs can be built."""
    from mmtrt.export.manifest import ExportError, read_manifest

    try:
        return read_manifest(export_dir, check_files=False)
    except ExportError as e:
        raise ServingError(f"{e} (export the model with `mmtrt export`, which writes the manifest)") from None


def _check_sha256(path: Path, manifest: dict, export_dir: Path, *, required: bool) -> None:
    entry = manifest["files"].get(path.name)
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not expected:
        if required:
            raise ServingError(f"manifest.json of {export_dir} lists no sha256 for {path.name}")
        return
    if file_sha256(path).lower() != str(expected).lower():
        raise ServingError(
            f"sha256 mismatch for {path}: the file differs from the one the "
            "manifest describes (modified or corrupted after export)"
        )


def _graph_tensors(manifest: dict, graph: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(inputs, outputs) of an exported graph, from the manifest's record of it."""
    record = (manifest.get("graphs") or {}).get(graph)
    if not isinstance(record, dict) or not {"inputs", "outputs"} <= set(record):
        raise ServingError(
            f"the export manifest has no tensor record of the {graph} graph (graphs.{graph}); "
            "export the model again with `mmtrt export`"
        )
    return tuple(
        {name: Tensor.from_record(name, r) for name, r in record[kind].items()}
        for kind in ("inputs", "outputs")
    )


def _image_tensor(manifest: dict) -> Tensor:
    """The network's input image, as the export's graphs take it (FP32 [1, 256, 256])."""
    for graph in GRAPHS:
        record = ((manifest.get("graphs") or {}).get(graph) or {}).get("inputs") or {}
        if "image" in record:
            return Tensor.from_record("image", record["image"])
    raise ServingError(
        "the export manifest records no graph with an 'image' input; export the model again with `mmtrt export`"
    )


def _parts(spec: ModelSpec, manifest: dict):
    """(inputs, outputs) by name of each thing a model runs, in order: its graph, the graphs of
    its pipeline, or the models of its steps."""
    if spec.steps:
        for _, step in spec.steps:
            tensors = model_tensors(step, manifest)
            yield {t.name: t for t in tensors.inputs}, {t.name: t for t in tensors.outputs}
    else:
        for graph in PIPELINES[spec.pipeline] if spec.kind == "ensemble" else (spec.graph,):
            inputs, outputs = _graph_tensors(manifest, graph)
            yield {**inputs, **{t.name: t for t in spec.optional_inputs}}, outputs


def model_tensors(spec: ModelSpec, manifest: dict) -> ModelTensors:
    """A model's input and output tensors: its graph's (an ensemble: the inputs its pipeline or
    steps take from outside, the outputs they produce; the file decoder: ``file`` -> the image
    and its ``original_size``), the outputs narrowed to ``spec.outputs``."""
    if spec.kind == "decode":
        return ModelTensors(
            (FILE,), (_image_tensor(manifest), ORIGINAL_SIZE, ACCEPTED, REFUSAL_REASON, SOURCE)
        )
    inputs: dict[str, Tensor] = {}
    available: dict[str, Tensor] = {"label": LABEL} if spec.kind == "onnx" else {}
    for part_inputs, part_outputs in _parts(spec, manifest):
        inputs.update({n: t for n, t in part_inputs.items() if n not in available and n not in inputs})
        available.update(part_outputs)
    names = spec.outputs or [n for n in available if n != "label"]
    return ModelTensors(tuple(inputs.values()), tuple(available[n] for n in names))


def ensemble_steps(spec: ModelSpec, manifest: dict | None = None) -> list[EnsembleStep]:
    """The steps of an ensemble over its pipeline's engines or its steps' models (``manifest``:
    their tensors): each reads all its inputs and writes what a later step reads or the
    ensemble returns."""
    if spec.kind != "ensemble":
        return []
    if spec.steps:
        names = [name for name, _ in spec.steps]
        io = [(tuple(i), tuple(o)) for i, o in _parts(spec, manifest)]
    else:
        names = list(PIPELINES[spec.pipeline])
        io = [(GRAPHS[g].inputs, GRAPHS[g].outputs) for g in names]
    steps = []
    for i, (model, (inputs, outputs)) in enumerate(zip(names, io)):
        wanted = set(spec.outputs).union(*(later for later, _ in io[i + 1 :]))
        steps.append(EnsembleStep(model, inputs, tuple(t for t in outputs if t in wanted)))
    return steps


def _with_dependencies(flavour: str, models: Sequence[str]) -> list[str]:
    table = FLAVOUR_MODELS[flavour]
    unknown = [m for m in models if m not in table]
    if unknown or not models:
        raise ValueError(
            f"unknown model(s) {unknown or list(models)} for flavour {flavour!r}: choose from {list(table)}"
        )
    order: list[str] = []

    def add(name):
        for dep in table[name].needs:
            add(dep)
        if name not in order:
            order.append(name)

    for m in models:
        add(m)
    return order


@dataclass
class _Plans:
    """The engine files of one graph: ``default`` becomes ``1/model.plan``; ``per_cc`` maps a
    compute capability ("9.0") to its file, listed in ``cc_model_filenames``."""

    default: Path | None
    per_cc: dict[str, Path]

    def files(self) -> list[Path]:
        return sorted({p for p in [self.default, *self.per_cc.values()] if p is not None})


def _find_plans(engines_dir: Path, graph: str, manifest: dict) -> _Plans:
    """The engines of ``graph`` in ``engines_dir``: files named like ``mmtrt build-engines``
    names them (``<graph>[.<precision>][.smXY].plan``), of the export's precision. The default
    engine is ``<graph>.plan`` if there is one, else the one the manifest's ``engines.plans``
    records, else the only one."""
    precision = manifest.get("precision") or "fp32"  # mmtrt export's default
    found: dict[str | None, Path] = {}  # compute capability (None: any) -> file
    if engines_dir.is_dir():
        for p in sorted(engines_dir.iterdir()):
            m = _PLAN.match(p.name)
            if not m or m.group("graph") != graph or not p.is_file():
                continue
            if m.group("precision") and m.group("precision") != precision:
                continue  # an engine of another export precision
            cc = f"{int(m.group('major'))}.{m.group('minor')}" if m.group("major") else None
            found[cc] = p
    default = found.pop(None, None)
    if default is None:
        recorded = ((manifest.get("engines") or {}).get("plans") or {}).get(graph) or {}
        named = engines_dir / recorded["file"] if recorded.get("file") else None
        if named is not None and named.is_file():
            default = named
        elif len(found) == 1:
            default = next(iter(found.values()))
    return _Plans(default, found)


def _engine_profile_max(manifest: dict) -> int | None:
    profile = (manifest.get("engines") or {}).get("profile") or {}
    value = profile.get("max")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _plan_placement(plans: _Plans) -> tuple[dict[str, str], list[tuple[Path, str]]]:
    """(compute capability -> engine file name in 1/, the (engine file, name in 1/) to copy): the
    default engine is 1/model.plan, every other architecture's 1/model.smXY.plan."""
    names: dict[str, str] = {}
    copies = [(plans.default, PLAN_FILE)] if plans.default is not None else []
    for cc, src in plans.per_cc.items():
        if src == plans.default:  # the default engine is this architecture's
            names[cc] = PLAN_FILE
            continue
        names[cc] = f"model.sm{cc.replace('.', '')}.plan"
        copies.append((src, names[cc]))
    return names, copies


def _served_file(spec: ModelSpec, manifest: dict, precision: str) -> str:
    """The export file a cpu model serves: its graph's ONNX file, or its mixed copy."""
    if precision == "fp32":
        return spec.onnx_file
    return manifest["graphs"][spec.graph].get("reduced_precision_file") or spec.onnx_file


def _check_calibration(manifest: dict, flavour: str, export_dir: Path) -> None:
    """The export's calibration (mmtrt.calibration) must be readable, and servable: the python
    models apply it; the gpu flavour's ensembles answer the engines' probabilities with no python
    step, so they would answer uncalibrated probabilities and the argmax label."""
    from mmtrt.calibration import Calibration, CalibrationError

    try:
        calibration = Calibration.from_manifest(manifest)
    except CalibrationError as e:
        raise ServingError(f"{export_dir / 'manifest.json'}: {e}") from None
    if flavour == "gpu" and calibration != Calibration():
        raise ServingError(
            f"{export_dir} is calibrated (temperature {calibration.temperature:.4g}, threshold "
            f"{calibration.threshold:.4g}), which the gpu flavour cannot apply (its ensembles have "
            "no python step): serve it with --flavour cpu"
        )


def _max_batch(settings: RepositorySettings, manifest: dict, export_dir: Path) -> int:
    """The settings' max_batch, else the manifest's; for ``gpu``, the engines' optimisation-profile
    maximum when the manifest records one, and never above it."""
    profile_max = _engine_profile_max(manifest) if settings.flavour == "gpu" else None
    max_batch = settings.max_batch
    if max_batch is None:
        max_batch = profile_max if profile_max is not None else manifest.get("max_batch")
        if max_batch is None:
            raise ServingError(f"{export_dir / 'manifest.json'} has no max_batch; pass max_batch")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ServingError(f"max_batch must be a positive integer, got {max_batch!r}")
    if profile_max is not None and max_batch > profile_max:
        raise ServingError(
            f"max_batch {max_batch} is above the TensorRT engines' optimisation "
            f"profile maximum {profile_max} (manifest.json engines.profile.max)"
        )
    return max_batch


def served_model(
    name: str,
    manifest: dict,
    settings: RepositorySettings,
    *,
    max_batch: int,
    runtime: RuntimeChoice = ONNXRUNTIME_ASKED_FOR,
    precision: str = "fp32",
    cc_model_filenames: dict[str, str] | None = None,
) -> ServedModel:
    """Model ``name`` of ``settings.flavour`` as it is served with ``settings``: its tensors from
    the export ``manifest``, ``max_batch`` (resolved by the build), a graph model's runtime (and
    why) and served ``precision``, an engine model's files per architecture."""
    spec = FLAVOUR_MODELS[settings.flavour][name]
    parameters = None
    if spec.kind == "onnx":
        parameters = GraphSettings(
            onnx_file=_served_file(spec, manifest, precision),
            runtime=runtime.runtime,
            runtime_choice=runtime.reason,
            precision=precision,
            onnxruntime=settings.onnxruntime,
            openvino=settings.openvino,
            audit=settings.audit,
        )
    instances = settings.gpu_instances if spec.kind == "plan" else 1
    queue = {}
    if spec.kind == "decode":
        from mmtrt.data.gate import relaxed_rules  # (loads mmtrt.data: only when building)

        relaxed_rules(settings.image_limits.allow)  # ValueError naming an unknown rule
        parameters = settings.image_limits
        instances = settings.decoder_queue.instances
        queue = dict(
            max_queue_size=settings.decoder_queue.max_queue_size,
            queue_timeout_us=settings.decoder_queue.queue_timeout_s * 1_000_000,
        )
    return ServedModel(
        name,
        spec.platform,
        model_tensors(spec, manifest),
        max_batch,
        max_queue_delay_us=settings.max_queue_delay_us,
        instances=instances,
        **queue,
        parameters=parameters,
        steps=tuple(ensemble_steps(spec, manifest)),
        cc_model_filenames=tuple(sorted((cc_model_filenames or {}).items())),
        warmup=spec.kind == "onnx",
        description=spec.description,
    )


def _copy_backend(package: Path) -> None:
    """The mmtrt modules the python models import (:data:`.checks.BACKEND_MODULES`), copied
    unchanged into the package ``package``, under an ``__init__`` saying where they come from.
    The served model imports them without the rest of mmtrt (no torch), and never the mmtrt
    installed beside the server: the code is that of the mmtrt that built the repository."""
    from mmtrt import __version__

    source = Path(__file__).resolve().parents[1]
    package.mkdir()
    for module in BACKEND_MODULES:
        shutil.copy2(source / module, package / Path(module).name)
    (package / "__init__.py").write_text(
        f'"""Modules of mmtrt {__version__} (mmtrt/{", mmtrt/".join(BACKEND_MODULES)}), copied here by '
        "`mmtrt repo`: the server runs the graphs, reads its settings and decodes files with the "
        'code that training, evaluation and `mmtrt infer` use."""\n'
    )


def build_repository(
    export_dir: Path,
    out: Path,
    settings: RepositorySettings | None = None,
    *,
    engines_dir: Path | None = None,
    overwrite: bool = False,
    **changes,
) -> Path:
    """Build a Triton model repository at ``out`` from the export folder ``export_dir``, as
    ``settings`` say (:class:`~mmtrt.serving.settings.RepositorySettings`; default: its
    defaults). ``changes`` change settings by name, as the options of `mmtrt repo` name them
    (``ort_threads=1``, ``max_image_bytes=...``) or whole (``openvino=OpenVINOSettings(threads=1)``).

    ``settings.models`` defaults to :func:`default_models` (cpu: multimix, classifier,
    multimix_image; gpu: multimix, classifier); the models they are made of are added. Each
    model's config.pbtxt is rendered from its :func:`served_model`.

    ``cpu``: each graph model gets, in ``1/``, the shared ``model.py``, its ONNX file and the
    manifest.json (whose sha256 the model checks at load time; it is checked here too).
    ``file_decoder`` (the first step of ``multimix_image``) gets its own ``model.py`` and
    ``settings.image_limits`` as its parameters. Every python model gets the mmtrt modules it
    imports as the package ``1/mmtrt_backend`` (:data:`.checks.BACKEND_MODULES`: the runtimes,
    the settings, the image decoder). ``settings.runtime``: ``onnxruntime``, ``openvino``
    (compiled with ``settings.openvino``, precision hint f32) or ``auto`` (a fixed rule, see
    :mod:`.cpu_runtime`); the choice and its reason are each graph model's parameters
    ``runtime`` and ``runtime_choice``. ``settings.precision``: ``fp32``, or ``bf16`` / ``fp16``
    to serve the export's mixed-precision copies (forward pass of the saliency float32, backward
    half and decoder reduced) with OpenVINO; float32 where this host has no such hardware
    (:func:`~.cpu_runtime.served_precision`).

    ``gpu``: the models plus the engines they are made of (``multimix`` needs ``saliency`` and
    ``decoder``, ``classifier`` needs ``encoder``). Engine files are looked up in ``engines_dir``
    (default: ``export_dir``) as ``mmtrt build-engines`` names them,
    ``<graph>[.<precision>][.smXY].plan``: the default one (``<graph>.plan``, else the one the
    manifest records, else the only one) becomes ``1/model.plan``, every other architecture's
    ``1/model.smXY.plan``, each architecture listed in ``cc_model_filenames``. Engines that are
    not there yet do not stop the build: the configs are written, a warning names the missing
    files and the ``mmtrt build-engines`` command (:func:`missing_plan_files` lists them again
    later). Every config is compared with the export's ONNX graphs.

    ``max_batch`` defaults to the manifest's ``max_batch``; for ``gpu``, to the engines'
    optimisation-profile maximum (``engines.profile.max``) when the manifest records one, and
    may not exceed it. The repository is assembled in a temporary folder beside ``out`` and
    renamed into place at the end, so ``out`` is never left half built. An existing ``out`` is
    an error unless ``overwrite``. Returns ``out``.
    """
    settings = from_options(RepositorySettings, changes, base=settings or RepositorySettings())
    flavour = settings.flavour
    export_dir = Path(export_dir)
    out = Path(out)
    engines_dir = Path(engines_dir) if engines_dir is not None else export_dir
    if not export_dir.is_dir():
        raise ServingError(f"export folder {export_dir} does not exist")
    names = _with_dependencies(
        flavour, default_models(flavour) if settings.models is None else settings.models
    )
    specs = {name: FLAVOUR_MODELS[flavour][name] for name in names}
    manifest = _read_manifest(export_dir)
    _check_calibration(manifest, flavour, export_dir)
    max_batch = _max_batch(settings, manifest, export_dir)
    runtime, precision = ONNXRUNTIME_ASKED_FOR, "fp32"
    if flavour == "cpu":
        graphs = [spec.graph for spec in specs.values() if spec.kind == "onnx"]
        precision = served_precision(settings.precision, settings.runtime, manifest, export_dir, graphs)
        runtime = choose_runtime(settings.runtime, manifest, precision)

    # check every input before writing anything
    copies: dict[str, list[tuple[Path, str]]] = {name: [] for name in specs}
    cc_names: dict[str, dict[str, str]] = {}
    for name, spec in specs.items():
        if spec.kind == "plan":
            plans = _find_plans(engines_dir, spec.graph, manifest)
            for p in plans.files():
                _check_sha256(p, manifest, export_dir, required=False)
            cc_names[name], copies[name] = _plan_placement(plans)
    models = [
        served_model(
            name,
            manifest,
            settings,
            max_batch=max_batch,
            runtime=runtime,
            precision=precision,
            cc_model_filenames=cc_names.get(name),
        )
        for name in specs
    ]
    for model in models:
        if isinstance(model.parameters, GraphSettings):
            onnx = export_dir / model.parameters.onnx_file
            if not onnx.is_file():
                raise ServingError(
                    f"export folder {export_dir} has no {onnx.name} (needed by model '{model.name}')"
                )
            _check_sha256(onnx, manifest, export_dir, required=True)
            copies[model.name] = [(onnx, onnx.name), (export_dir / "manifest.json", "manifest.json")]

    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists (pass overwrite=True to replace it)")
    try:
        check_replaceable(out)
    except NotOurFolder as exc:
        raise ServingError(str(exc)) from None
    if flavour == "cpu":
        log.info("%s: runtime %s (%s)", out, runtime.runtime, runtime.reason)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        for model in models:
            version = staging / model.name / VERSION
            version.mkdir(parents=True)
            (staging / model.name / "config.pbtxt").write_text(render_config(model))
            for src, name in copies[model.name]:
                shutil.copy2(src, version / name)
            if model.platform == PYTHON:
                shutil.copy2(python_model_file(specs[model.name].kind), version / MODEL_FILE)
                _copy_backend(version / BACKEND_PACKAGE)
        validate_repository(staging, onnx_dir=export_dir)
        move_folder_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    missing = missing_plan_files(out)
    if missing:
        log.warning(
            "%s: %d TensorRT engine file(s) missing: %s; %s",
            out,
            len(missing),
            ", ".join(str(p.relative_to(out)) for p in missing),
            BUILD_ENGINES_HINT.format(export=export_dir),
        )
    return out
