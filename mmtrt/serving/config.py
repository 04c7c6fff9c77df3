"""Triton ``config.pbtxt`` files: parse, check offline, render from a template.

Parsing uses the protobuf ``ModelConfig`` message of tritonclient, so syntax errors, unknown
fields and bad enum values are caught before tritonserver ever sees the file.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ServingError

DEFAULT_ORT_THREADS = 0  # onnxruntime's default (one thread per core)
DEFAULT_GPU_INSTANCES = 1
#: the runtimes the cpu flavour's python model runs a graph with (its `runtime` parameter)
CPU_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class OpenVINOSettings:
    """The cpu flavour's OpenVINO parameters (`ov_*` in config.pbtxt): threads 0 is OpenVINO's
    default, cache_dir "" none. (Its precision hint is always f32: the served file's own types
    decide, see mmtrt.runtimes.openvino.)"""

    threads: int = 0
    streams: int = 1
    cache_dir: str = ""


DEFAULT_OPENVINO = OpenVINOSettings()


@dataclass(frozen=True)
class ImageLimits:
    """What the cpu flavour's ``file_decoder`` accepts per file (parameters ``max_image_bytes``,
    ``max_image_pixels``). 64 MiB holds an uncompressed 16-bit DICOM of 5600 x 5600; 36 million
    pixels (6000 x 6000) is twice the largest chest detector (43 x 43 cm at 0.1 mm: 4300 x 4300)
    and keeps one decode within about 1 GB (DICOM windowing runs in float64)."""

    max_bytes: int = 64 * 2**20
    max_pixels: int = 36_000_000

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"image limit {name} must be a positive integer, got {value!r}")


DEFAULT_IMAGE_LIMITS = ImageLimits()


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
    """One tensor of a model config: Triton data type and dims after the batch axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]

    @classmethod
    def from_record(cls, name: str, record: dict) -> Tensor:
        """From the export manifest's ``{"shape": ["batch", ...], "dtype": "float32"}``."""
        dtype = record["dtype"]
        if dtype not in TRITON_TYPES:
            raise ServingError(f"tensor {name!r} has dtype {dtype}, which no Triton data type maps")
        return cls(name, TRITON_TYPES[dtype], tuple(int(d) for d in record["shape"][1:]))

    def block(self) -> str:
        dims = ", ".join(map(str, self.dims))
        return f'  {{\n    name: "{self.name}"\n    data_type: {self.data_type}\n    dims: [ {dims} ]\n  }}'


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
        """A warm-up request of zeros, batch 1: the first real request then pays no set-up."""
        inputs = "".join(
            f'    inputs {{\n      key: "{t.name}"\n      value: {{\n        data_type: {t.data_type}\n'
            f"        dims: [ {', '.join(map(str, t.dims))} ]\n        zero_data: true\n      }}\n    }}\n"
            for t in self.inputs
        )
        return f'model_warmup [\n  {{\n    name: "zero_batch1"\n    batch_size: 1\n{inputs}  }}\n]'


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble: a model and the ensemble tensors it reads and writes (each
    model tensor maps to the ensemble tensor of the same name)."""

    model: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _ensemble_scheduling(steps: Sequence[EnsembleStep]) -> str:
    if not steps:
        return ""
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


def render_config(
    template: str,
    *,
    max_batch: int,
    max_queue_delay_us: int,
    ort_threads: int = DEFAULT_ORT_THREADS,
    cc_model_filenames: dict[str, str] | None = None,
    gpu_instances: int = DEFAULT_GPU_INSTANCES,
    tensors: ModelTensors | None = None,
    steps: Sequence[EnsembleStep] = (),
    runtime: str = "onnxruntime",
    runtime_choice: str = "",
    openvino: OpenVINOSettings = DEFAULT_OPENVINO,
    image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    decoder_package: str = "",
    onnx_file: str = "",
    precision: str = "fp32",
) -> str:
    """Fill the ``${...}`` fields of a config.pbtxt template (fields a template does not use are
    ignored; an unknown field in the template is an error). ``tensors`` fills ``${tensors}``
    (the input and output blocks) and ``${model_warmup}`` (a zero batch of 1); ``steps`` fills
    ``${ensemble_scheduling}``; ``runtime``, ``runtime_choice`` (why that runtime, for the
    reader), ``openvino``, ``onnx_file`` (the served graph file) and ``precision`` (fp32, or
    that of the export's mixed-precision copy it is) the cpu flavour's parameters;
    ``image_limits`` and ``decoder_package`` (the folder of ``1/`` holding the copied image
    decoder) those of its ``file_decoder``."""
    if runtime not in CPU_RUNTIMES:
        raise ServingError(f"unknown runtime {runtime!r}: choose from {', '.join(CPU_RUNTIMES)}")
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
        "tensors": tensors.blocks() if tensors else "",
        "model_warmup": tensors.warmup() if tensors else "",
        "ensemble_scheduling": _ensemble_scheduling(steps),
        "runtime": runtime,
        "runtime_choice": runtime_choice.replace("\\", "/").replace('"', "'"),
        "onnx_file": onnx_file,
        "precision": precision,
        "ov_num_threads": str(openvino.threads),
        "ov_num_streams": str(openvino.streams),
        "ov_cache_dir": openvino.cache_dir,
        "max_image_bytes": str(image_limits.max_bytes),
        "max_image_pixels": str(image_limits.max_pixels),
        "decoder_package": decoder_package,
    }
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as e:
        raise ServingError(f"config template has an unknown or malformed field: {e}") from None


def tensors_of(tensors) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in tensors}


def dtype_name(data_type: int) -> str:
    from .client import model_config_pb2

    return model_config_pb2.DataType.Name(data_type)


def tensor_spec(data_type: int, dims) -> str:
    """A tensor's type and shape as an error message names them: `TYPE_FP32 [-1, 1, 256, 256]`."""
    return f"{dtype_name(data_type)} {list(dims)}"
