"""Build a Triton model repository from an export folder, and validate it offline.

The templates live in ``model_repository/<flavour>/`` at the repository root (see
``model_repository/README.md``). Two flavours:

``cpu``  python backend running onnxruntime or OpenVINO (``runtime``; ``auto`` measures both
         here, :mod:`.cpu_runtime`): ``multimix`` (multimix.onnx) and ``classifier``
         (encoder.onnx), both run by the one shared ``model_repository/cpu/model.py``; and
         ``multimix_image``, an ensemble of ``file_decoder`` (image files as BYTES -> images,
         with mmtrt's decoder copied into it) and ``multimix``.
``gpu``  TensorRT engines ``encoder``, ``saliency`` and ``decoder`` (``tensorrt_plan``, built by
         ``mmtrt build-engines``) plus the ensembles ``multimix`` (saliency -> decoder) and
         ``classifier`` (encoder -> probs).

``build_repository`` copies the templates, renders the ``${...}`` fields of each
``config.pbtxt``, copies the files each model needs into its version folder ``1/``, and validates
the result offline (:func:`validate_repository`) before renaming it into place.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmtrt.files import file_sha256, move_folder_into_place
from mmtrt.graphs import GRAPHS, JOINT_OUTPUTS, PIPELINES

from .checks import (
    BUILD_ENGINES_HINT,
    DECODER_MODULES,
    DECODER_PACKAGE,
    PLAN_FILE,
    VERSION,
    missing_plan_files,
    validate_repository,
)
from .config import (
    DEFAULT_GPU_INSTANCES,
    DEFAULT_IMAGE_LIMITS,
    DEFAULT_OPENVINO,
    DEFAULT_ORT_THREADS,
    EnsembleStep,
    ImageLimits,
    ModelTensors,
    OpenVINOSettings,
    Tensor,
    render_config,
)
from .cpu_runtime import check_runtime, choose_runtime
from .errors import ServingError

__all__ = [
    "build_repository",
    "template_dir",
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
    serves (default: all its graph's); ``label`` is derived by the python model (the argmax of
    ``probs``). Its tensors' types and dims come from the export manifest's graphs."""

    kind: str
    graph: str | None = None
    pipeline: str | None = None
    outputs: tuple[str, ...] | None = None
    steps: tuple[tuple[str, ModelSpec], ...] = ()

    @property
    def onnx_file(self) -> str | None:
        return f"{self.graph}.onnx" if self.graph else None

    @property
    def needs(self) -> tuple[str, ...]:
        """The models an ensemble is made of (the GPU flavour names each engine by its graph)."""
        if self.kind != "ensemble":
            return ()
        return tuple(name for name, _ in self.steps) if self.steps else PIPELINES[self.pipeline]


#: the served model that takes image files (BYTES) and decodes them in the server
IMAGE_MODEL = "multimix_image"
_CPU_MULTIMIX = ModelSpec("onnx", "multimix", outputs=("probs", "label", "mask", "saliency"))
_FILE_DECODER = ModelSpec("decode")
FILE = Tensor("file", "TYPE_STRING", (1,))  # one image file per batch item
ORIGINAL_SIZE = Tensor("original_size", "TYPE_INT32", (2,))  # rows, columns of that file

FLAVOUR_MODELS: dict[str, dict[str, ModelSpec]] = {
    "cpu": {
        "multimix": _CPU_MULTIMIX,
        "classifier": ModelSpec("onnx", "encoder", outputs=("probs", "label")),
        "file_decoder": _FILE_DECODER,
        IMAGE_MODEL: ModelSpec(
            "ensemble",
            steps=(("file_decoder", _FILE_DECODER), ("multimix", _CPU_MULTIMIX)),
            outputs=(*_CPU_MULTIMIX.outputs, ORIGINAL_SIZE.name),
        ),
    },
    "gpu": {
        "encoder": ModelSpec("plan", "encoder"),
        "saliency": ModelSpec("plan", "saliency"),
        "decoder": ModelSpec("plan", "decoder"),
        # no `label`: it would need a python step between engines; clients take argmax(probs)
        "multimix": ModelSpec("ensemble", pipeline="joint", outputs=JOINT_OUTPUTS),
        "classifier": ModelSpec("ensemble", pipeline="classify", outputs=("probs",)),
    },
}
LABEL = Tensor("label", "TYPE_INT64", (1,))  # derived by the python model: argmax of probs
FLAVOURS: tuple[str, ...] = tuple(FLAVOUR_MODELS)
#: CPU flavour: model name -> the ONNX file of the export it serves (the models that run one)
MODELS: dict[str, str] = {
    name: spec.onnx_file for name, spec in FLAVOUR_MODELS["cpu"].items() if spec.onnx_file
}
#: the models a client talks to, in both flavours (the GPU engines are their building blocks)
DEFAULT_MODELS: tuple[str, ...] = ("multimix", "classifier")
#: what a repository serves unless told otherwise: the cpu flavour adds the image-file model
_FLAVOUR_DEFAULTS = {"cpu": (*DEFAULT_MODELS, IMAGE_MODEL), "gpu": DEFAULT_MODELS}


