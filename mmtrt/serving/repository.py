"""Build a Triton model repository from an export folder, and validate it offline.

The templates live in ``model_repository/<flavour>/`` at the repository root (see
``model_repository/README.md``). Two flavours:

``cpu``  python backend running onnxruntime: ``multimix`` (multimix.onnx) and ``classifier``
         (encoder.onnx), both run by the one shared ``model_repository/cpu/model.py``.
``gpu``  TensorRT engines ``encoder``, ``saliency`` and ``decoder`` (``tensorrt_plan``, built by
         ``mmtrt build-engines``) plus the ensembles ``multimix`` (saliency -> decoder) and
         ``classifier`` (encoder -> probs).

``build_repository`` copies the templates, renders the ``${...}`` fields of each
``config.pbtxt``, copies the files each model needs into its version folder ``1/``, and validates
the result offline (:func:`validate_repository`) before renaming it into place.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import string
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmtrt.files import file_sha256, move_folder_into_place

from .server import ServingError

__all__ = [
    "build_repository",
    "validate_config",
    "validate_repository",
    "missing_plan_files",
    "onnx_signature",
    "DEFAULT_MODELS",
    "parse_config",
    "render_config",
    "template_dir",
    "FLAVOURS",
    "MODELS",
    "FLAVOUR_MODELS",
    "ModelSpec",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """One model of a flavour. ``kind``: "onnx" (python backend + onnxruntime, runs
    ``<graph>.onnx``), "plan" (TensorRT engine of ``graph``) or "ensemble" (of ``needs``)."""

    kind: str
    graph: str | None = None
    needs: tuple[str, ...] = ()

    @property
    def onnx_file(self) -> str | None:
        return f"{self.graph}.onnx" if self.graph else None


FLAVOUR_MODELS: dict[str, dict[str, ModelSpec]] = {
    "cpu": {"multimix": ModelSpec("onnx", "multimix"), "classifier": ModelSpec("onnx", "encoder")},
    "gpu": {
        "encoder": ModelSpec("plan", "encoder"),
        "saliency": ModelSpec("plan", "saliency"),
        "decoder": ModelSpec("plan", "decoder"),
        "multimix": ModelSpec("ensemble", needs=("saliency", "decoder")),
        "classifier": ModelSpec("ensemble", needs=("encoder",)),
    },
}
FLAVOURS: tuple[str, ...] = tuple(FLAVOUR_MODELS)
#: CPU flavour: model name -> the ONNX file of the export it serves
MODELS: dict[str, str] = {name: spec.onnx_file for name, spec in FLAVOUR_MODELS["cpu"].items()}
#: the models a client talks to, in both flavours (the GPU engines are their building blocks)
DEFAULT_MODELS: tuple[str, ...] = ("multimix", "classifier")

DEFAULT_MAX_QUEUE_DELAY_US = 2000
DEFAULT_ORT_THREADS = 0  # onnxruntime's default (one thread per core)
DEFAULT_GPU_INSTANCES = 1
VERSION = "1"
SHARED_MODEL_FILE = "model.py"  # the cpu flavour's one python-backend model, beside its models
PLAN_FILE = "model.plan"
# Engine files in the engines folder, as `mmtrt build-engines` names them:
# "<graph>.<precision>.sm<major><minor>.plan" (saliency.fp32.sm90.plan: compute capability 9.0);
# the precision and the architecture parts are optional (decoder.plan, encoder.sm86.plan).
_PLAN = re.compile(
    r"^(?P<graph>[A-Za-z0-9_-]+?)(?:\.(?P<precision>fp32|fp16|bf16))?"
    r"(?:\.sm(?P<major>\d+)(?P<minor>\d))?\.plan$"
)
BUILD_ENGINES_HINT = (
    "build them on the serving GPU with `mmtrt build-engines {export}` and run "
    "`mmtrt repo {export} OUT --flavour gpu` again (or copy each engine to the "
    "model's 1/model.plan)"
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
    checks Triton would make at load time: the name matches the model folder, a backend or
    platform is set, inputs and outputs exist with positive dims, preferred batch sizes fit
    max_batch_size, an ensemble has steps and no batcher of its own. Checks that involve other
    models (ensemble wiring) are :func:`validate_repository`'s.
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
        names = [t.name for t in tensors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate {kind} names {dupes}")
        for t in tensors:
            if not t.name:
                problems.append(f"an {kind} has no name")
            if t.data_type == 0:  # TYPE_INVALID
                problems.append(f"{kind} {t.name!r} has no data_type")
            if not t.dims or any(d < 1 and d != -1 for d in t.dims):
                problems.append(f"{kind} {t.name!r} has invalid dims {list(t.dims)}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching needs max_batch_size > 0")
        too_big = [
            b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size or b < 1
        ]
        if too_big:
            problems.append(f"preferred_batch_size {too_big} outside 1..{config.max_batch_size}")
    if config.platform == "ensemble":
        if not config.ensemble_scheduling.step:
            problems.append("an ensemble needs ensemble_scheduling steps")
        if config.HasField("dynamic_batching") or config.instance_group:
            problems.append(
                "an ensemble takes no dynamic_batching or instance_group (its composing models batch)"
            )
        for i, step in enumerate(config.ensemble_scheduling.step):
            if not step.model_name:
                problems.append(f"ensemble step {i} names no model")
    elif config.HasField("ensemble_scheduling"):
        problems.append("ensemble_scheduling set on a model whose platform is not 'ensemble'")
    if problems:
        raise ServingError(f"{path}: invalid Triton model config: " + "; ".join(problems))
    return config


def render_config(
    template: str,
    *,
    max_batch: int,
    max_queue_delay_us: int,
    ort_threads: int = DEFAULT_ORT_THREADS,
    cc_model_filenames: dict[str, str] | None = None,
    gpu_instances: int = DEFAULT_GPU_INSTANCES,
) -> str:
    """Fill the ``${...}`` fields of a config.pbtxt template (fields a template does not use are
    ignored; an unknown field in the template is an error)."""
    # Only the full batch is preferred: with smaller preferred sizes the batcher dispatches as
    # soon as one of them forms (e.g. 2 of 8 concurrent requests); waiting up to
    # max_queue_delay for a full batch is what pays on CPU and with a TensorRT profile alike.
    cc_lines = "".join(
        f'cc_model_filenames {{ key: "{cc}" value: "{name}" }}\n'
        for cc, name in sorted((cc_model_filenames or {}).items())
    )
    values = {
        "max_batch_size": str(max_batch),
        "preferred_batch_sizes": str(max_batch),
        "max_queue_delay_us": str(max_queue_delay_us),
        "ort_intra_op_threads": str(ort_threads),
        "cc_model_filenames": cc_lines,
        "gpu_instances": str(gpu_instances),
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as e:
        raise ServingError(f"config template has an unknown or malformed field: {e}") from None


# --------------------------------------------------------------------------- repository checks


def _tensors(tensors) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in tensors}


def _dtype_name(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


def _spec(data_type: int, dims) -> str:
    """A tensor's type and shape as an error message names them: `TYPE_FP32 [-1, 1, 256, 256]`."""
    return f"{_dtype_name(data_type)} {list(dims)}"


