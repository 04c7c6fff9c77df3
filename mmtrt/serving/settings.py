"""What a model repository and each of its served models are configured with: one typed object
per group of settings, each setting declared once, as a dataclass field whose metadata says its
command-line option, its config.pbtxt parameter, its help and its valid values.

- :class:`RepositorySettings` is what `mmtrt repo` is asked for: its options are generated from
  the fields (:func:`options`, :func:`from_options`), and ``build_repository`` takes it.
- ``build_repository`` resolves it into one :class:`mmtrt.serving.config.ServedModel` per served
  model (batching, instances, and the parameters its python model reads), whose config.pbtxt it
  renders.
- A python model's parameters are a :class:`GraphSettings` (``multimix``, ``classifier``: the
  ONNX file, runtime, precision, threads) or an :class:`ImageLimits` (``file_decoder``, whose
  instances and queue are a :class:`DecoderQueue`), written
  with :func:`to_parameters` and read back in the server by its ``model.py`` with
  :func:`from_parameters`.

So adding a setting is adding a field here (with its option and / or parameter) and the code
that uses it. This module imports the standard library only: ``mmtrt repo`` copies it beside the
served models (:data:`mmtrt.serving.checks.BACKEND_MODULES`), where ``model.py`` reads its
parameters with it.
"""

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass

FLAVOURS = ("cpu", "gpu")
#: what the cpu flavour's python model runs a graph with (the ``runtime`` parameter)
RUNTIMES = ("onnxruntime", "openvino")
#: what `mmtrt repo --runtime` takes: ``auto`` is a fixed rule (mmtrt.serving.cpu_runtime)
RUNTIME_CHOICES = (*RUNTIMES, "auto")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_MAX_QUEUE_DELAY_US = 2000


def setting(
    default=dataclasses.MISSING,
    *,
    help: str = "",
    option: str | None = None,
    parameter: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: int | None = None,
    path: bool = False,
):
    """A settings field: its command-line ``option`` (e.g. ``--ort-threads``), the config.pbtxt
    ``parameter`` a python model reads it from, the ``choices`` or the ``minimum`` it must
    respect, ``path``: a folder given on the command line (made absolute there)."""
    metadata = {"help": help, "option": option, "parameter": parameter}
    metadata.update(choices=choices, minimum=minimum, path=path)
    return dataclasses.field(default=default, metadata=metadata)


def _requirement(f: dataclasses.Field) -> str:
    minimum = f.metadata.get("minimum")
    if minimum is None:
        return "an integer"
    return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"


def _problem(f: dataclasses.Field, kind: type, value) -> str | None:
    """What is wrong with ``value`` for field ``f`` (of type ``kind``), or None."""
    choices = f.metadata.get("choices")
    if choices is not None:
        return None if value in choices else f"choose from {', '.join(choices)}"
    if kind is int:
        minimum = f.metadata.get("minimum")
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            return f"give {_requirement(f)}"
    elif kind is str and not isinstance(value, str):
        return "give a string"
    return None


def _kind(hint) -> type:
    """int for ``int | None``, the type itself otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _fields(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, _kind(hints[f.name])) for f in dataclasses.fields(cls)]


def _check(settings, label: str = "") -> None:
    """Raise ValueError naming the first field of ``settings`` that holds an invalid value."""
    for f, kind in _fields(type(settings)):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(kind) or (value is None and f.default is None):
            continue
        if _problem(f, kind, value) is None:
            continue
        what = f"{label} {f.name}".strip()
        if f.metadata.get("choices") is not None:
            raise ValueError(f"unknown {what} {value!r}: choose from {', '.join(f.metadata['choices'])}")
        raise ValueError(f"{what} must be {_requirement(f)}, got {value!r}")


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """How onnxruntime runs a served graph (one inter-op thread: the graph runs sequentially)."""

    threads: int = setting(
        0,
        option="--ort-threads",
        parameter="ort_intra_op_threads",
        minimum=0,
        help="cpu: onnxruntime intra-op threads per model (0: one per core).",
    )

    def __post_init__(self):
        _check(self, "onnxruntime")


@dataclass(frozen=True)
class OpenVINOSettings:
    """How OpenVINO's CPU plugin runs a served graph. Its precision hint is always f32: the served
    file's own types decide (mmtrt.runtimes.openvino)."""

    threads: int = setting(
        0,
        option="--ov-threads",
        parameter="ov_num_threads",
        minimum=0,
        help="OpenVINO threads per model (0: one per core).",
    )
    streams: int = setting(
        1, option="--ov-streams", parameter="ov_num_streams", minimum=1, help="OpenVINO streams per model."
    )
    cache_dir: str = setting(
        "",
        option="--ov-cache-dir",
        parameter="ov_cache_dir",
        path=True,
        help="OpenVINO compiled-blob cache folder (CACHE_DIR) the served models use [default: none].",
    )

    def __post_init__(self):
        _check(self, "OpenVINO")


