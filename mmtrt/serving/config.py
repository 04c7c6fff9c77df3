"""Triton ``config.pbtxt`` files: render one from a :class:`ServedModel`, parse, check offline.

Parsing uses the protobuf ``ModelConfig`` message of tritonclient, so syntax errors, unknown
fields and bad enum values are caught before tritonserver ever sees the file.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from .errors import ServingError
from .settings import DEFAULT_MAX_QUEUE_DELAY_US, GraphSettings, ImageLimits, to_parameters

#: what serves a model: the python backend, a TensorRT engine, or an ensemble of other models
PYTHON, TENSORRT_PLAN, ENSEMBLE = "python", "tensorrt_plan", "ensemble"
PLATFORMS = (PYTHON, TENSORRT_PLAN, ENSEMBLE)
PLAN_FILE = "model.plan"  # an engine model's default_model_filename


#: numpy dtype names (as the export manifest records them) -> Triton data types
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
}


@dataclass(frozen=True)
class Tensor:
    """One tensor of a model config: Triton data type and dims after the batch axis; an
    ``optional`` input may be left out of a request."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False

    @classmethod
    def from_record(cls, name: str, record: dict) -> Tensor:
        """From the export manifest's ``{"shape": ["batch", ...], "dtype": "float32"}``."""
        dtype = record["dtype"]
        if dtype not in TRITON_TYPES:
            raise ServingError(f"tensor {name!r} has dtype {dtype}, which no Triton data type maps")
        return cls(name, TRITON_TYPES[dtype], tuple(int(d) for d in record["shape"][1:]))

    def block(self) -> str:
        dims = ", ".join(map(str, self.dims))
        optional = "\n    optional: true" if self.optional else ""
        return f'  {{\n    name: "{self.name}"\n    data_type: {self.data_type}\n    dims: [ {dims} ]{optional}\n  }}'


