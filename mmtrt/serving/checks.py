"""Offline checks of a Triton model repository: every config valid, every ensemble wired,
every model's tensors equal to the ONNX graph it serves, the copy of mmtrt beside every python
model complete (and the image decoder's libraries importable), every TensorRT engine file
present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .config import PLAN_FILE, dtype_name, parse_config, tensor_spec, tensors_of, validate_config
from .errors import ServingError
from .settings import ImageLimits, to_parameters

VERSION = "1"  # the one version folder of every model
# What every python model of a repository imports of mmtrt: these modules (under mmtrt/), copied
# unchanged by `mmtrt repo` into 1/<BACKEND_PACKAGE>/ beside its model.py, so that the server runs
# the code of the mmtrt that built the repository without the rest of mmtrt (and its torch). The
# modules that import each other are siblings in mmtrt too, so their relative imports hold.
BACKEND_PACKAGE = "mmtrt_backend"
BACKEND_MODULES = (
    "serving/settings.py",
    "serving/python_backend.py",
    "serving/model_metrics.py",
    "serving/audit.py",
    "files.py",
    "calibration.py",
    "runtimes/ort.py",
    "runtimes/openvino.py",
    "data/decoded.py",
    "data/dicom.py",
    "data/images.py",
    "data/gate.py",
)
# The libraries the image decoder (images, dicom, decoded, gate) imports, as (module, pip name): needed
# by a model that decodes files, one whose parameters are image limits (cpu: file_decoder).
DECODER_REQUIREMENTS = (("numpy", "numpy"), ("PIL", "Pillow"), ("pydicom", "pydicom"))
BUILD_ENGINES_HINT = (
    "build them on the serving GPU with `mmtrt build-engines {export}` and run "
    "`mmtrt repo {export} OUT --flavour gpu` again (or copy each engine to the "
    "model's 1/model.plan)"
)


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
        # an optional input is the python model's own (e.g. multimix's accepted), not the graph's
        have = tensors_of(t for t in tensors if not (kind == "input" and t.optional))
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
            if dtype_name(dtype) != onnx_dtype:
                problems.append(
                    f"{name}: {kind} {tensor!r} is {dtype_name(dtype)} in the "
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
        t: (dt, dims, "the ensemble input") for t, (dt, dims) in tensors_of(config.input).items()
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
        sub_in, sub_out = tensors_of(sub.input), tensors_of(sub.output)
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
    for tensor, (dtype, dims) in tensors_of(config.output).items():
        if tensor not in produced:
            problems.append(f"{name}: output {tensor!r} is produced by no step")
        else:  # the ensemble's output reads what a step wrote, like a step's input
            consumers.append((tensor, name, dtype, dims, f"the ensemble's output {tensor!r}"))
    for value, where, dtype, dims, who in consumers:
        if value not in known:
            problems.append(f"{where}: reads ensemble tensor {value!r} that nothing produces")
        elif known[value][:2] != (dtype, dims):
            problems.append(
                f"{where}: ensemble tensor {value!r} is {tensor_spec(*known[value][:2])} "
                f"({known[value][2]}) but {who} is {tensor_spec(dtype, dims)}"
            )
    return problems


def _backend_problems(name: str, config, repository: Path) -> list[str]:
    """A python model: the copied mmtrt modules are in its version folder; one that decodes image
    files (its parameters are image limits): the libraries the decoder imports are importable by
    this Python, the one `mmtrt serve` runs the python backend with."""
    if config.backend != "python":
        return []
    folder = repository / name / VERSION / BACKEND_PACKAGE
    problems = []
    files = ["__init__.py", *(Path(m).name for m in BACKEND_MODULES)]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        problems.append(
            f"{name}: its copy of mmtrt is incomplete: {folder} lacks {', '.join(missing)} (`mmtrt repo` "
            "copies the mmtrt modules the served models run into their version folders)"
        )
    if not set(to_parameters(ImageLimits())) <= set(config.parameters):
        return problems
    absent = [pip for module, pip in DECODER_REQUIREMENTS if importlib.util.find_spec(module) is None]
    if absent:
        problems.append(
            f"{name}: its image decoder imports {', '.join(absent)}, which this Python "
            f"({sys.executable}, the one `mmtrt serve` starts the python backend with) cannot "
            f"import: pip install {' '.join(absent)}"
        )
    return problems


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
    ensemble's tensors agree in data type and dims with the models that produce and read them;
    every python model has the copied mmtrt modules in its version folder, and for a model that
    decodes image files this Python can import the libraries they need (numpy, Pillow, pydicom).
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
        problems += _backend_problems(name, config, repository)
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


def offline_config_problems(repository: Path) -> list[str]:
    """What :func:`validate_config` finds wrong in the configs of ``repository``, one line each."""
    problems = []
    try:
        configs = sorted(Path(repository).glob("*/config.pbtxt"))
    except OSError:
        return problems
    for config in configs:
        try:
            validate_config(config)
        except ServingError as e:
            problems.append(str(e))
    return problems