@dataclass(frozen=True)
class ImageLimits:
    """What the cpu flavour's ``file_decoder`` accepts per file: its size, and the rules of the
    input gate (mmtrt/data/gate.py) it relaxes (``allow``: none by default). 64 MiB holds an uncompressed
    16-bit DICOM of 5600 x 5600; 36 million pixels (6000 x 6000) is twice the largest chest
    detector (43 x 43 cm at 0.1 mm: 4300 x 4300) and keeps one decode within about 1 GB (DICOM
    windowing runs in float64)."""

    max_bytes: int = setting(
        64 * 2**20,
        option="--max-image-bytes",
        parameter="max_image_bytes",
        minimum=1,
        help="cpu: the largest image file multimix_image decodes (its file_decoder's max_image_bytes).",
    )
    max_pixels: int = setting(
        36_000_000,
        option="--max-image-pixels",
        parameter="max_image_pixels",
        minimum=1,
        help="cpu: the most pixels (rows x columns) of an image multimix_image decodes; above: refused "
        "as a possible decompression bomb (max_image_pixels).",
    )

    allow: str = setting(
        "",
        option="--allow",
        parameter="gate_allow",
        help="cpu: the input gate's rules multimix_image relaxes, comma-separated (body-part, view, "
        "modality; see mmtrt.data.gate) [default: none, every rule applies]: a DICOM file whose "
        "header says it is no frontal chest radiograph is answered as refused (gate_allow).",
    )

    def __post_init__(self):
        _check(self, "image limit")


@dataclass(frozen=True)
class DecoderQueue:
    """How the cpu flavour's ``file_decoder`` shares its work between requests. Files decode one
    after another in an instance, so a slow (large, legal) file holds only the instance it runs
    on while the others go on; the queue in front of them is bounded in length (every queued
    request holds its files in memory) and in time (a request that has waited longer is answered
    UNAVAILABLE, for the client to retry: it is not at fault)."""

    instances: int = setting(
        2, option="--decoder-instances", minimum=1, help="cpu: file_decoder instances (decoding processes)."
    )
    max_queue_size: int = setting(
        16,
        option="--decoder-queue-size",
        minimum=1,
        help="cpu: the most requests that wait for file_decoder; more are refused at once (UNAVAILABLE).",
    )
    queue_timeout_s: int = setting(
        30,
        option="--decoder-queue-timeout-s",
        minimum=1,
        help="cpu: how long a request may wait for file_decoder before it is refused (UNAVAILABLE).",
    )

    def __post_init__(self):
        _check(self, "decoder queue")


@dataclass(frozen=True)
class AuditSettings:
    """Where the cpu flavour's graph models write their audit trail (mmtrt/serving/audit.py: one
    JSON line per image answered or refused, one rotated file per model instance)."""

    folder: str = setting(
        "",
        option="--audit-dir",
        parameter="audit_dir",
        path=True,
        help="cpu: folder of the served models' audit trail, one JSON line per image (request id, "
        "model and version, checkpoint sha256, SOP Instance UID or sha256, outcome, latency; no "
        "patient data) [default: none, no audit trail].",
    )
    max_mib: int = setting(
        64,
        option="--audit-max-mib",
        parameter="audit_max_mib",
        minimum=1,
        help="cpu: size at which an audit file is rotated.",
    )
    backups: int = setting(
        10,
        option="--audit-backups",
        parameter="audit_backups",
        minimum=1,
        help="cpu: rotated audit files kept per model instance.",
    )

    def __post_init__(self):
        _check(self, "audit")