@dataclass(frozen=True)
class ModelTensors:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def blocks(self) -> str:
        return "\n\n".join(
            f"{kind} [\n" + ",\n".join(t.block() for t in tensors) + "\n]"
            for kind, tensors in (("input", self.inputs), ("output", self.outputs))
        )

    def warmup(self) -> str:
        """A warm-up request of zeros, batch 1: the first real request then pays no set-up
        (without the optional inputs)."""
        inputs = "".join(
            f'    inputs {{\n      key: "{t.name}"\n      value: {{\n        data_type: {t.data_type}\n'
            f"        dims: [ {', '.join(map(str, t.dims))} ]\n        zero_data: true\n      }}\n    }}\n"
            for t in self.inputs
            if not t.optional
        )
        return f'model_warmup [\n  {{\n    name: "zero_batch1"\n    batch_size: 1\n{inputs}  }}\n]'


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: a model and the ensemble tensors it reads and writes (each
    model tensor maps to the ensemble tensor of the same name)."""

    model: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def parse_config(text: str, *, source: str = "<config>"):
    """Parse config.pbtxt text into a ``ModelConfig`` message; ServingError when invalid."""
    from google.protobuf import text_format

    from .client import model_config_pb2

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


@dataclass(frozen=True)
class ServedModel:
    """One model of a repository: everything its config.pbtxt says (:func:`render_config`).

    ``platform``: :data:`PYTHON` (a python-backend model: ``parameters`` is what its model.py
    reads), :data:`TENSORRT_PLAN` (an engine; ``cc_model_filenames``: compute capability ->
    its engine file) or :data:`ENSEMBLE` (``steps``; its steps batch, so it has no batcher or
    instances of its own). Only the full batch is preferred by the dynamic batcher: with smaller
    preferred sizes it dispatches as soon as one of them forms (e.g. 2 of 8 concurrent
    requests); waiting up to ``max_queue_delay_us`` for a full batch is what pays on CPU and with
    a TensorRT profile alike. ``warmup``: a request of zeros at load (batch 1), so that the first
    real request pays no set-up (not for a model to which zeros are no valid input)."""

    name: str
    platform: str
    tensors: ModelTensors
    max_batch: int
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    instances: int = 1
    parameters: GraphSettings | ImageLimits | None = None
    steps: tuple[EnsembleStep, ...] = ()
    cc_model_filenames: tuple[tuple[str, str], ...] = ()
    warmup: bool = False
    description: str = ""
    #: the dynamic batcher's queue policy: the most requests waiting, and how long one may wait
    #: before it is refused (0: Triton's default, unbounded)
    max_queue_size: int = 0
    queue_timeout_us: int = 0

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise ValueError(f"unknown platform {self.platform!r}: choose from {', '.join(PLATFORMS)}")
        for name in ("max_batch", "instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {name} must be a positive integer, got {value!r}")
        for name in ("max_queue_delay_us", "max_queue_size", "queue_timeout_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.name}: {name} must be an integer >= 0, got {value!r}")


def _quoted(text: str) -> str:
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _ensemble_scheduling(steps: tuple[EnsembleStep, ...]) -> str:
    rendered = []
    for step in steps:
        maps = [f'      input_map {{ key: "{t}" value: "{t}" }}' for t in step.inputs]
        maps += [f'      output_map {{ key: "{t}" value: "{t}" }}' for t in step.outputs]
        rendered.append(
            f'    {{\n      model_name: "{step.model}"\n      model_version: -1\n'
            + "\n".join(maps)
            + "\n    }"
        )
    return "ensemble_scheduling {\n  step [\n" + ",\n".join(rendered) + "\n  ]\n}"


def render_config(model: ServedModel) -> str:
    """The config.pbtxt of ``model``, in the layout of Triton's documentation."""
    about = f"{model.name}: {model.description} " if model.description else ""
    about += "Written by `mmtrt repo` from the model's settings (mmtrt/serving/settings.py)."
    head = [f"# {line}" for line in textwrap.wrap(about, 96)]
    head.append(f'name: "{model.name}"')
    head.append('backend: "python"' if model.platform == PYTHON else f'platform: "{model.platform}"')
    head.append(f"max_batch_size: {model.max_batch}")
    if model.platform == TENSORRT_PLAN:
        head.append(f'default_model_filename: "{PLAN_FILE}"')
        head += [f'cc_model_filenames {{ key: "{cc}" value: "{f}" }}' for cc, f in model.cc_model_filenames]
    blocks = ["\n".join(head), model.tensors.blocks()]
    if model.platform != ENSEMBLE:
        kind = "KIND_CPU" if model.platform == PYTHON else "KIND_GPU"
        policy = ""
        if model.max_queue_size or model.queue_timeout_us:
            policy = (
                "  default_queue_policy {\n    timeout_action: REJECT\n"
                f"    default_timeout_microseconds: {model.queue_timeout_us}\n"
                f"    max_queue_size: {model.max_queue_size}\n  }}\n"
            )
        blocks.append(
            f"dynamic_batching {{\n  preferred_batch_size: [ {model.max_batch} ]\n"
            f"  max_queue_delay_microseconds: {model.max_queue_delay_us}\n{policy}}}"
        )
        blocks.append(f"instance_group [\n  {{\n    kind: {kind}\n    count: {model.instances}\n  }}\n]")
    if model.parameters is not None:
        blocks.append(
            "\n".join(
                f"parameters {{\n  key: {_quoted(key)}\n  value: {{ string_value: {_quoted(value)} }}\n}}"
                for key, value in to_parameters(model.parameters).items()
            )
        )
    if model.warmup:
        blocks.append(model.tensors.warmup())
    if model.steps:
        blocks.append(_ensemble_scheduling(model.steps))
    return "\n\n".join(blocks) + "\n"


def tensors_of(tensors) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in tensors}


def dtype_name(data_type: int) -> str:
    from .client import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


def tensor_spec(data_type: int, dims) -> str:
    """A tensor's type and shape as an error message names them: `TYPE_FP32 [-1, 1, 256, 256]`."""
    return f"{dtype_name(data_type)} {list(dims)}"