def default_models(flavour: str) -> tuple[str, ...]:
    _check_flavour(flavour)
    return _FLAVOUR_DEFAULTS[flavour]


DEFAULT_MAX_QUEUE_DELAY_US = 2000
SHARED_MODEL_FILE = "model.py"  # the cpu flavour's one python-backend model, beside its models
# Engine files in the engines folder, as `mmtrt build-engines` names them:
# "<graph>.<precision>.sm<major><minor>.plan" (saliency.fp32.sm90.plan: compute capability 9.0);
# the precision and the architecture parts are optional (decoder.plan, encoder.sm86.plan).
_PLAN = re.compile(
    r"^(?P<graph>[A-Za-z0-9_-]+?)(?:\.(?P<precision>fp32|fp16|bf16))?"
    r"(?:\.sm(?P<major>\d+)(?P<minor>\d))?\.plan$"
)


def template_dir(flavour: str = "cpu") -> Path:
    """Folder holding the templates of ``flavour`` (``<repo>/model_repository/<flavour>``)."""
    _check_flavour(flavour)
    for base in (Path(__file__).resolve().parents[2] / "model_repository", Path.cwd() / "model_repository"):
        if (base / flavour).is_dir():
            return base / flavour
    raise ServingError(
        f"templates of flavour {flavour!r} not found (expected the folder "
        f"model_repository/{flavour} at the mmtrt source root)"
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
            yield _graph_tensors(manifest, graph)


def model_tensors(spec: ModelSpec, manifest: dict) -> ModelTensors:
    """A model's input and output tensors: its graph's (an ensemble: the inputs its pipeline or
    steps take from outside, the outputs they produce; the file decoder: ``file`` -> the image
    and its ``original_size``), the outputs narrowed to ``spec.outputs``."""
    if spec.kind == "decode":
        return ModelTensors((FILE,), (_image_tensor(manifest), ORIGINAL_SIZE))
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


def _check_openvino_settings(settings: OpenVINOSettings) -> None:
    if int(settings.threads) < 0 or int(settings.streams) < 1:
        raise ValueError(
            f"OpenVINO threads must be >= 0 and streams >= 1, got {settings.threads} and {settings.streams}"
        )
    if any(c in settings.cache_dir for c in '"\\\n'):
        raise ValueError(f"OpenVINO cache folder {settings.cache_dir!r}: no quotes, backslashes or newlines")


def served_precision(
    precision: str, flavour: str, runtime: str, manifest: dict, export_dir: Path, graphs: Sequence[str]
) -> str:
    """The precision the cpu flavour serves: ``precision``'s mixed copies of the export's
    ``graphs`` (``<graph>.<precision>.onnx``, :mod:`mmtrt.export.precision`), run by OpenVINO,
    where this host has the hardware; float32, with a warning, where it has not."""
    from mmtrt.export.precision import PRECISIONS
    from mmtrt.runtimes import openvino

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return precision
    if flavour != "cpu":
        raise ValueError(
            "precision applies to the cpu flavour: a gpu repository serves the engines `mmtrt build-engines` built"
        )
    exported = manifest.get("precision", "fp32")
    if exported != precision:
        raise ServingError(
            f"the export in {export_dir} is {exported}: it has no {precision} copies of its graphs; "
            f"export with `mmtrt export --precision {precision}`"
        )
    if runtime == "onnxruntime":
        raise ServingError(
            f"{precision} on CPU is served by OpenVINO (onnxruntime's CPU provider has no bf16 "
            "convolutions and emulates fp16 ones): pass --runtime openvino (or auto)"
        )
    native, note = openvino.reduced_precision_native(precision)
    if not native:
        log.warning("%s", note)
        return "fp32"
    copies = [manifest["graphs"][graph].get("reduced_precision_file") for graph in graphs]
    unchecked = [
        str(copy)
        for copy in copies
        if "openvino" not in ((manifest.get("files") or {}).get(copy) or {}).get("checked_in", [])
    ]
    if unchecked:
        raise ServingError(
            f"the export's {precision} copies {', '.join(unchecked)} were not checked in OpenVINO "
            f"(exported where OpenVINO or {precision} hardware was missing): export again on a host like this one"
        )
    return precision


def _served_file(spec: ModelSpec, manifest: dict, precision: str) -> str:
    """The export file a cpu model serves: its graph's ONNX file, or its mixed copy."""
    if precision == "fp32":
        return spec.onnx_file
    return manifest["graphs"][spec.graph].get("reduced_precision_file") or spec.onnx_file


def _copy_decoder(package: Path) -> None:
    """mmtrt's image decoder as a package of its own (``package``): the modules of mmtrt/data it
    consists of, unchanged (their relative imports hold), under an ``__init__`` saying where
    they come from. The served model imports it without the rest of mmtrt (mmtrt.data's
    ``__init__`` imports the datasets, hence torch)."""
    from mmtrt import __version__

    source = Path(__file__).resolve().parents[1] / "data"
    package.mkdir()
    for module in DECODER_MODULES:
        shutil.copy2(source / f"{module}.py", package / f"{module}.py")
    (package / "__init__.py").write_text(
        f'"""mmtrt {__version__}\'s image decoder (mmtrt/data: {", ".join(f"{m}.py" for m in DECODER_MODULES)}), '
        "copied here by `mmtrt repo`: the server decodes files with the code that training, "
        'evaluation and `mmtrt infer` decode them with."""\n'
    )


def build_repository(
    export_dir: Path,
    out: Path,
    *,
    flavour: str = "cpu",
    max_batch: int | None = None,
    models: Sequence[str] | None = None,
    engines_dir: Path | None = None,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    ort_threads: int = DEFAULT_ORT_THREADS,
    gpu_instances: int = DEFAULT_GPU_INSTANCES,
    runtime: str = "onnxruntime",
    openvino: OpenVINOSettings = DEFAULT_OPENVINO,
    image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    precision: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """Build a Triton model repository at ``out`` from the export folder ``export_dir``.

    ``models`` defaults to :func:`default_models` (cpu: multimix, classifier, multimix_image;
    gpu: multimix, classifier); the models they are made of are added.

    ``cpu``: each model gets its rendered config.pbtxt and, in ``1/``, the shared ``model.py``,
    its ONNX file and the manifest.json (whose sha256 the model checks at load time; it is checked
    here too). ``file_decoder`` (the first step of ``multimix_image``) gets its own ``model.py``
    and mmtrt's image decoder (mmtrt/data: decoded.py, dicom.py, images.py) as the package
    ``1/mmtrt_decoder``, and ``image_limits`` as its parameters ``max_image_bytes`` and
    ``max_image_pixels``.

    ``gpu``: the models of ``models`` plus the engines they are made of (``multimix`` needs
    ``saliency`` and ``decoder``, ``classifier`` needs ``encoder``). Engine files are looked up
    in ``engines_dir`` (default: ``export_dir``) as ``mmtrt build-engines`` names them,
    ``<graph>[.<precision>][.smXY].plan``: the default one (``<graph>.plan``, else the one the
    manifest records, else the only one) becomes ``1/model.plan``, every other architecture's
    ``1/model.smXY.plan``, each architecture listed in ``cc_model_filenames``. Engines
    that are not there yet do not stop the build: the configs are written, a warning names the
    missing files and the ``mmtrt build-engines`` command (:func:`missing_plan_files` lists them
    again later). Every config is compared with the export's ONNX graphs.

    ``runtime`` (cpu): ``onnxruntime``, ``openvino`` (compiled with ``openvino``'s settings,
    precision hint f32) or ``auto`` (measured here, see :mod:`.cpu_runtime`); the choice and its
    reason are rendered into each config (``runtime``, ``runtime_choice``).

    ``precision`` (cpu): ``fp32``, or ``bf16`` / ``fp16`` to serve the export's mixed-precision
    copies (forward pass of the saliency float32, backward half and decoder reduced) with
    OpenVINO; float32 where this host has no such hardware (:func:`served_precision`).

    ``max_batch`` defaults to the manifest's ``max_batch``; for ``gpu``, to the engines'
    optimisation-profile maximum (``engines.profile.max``) when the manifest records one, and
    may not exceed it. The repository is assembled in a temporary folder beside ``out`` and
    renamed into place at the end, so ``out`` is never left half built. An existing ``out`` is
    an error unless ``overwrite``. Returns ``out``.
    """
    _check_flavour(flavour)
    export_dir = Path(export_dir)
    out = Path(out)
    engines_dir = Path(engines_dir) if engines_dir is not None else export_dir
    if not export_dir.is_dir():
        raise ServingError(f"export folder {export_dir} does not exist")
    names = _with_dependencies(flavour, default_models(flavour) if models is None else models)
    specs = {name: FLAVOUR_MODELS[flavour][name] for name in names}
    manifest = _read_manifest(export_dir)

    profile_max = _engine_profile_max(manifest) if flavour == "gpu" else None
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
    if int(max_queue_delay_us) < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    if int(gpu_instances) < 1:
        raise ValueError(f"gpu_instances must be >= 1, got {gpu_instances}")
    check_runtime(runtime)
    if flavour != "cpu" and runtime != "onnxruntime":
        raise ValueError(f"runtime {runtime!r} applies to the cpu flavour only (gpu runs TensorRT engines)")
    _check_openvino_settings(openvino)
    served_graphs = [spec.graph for spec in specs.values() if spec.kind == "onnx"]
    precision = served_precision(precision, flavour, runtime, manifest, export_dir, served_graphs)
    files = {
        name: _served_file(spec, manifest, precision) for name, spec in specs.items() if spec.kind == "onnx"
    }

    # check every input before writing anything
    plans: dict[str, _Plans] = {}
    for name, spec in specs.items():
        if spec.kind == "onnx":
            onnx = export_dir / files[name]
            if not onnx.is_file():
                raise ServingError(
                    f"export folder {export_dir} has no {files[name]} (needed by model '{name}')"
                )
            _check_sha256(onnx, manifest, export_dir, required=True)
        elif spec.kind == "plan":
            plans[name] = _find_plans(engines_dir, spec.graph, manifest)
            for p in plans[name].files():
                _check_sha256(p, manifest, export_dir, required=False)

    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists (pass overwrite=True to replace it)")
    choice = None
    if flavour == "cpu":
        choice = choose_runtime(
            runtime,
            manifest,
            [export_dir / f for f in files.values()],
            ort_threads=int(ort_threads),
            openvino=openvino,
            precision=precision,
            batch=min(2, max_batch),
        )
        log.info("%s: runtime %s (%s)", out, choice.runtime, choice.reason)
    templates = template_dir(flavour)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        for name, spec in specs.items():
            dst = staging / name
            (dst / VERSION).mkdir(parents=True)
            cc_names = {}
            if spec.kind == "plan":
                found = plans[name]
                if found.default is not None:
                    shutil.copy2(found.default, dst / VERSION / PLAN_FILE)
                for cc, src in found.per_cc.items():
                    if src == found.default:  # the default engine is this architecture's
                        cc_names[cc] = PLAN_FILE
                        continue
                    cc_names[cc] = f"model.sm{cc.replace('.', '')}.plan"
                    shutil.copy2(src, dst / VERSION / cc_names[cc])
            text = render_config(
                (templates / name / "config.pbtxt").read_text(),
                max_batch=max_batch,
                max_queue_delay_us=int(max_queue_delay_us),
                ort_threads=int(ort_threads),
                cc_model_filenames=cc_names,
                gpu_instances=int(gpu_instances),
                tensors=model_tensors(spec, manifest),
                steps=ensemble_steps(spec, manifest),
                runtime=choice.runtime if choice else "onnxruntime",
                runtime_choice=choice.reason if choice else "",
                openvino=openvino,
                image_limits=image_limits,
                decoder_package=DECODER_PACKAGE,
                onnx_file=files.get(name, ""),
                precision=precision,
            )
            (dst / "config.pbtxt").write_text(text)
            if spec.kind == "onnx":
                shutil.copy2(templates / SHARED_MODEL_FILE, dst / VERSION / SHARED_MODEL_FILE)
                shutil.copy2(export_dir / files[name], dst / VERSION / files[name])
                shutil.copy2(export_dir / "manifest.json", dst / VERSION / "manifest.json")
            elif spec.kind == "decode":
                shutil.copy2(templates / name / SHARED_MODEL_FILE, dst / VERSION / SHARED_MODEL_FILE)
                _copy_decoder(dst / VERSION / DECODER_PACKAGE)
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