@dataclass(frozen=True)
class GraphSettings:
    """What the cpu flavour's graph model (model_repository/cpu/model.py) runs, and how: the ONNX
    file of its version folder (the export's float32 graph, or its ``precision`` copy), the
    runtime, why that runtime (``runtime_choice``, for the reader), and each runtime's settings."""

    onnx_file: str = setting(parameter="onnx_file")
    runtime: str = setting("onnxruntime", parameter="runtime", choices=RUNTIMES)
    runtime_choice: str = setting("", parameter="runtime_choice")
    precision: str = setting("fp32", parameter="precision", choices=PRECISIONS)
    onnxruntime: OnnxRuntimeSettings = OnnxRuntimeSettings()
    openvino: OpenVINOSettings = OpenVINOSettings()
    audit: AuditSettings = AuditSettings()

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class RepositorySettings:
    """What `mmtrt repo` builds a repository with (``build_repository`` resolves it per model)."""

    flavour: str = setting(
        "cpu",
        option="--flavour",
        choices=FLAVOURS,
        help="cpu: python backend + onnxruntime or OpenVINO (runs anywhere, also on the bundled "
        "server); gpu: TensorRT engines + ensembles (NVIDIA's Triton container).",
    )
    #: the models to serve (None: the flavour's defaults); the models they are made of are added
    models: tuple[str, ...] | None = None
    max_batch: int | None = setting(
        None,
        option="--max-batch",
        minimum=1,
        help="max_batch_size of the models [default: the manifest's max_batch, i.e. the "
        "engines' profile maximum].",
    )
    max_queue_delay_us: int = setting(
        DEFAULT_MAX_QUEUE_DELAY_US,
        option="--max-queue-delay-us",
        minimum=0,
        help="How long the dynamic batcher waits to fill a batch.",
    )
    gpu_instances: int = setting(
        1, option="--gpu-instances", minimum=1, help="gpu: instances of each TensorRT engine model."
    )
    runtime: str = setting(
        "onnxruntime",
        option="--runtime",
        choices=RUNTIME_CHOICES,
        help="cpu: what the python backend runs the graphs with; auto: openvino for bf16 / fp16 "
        "(the runtime that runs them natively), onnxruntime for fp32.",
    )
    precision: str = setting(
        "fp32",
        option="--precision",
        choices=PRECISIONS,
        help="cpu: serve the export's mixed-precision copies (saliency forward float32; its backward "
        "half and the decoder reduced) with OpenVINO; needs an export of that precision, and runs "
        "float32 where this host has no such hardware.",
    )
    onnxruntime: OnnxRuntimeSettings = OnnxRuntimeSettings()
    openvino: OpenVINOSettings = OpenVINOSettings()
    image_limits: ImageLimits = ImageLimits()
    decoder_queue: DecoderQueue = DecoderQueue()
    audit: AuditSettings = AuditSettings()

    def __post_init__(self):
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
        _check(self)
        if self.flavour != "cpu" and self.runtime != "onnxruntime":
            raise ValueError(
                f"runtime {self.runtime!r} applies to the cpu flavour only (gpu runs TensorRT engines)"
            )
        if self.flavour != "cpu" and self.precision != "fp32":
            raise ValueError(
                "precision applies to the cpu flavour: a gpu repository serves the engines "
                "`mmtrt build-engines` built"
            )


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Option:
    """One command-line option of a settings class: ``--flag``, the ``name`` it is passed as."""

    flag: str
    name: str
    kind: type
    default: object
    help: str
    choices: tuple[str, ...] | None
    minimum: int | None
    path: bool


def options(cls) -> list[Option]:
    """The command-line options of ``cls``'s fields, nested settings included, in field order."""
    found = []
    for f, kind in _fields(cls):
        if dataclasses.is_dataclass(kind):
            found += options(kind)
        elif f.metadata.get("option"):
            flag = f.metadata["option"]
            meta = f.metadata
            found.append(
                Option(
                    flag,
                    _name(f),
                    kind,
                    f.default,
                    meta["help"],
                    meta["choices"],
                    meta["minimum"],
                    meta["path"],
                )
            )
    return found


def _name(f: dataclasses.Field) -> str:
    """The name a field is given by in :func:`from_options`: its option's, else its own."""
    option = f.metadata.get("option")
    return option[2:].replace("-", "_") if option else f.name


def from_options(cls, values: Mapping[str, object], base=None):
    """A ``cls`` from the values of its options by name (``{"ort_threads": 1}``: the names of
    :func:`options`); a nested settings object may be given whole by its field name
    (``{"openvino": OpenVINOSettings(threads=1)}``). What ``values`` does not name is ``base``'s
    (default: ``cls``'s defaults). ValueError for an invalid value, TypeError for an unknown name."""
    left = dict(values)
    built = _build(cls, left, base)
    if left:
        known = sorted(_names(cls))
        raise TypeError(f"unknown setting(s) {', '.join(sorted(left))}: choose from {', '.join(known)}")
    return built


def _build(cls, values: dict, base):
    kwargs = {}
    for f, kind in _fields(cls):
        if dataclasses.is_dataclass(kind):
            nested = getattr(base, f.name) if base is not None else None
            kwargs[f.name] = values.pop(f.name) if f.name in values else _build(kind, values, nested)
        elif _name(f) in values:
            kwargs[f.name] = values.pop(_name(f))
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def _names(cls) -> set[str]:
    names = set()
    for f, kind in _fields(cls):
        names |= {f.name, *_names(kind)} if dataclasses.is_dataclass(kind) else {_name(f)}
    return names


# --------------------------------------------------------------------------- parameters


def to_parameters(settings) -> dict[str, str]:
    """The config.pbtxt parameters of a settings object (nested ones flattened), as strings."""
    params = {}
    for f, kind in _fields(type(settings)):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(kind):
            params.update(to_parameters(value))
        elif f.metadata.get("parameter"):
            params[f.metadata["parameter"]] = str(value)
    return params


def from_parameters(cls, params: Mapping[str, str]):
    """A ``cls`` from config.pbtxt parameters (name -> string value), each checked: ValueError
    naming the parameter that is missing or invalid. Every parameter must be there: ``mmtrt
    repo`` writes them all, with the copy of this module that reads them."""
    kwargs = {}
    for f, kind in _fields(cls):
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = from_parameters(kind, params)
            continue
        key = f.metadata.get("parameter")
        if not key:
            continue
        if key not in params:
            raise ValueError(
                f"config.pbtxt sets no '{key}' parameter (rebuild the repository with `mmtrt repo`)"
            )
        text = params[key]
        try:
            value = kind(text)
        except ValueError:
            value = text
        problem = _problem(f, kind, value)
        if problem:
            raise ValueError(f"config.pbtxt parameter {key} is {text!r}: {problem}")
        kwargs[f.name] = value
    return cls(**kwargs)