def onnx_signature(path: Path) -> dict[str, dict[str, tuple[str, tuple]]]:
    """``{"inputs"|"outputs": {name: (Triton data type, dims)}}`` of an ONNX file; dims include
    the batch axis, symbolic dims as their name (e.g. ``("batch", 1, 256, 256)``)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    triton = {
        TensorProto.FLOAT: "TYPE_FP32",
        TensorProto.FLOAT16: "TYPE_FP16",
        TensorProto.INT64: "TYPE_INT64",
        TensorProto.INT32: "TYPE_INT32",
        TensorProto.BOOL: "TYPE_BOOL",
        TensorProto.BFLOAT16: "TYPE_BF16",
    }

    def sig(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
            )
            out[v.name] = (triton.get(t.elem_type, f"onnx:{t.elem_type}"), dims)
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {
        "inputs": sig(i for i in model.graph.input if i.name not in initializers),
        "outputs": sig(model.graph.output),
    }


def _compare_with_onnx(name: str, config, onnx_path: Path, *, all_outputs: bool) -> list[str]:
    """Problems between a model config and the ONNX graph it serves: tensor names, data types
    and dims (the ONNX batch axis is the config's implicit one)."""
    sig = onnx_signature(onnx_path)
    batched = config.max_batch_size > 0
    problems = []
    for kind, tensors, want in (
        ("input", config.input, sig["inputs"]),
        ("output", config.output, sig["outputs"]),
    ):
        have = _tensors(tensors)
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        if kind == "output" and not all_outputs:
            missing = []  # a python model may return a subset of the graph's outputs
            extra = [n for n in extra if n != "label"]  # label: derived from probs
        if missing:
            problems.append(f"{name}: {onnx_path.name} has {kind}s {missing} the config lacks")
        if extra:
            problems.append(
                f"{name}: config {kind}s {extra} are not in {onnx_path.name} ({kind}s {list(want)})"
            )
        for tensor, (dtype, dims) in have.items():
            if tensor not in want:
                continue
            onnx_dtype, onnx_dims = want[tensor]
            onnx_dims = onnx_dims[1:] if batched else onnx_dims
            if _dtype_name(dtype) != onnx_dtype:
                problems.append(
                    f"{name}: {kind} {tensor!r} is {_dtype_name(dtype)} in the "
                    f"config, {onnx_dtype} in {onnx_path.name}"
                )
            fits = len(onnx_dims) == len(dims) and all(
                not isinstance(o, int) or d == -1 or o == d for o, d in zip(onnx_dims, dims)
            )
            if not fits:
                problems.append(
                    f"{name}: {kind} {tensor!r} has dims {list(dims)} in the config, "
                    f"{list(onnx_dims)} in {onnx_path.name} (after the batch axis)"
                )
    return problems


def _ensemble_problems(name: str, config, configs: dict) -> list[str]:
    """Wiring of an ensemble: every step's model exists, maps only tensors that model has, reads
    tensors that exist, and the ensemble tensors agree on data type and dims."""
    problems = []
    # ensemble tensor -> (data type, dims, who declares it)
    known: dict[str, tuple[int, tuple[int, ...], str]] = {
        t: (dt, dims, "the ensemble input") for t, (dt, dims) in _tensors(config.input).items()
    }
    produced: dict[str, str] = {}
    consumers: list[tuple[str, str, int, tuple, str]] = []
    for i, step in enumerate(config.ensemble_scheduling.step):
        where = f"{name}: step {i} ({step.model_name!r})"
        sub = configs.get(step.model_name)
        if sub is None:
            problems.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        if sub.max_batch_size < config.max_batch_size:
            problems.append(
                f"{where}: max_batch_size {sub.max_batch_size} below the ensemble's {config.max_batch_size}"
            )
        sub_in, sub_out = _tensors(sub.input), _tensors(sub.output)
        unmapped = [t for t in sub_in if t not in step.input_map]
        if unmapped:
            problems.append(f"{where}: inputs {unmapped} of {step.model_name!r} are not mapped")
        for key, value in step.input_map.items():
            if key not in sub_in:
                problems.append(f"{where}: {step.model_name!r} has no input {key!r}")
                continue
            consumers.append((value, where, *sub_in[key], f"{step.model_name}.{key}"))
        for key, value in step.output_map.items():
            if key not in sub_out:
                problems.append(f"{where}: {step.model_name!r} has no output {key!r}")
                continue
            if value in produced or value in known and known[value][2] == "the ensemble input":
                problems.append(f"{where}: ensemble tensor {value!r} is written twice")
            produced[value] = where
            known[value] = (*sub_out[key], f"{step.model_name}.{key}")
    for value, where, dtype, dims, who in consumers:
        if value not in known:
            problems.append(f"{where}: reads ensemble tensor {value!r} that nothing produces")
        elif known[value][:2] != (dtype, dims):
            problems.append(
                f"{where}: ensemble tensor {value!r} is {_spec(*known[value][:2])} "
                f"({known[value][2]}) but {who} is {_spec(dtype, dims)}"
            )
    for tensor, (dtype, dims) in _tensors(config.output).items():
        if tensor not in produced:
            problems.append(f"{name}: output {tensor!r} is produced by no step")
        elif known[tensor][:2] != (dtype, dims):
            problems.append(
                f"{name}: output {tensor!r} is {_spec(dtype, dims)} but "
                f"{known[tensor][2]} gives {_spec(*known[tensor][:2])}"
            )
    return problems


def _plan_files(config) -> list[str]:
    return [config.default_model_filename or PLAN_FILE] + sorted(config.cc_model_filenames.values())


def missing_plan_files(repository: Path) -> list[Path]:
    """TensorRT engine files the configs of ``repository`` name that are not there. A model
    needs its ``default_model_filename``, unless per-architecture files (cc_model_filenames)
    exist, in which case those must all be there."""
    repository = Path(repository)
    missing = []
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        try:
            config = parse_config(cfg_path.read_text(), source=str(cfg_path))
        except ServingError:
            continue  # an invalid config is validate_config's (and tritonserver's) to report
        if config.platform != "tensorrt_plan" and config.backend != "tensorrt":
            continue
        version = cfg_path.parent / VERSION
        cc_files = [version / f for f in sorted(config.cc_model_filenames.values())]
        default = version / (config.default_model_filename or PLAN_FILE)
        if cc_files:
            missing += [f for f in cc_files if not f.is_file()]
        elif not default.is_file():
            missing.append(default)
    return missing


def validate_repository(repository: Path, *, onnx_dir: Path | None = None) -> dict:
    """Check a whole model repository offline; return ``{model name: ModelConfig}``.

    Every ``config.pbtxt`` passes :func:`validate_config` and has a version folder; every
    ensemble step names a model of the repository, maps tensors that model has, and the
    ensemble's tensors agree in data type and dims with the models that produce and read them.
    With ``onnx_dir`` (an export folder), every model is also compared with the ONNX graph it
    runs or was built from (``<graph>.onnx``, when that file is there): tensor names, data types
    and dims. Missing engine files are not an error here (see :func:`missing_plan_files`).
    Raises ServingError listing every problem.
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise ServingError(f"model repository {repository} does not exist")
    problems: list[str] = []
    configs = {}
    for cfg_path in sorted(repository.glob("*/config.pbtxt")):
        try:
            configs[cfg_path.parent.name] = validate_config(cfg_path)
        except ServingError as e:
            problems.append(str(e))
        if not (cfg_path.parent / VERSION).is_dir():
            problems.append(f"{cfg_path.parent.name}: no version folder {VERSION}/")
    if not configs and not problems:
        problems.append(f"{repository} holds no model (no */config.pbtxt)")
    for name, config in configs.items():
        if config.platform == "ensemble":
            problems += _ensemble_problems(name, config, configs)
        if onnx_dir is None:
            continue
        graph = _graph_of(name, config, repository)
        if graph and (Path(onnx_dir) / f"{graph}.onnx").is_file():
            problems += _compare_with_onnx(
                name, config, Path(onnx_dir) / f"{graph}.onnx", all_outputs=config.platform == "tensorrt_plan"
            )
    if problems:
        raise ServingError(
            f"model repository {repository} is invalid:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return configs


def _graph_of(name: str, config, repository: Path) -> str | None:
    """The export graph a model serves: the python model's onnx_file parameter, or the engine
    model's own name (encoder, saliency, decoder)."""
    if config.backend == "python":
        onnx_file = config.parameters["onnx_file"].string_value if "onnx_file" in config.parameters else ""
        return onnx_file[:-5] if onnx_file.endswith(".onnx") else None
    if config.platform == "tensorrt_plan" or config.backend == "tensorrt":
        return name
    return None


# --------------------------------------------------------------------------- building


def _read_manifest(export_dir: Path) -> dict:
    path = export_dir / "manifest.json"
    if not path.is_file():
        raise ServingError(
            f"export folder {export_dir} has no manifest.json (export the model "
            "with `mmtrt export`, which writes it beside the ONNX files)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ServingError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ServingError(f"{path} has no 'files' table")
    return manifest


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


def build_repository(
    export_dir: Path,
    out: Path,
    *,
    flavour: str = "cpu",
    max_batch: int | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    engines_dir: Path | None = None,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    ort_threads: int = DEFAULT_ORT_THREADS,
    gpu_instances: int = DEFAULT_GPU_INSTANCES,
    overwrite: bool = False,
) -> Path:
    """Build a Triton model repository at ``out`` from the export folder ``export_dir``.

    ``cpu``: each model gets its rendered config.pbtxt and, in ``1/``, the shared ``model.py``,
    its ONNX file and the manifest.json (whose sha256 the model checks at load time; it is checked
    here too).

    ``gpu``: the models of ``models`` plus the engines they are made of (``multimix`` needs
    ``saliency`` and ``decoder``, ``classifier`` needs ``encoder``). Engine files are looked up
    in ``engines_dir`` (default: ``export_dir``) as ``mmtrt build-engines`` names them,
    ``<graph>[.<precision>][.smXY].plan``: the default one (``<graph>.plan``, else the one the
    manifest records, else the only one) becomes ``1/model.plan``, every other architecture's
    ``1/model.smXY.plan``, each architecture listed in ``cc_model_filenames``. Engines
    that are not there yet do not stop the build: the configs are written, a warning names the
    missing files and the ``mmtrt build-engines`` command (:func:`missing_plan_files` lists them
    again later). Every config is compared with the export's ONNX graphs.

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
    names = _with_dependencies(flavour, models)
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

    # check every input before writing anything
    plans: dict[str, _Plans] = {}
    for name, spec in specs.items():
        if spec.kind == "onnx":
            onnx = export_dir / spec.onnx_file
            if not onnx.is_file():
                raise ServingError(
                    f"export folder {export_dir} has no {spec.onnx_file} (needed by model '{name}')"
                )
            _check_sha256(onnx, manifest, export_dir, required=True)
        elif spec.kind == "plan":
            plans[name] = _find_plans(engines_dir, spec.graph, manifest)
            for p in plans[name].files():
                _check_sha256(p, manifest, export_dir, required=False)

    if out.exists() and not overwrite:
        raise ServingError(f"{out} already exists (pass overwrite=True to replace it)")
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
            )
            (dst / "config.pbtxt").write_text(text)
            if spec.kind == "onnx":
                shutil.copy2(templates / SHARED_MODEL_FILE, dst / VERSION / SHARED_MODEL_FILE)
                shutil.copy2(export_dir / spec.onnx_file, dst / VERSION / spec.onnx_file)
                shutil.copy2(export_dir / "manifest.json", dst / VERSION / "manifest.json")
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
