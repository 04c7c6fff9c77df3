"""TensorRT engines from an export folder's ONNX graphs, for TensorRT 10 and 11.

TensorRT cannot be installed on the machines this project is developed on: `tensorrt` is imported
only here (and in tensorrt10.py), inside the functions that build or run engines, so tests can put
a stand-in in its place. The calls are type-checked against the real API of each version
(`python scripts/tensorrt_api.py check`, stubs made from TensorRT's own bindings; README.md).

Per graph, one engine `<graph>.<precision>.sm<XY>.plan` (plans are tied to the GPU's compute
capability and the TensorRT version), with one optimization profile on the batch axis:
min 1, opt = max = the export's max_batch (Triton's batcher here prefers full batches).

Precision:
* fp32: the float32 graph; TF32 is switched off (it rounds convolution inputs to 10 bits, far
  outside the float32 tolerances).
* TensorRT 10, fp16/bf16: the float32 graph, the builder flag FP16/BF16, and per-layer
  constraints that keep every layer in float32 except the convolutions the precision policy lets
  go (mmtrt.export.precision); tensorrt10.py, the one part written for TensorRT 10 only.
* TensorRT 11 removed those flags and constraints: networks are strongly typed and the precision
  comes from the graph, so the engine is built from the mixed-precision copy
  `<graph>.<precision>.onnx` (graphs without one, the saliency graph, run in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from mmtrt.graphs import JOINT_OUTPUTS, PIPELINES, run_pipeline


class TensorRTUnavailable(RuntimeError):
    """TensorRT engines cannot be built here; the message names what is missing."""


class EngineBuildError(RuntimeError):
    pass


def require_tensorrt() -> ModuleType:
    """The tensorrt module, or TensorRTUnavailable naming what is missing (module or GPU)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"the tensorrt Python module is not installed ({exc}); install TensorRT 10 or 11 for this "
            "host's CUDA version (NVIDIA's wheels, or use the TensorRT / Triton container)"
        ) from None
    if not hasattr(trt, "Builder"):  # e.g. tensorrt-cu12-bindings without its libraries
        raise TensorRTUnavailable(
            "the tensorrt module has no Builder: the TensorRT libraries are missing "
            f"(found {getattr(trt, '__file__', 'a stub')})"
        )
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "no CUDA GPU is visible (torch.cuda.is_available() is False; "
            "engines are run on the GPU through PyTorch's CUDA tensors)"
        )
    return trt


def major_version(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class EngineSpec:
    graph: str
    onnx: str  # the ONNX file (in the export folder) the engine is built from
    precision: str  # fp32 / fp16 / bf16: the export's precision
    strongly_typed: bool  # TensorRT 11 (or a graph built from a typed mixed-precision copy)
    builder_flag: str | None  # TensorRT 10 reduced precision: "FP16" / "BF16"
    plan: str  # file name of the engine


def engine_specs(manifest: dict, trt_major: int, capability: tuple[int, int]) -> list[EngineSpec]:
    """What to build for every graph of the export described by `manifest`."""
    precision = manifest["precision"]
    specs = []
    for graph, info in manifest["graphs"].items():
        reduced_file = info.get("reduced_precision_file")
        strongly_typed = trt_major >= 11
        flag = None
        if precision == "fp32" or not reduced_file:
            onnx = info["file"]  # float32 (the saliency graph keeps float32 at every precision)
        elif strongly_typed:
            onnx = reduced_file
        else:
            onnx, flag = info["file"], precision.upper()
        specs.append(
            EngineSpec(
                graph,
                onnx,
                precision,
                strongly_typed,
                flag,
                f"{graph}.{precision}.sm{capability[0]}{capability[1]}.plan",
            )
        )
    return specs


def build_engine(
    spec: EngineSpec,
    onnx_path: Path,
    *,
    max_batch: int,
    timing_cache: Path,
    reduced_layers: frozenset[str] = frozenset(),
) -> bytes:
    """Build one serialized engine; the timing cache file is read first and written back after."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # No creation flags: TensorRT 11's networks are always strongly typed (its STRONGLY_TYPED flag
    # is deprecated and ignored); TensorRT 10's are weakly typed, as its precision flags need.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    if spec.builder_flag:  # TensorRT 10 weak typing: allow the type, then pin everything else
        from mmtrt.export.tensorrt10 import allow_reduced_precision

        free = allow_reduced_precision(config, network, spec.builder_flag, reduced_layers)
        if reduced_layers and not free:  # an fp32 engine that would call itself fp16
            raise EngineBuildError(
                f"none of the {len(reduced_layers)} convolutions chosen for reduced precision "
                "matched a TensorRT layer name; refusing to build a float32 engine under a "
                "reduced-precision name"
            )

    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]  # batch is the only dynamic axis
        profile.set_shape(tensor.name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start a fresh one rather than fail.
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine from {onnx_path.name} (see its log above)"
        )
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class EngineRunner:
    """Runs a serialized engine on the GPU. `run_device` takes and returns CUDA tensors with no host
    copy (what `mmtrt bench` times); calling the runner with numpy arrays returns float32 numpy
    arrays (what the engine check against onnxruntime compares)."""

    def __init__(self, plan: bytes):
        import tensorrt as trt
        import torch

        self.torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError(
                "TensorRT could not load the engine (a plan runs only with the TensorRT "
                "version and on the GPU model that built it)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {
            n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in names
        }
        # TensorRT synchronises more than it needs to on the default stream: the engine gets its own.
        self.stream = torch.cuda.Stream()
        self.buffers: dict[tuple, dict] = {}  # input shapes -> the output tensors for them

    def run_device(self, tensors: dict) -> dict:
        """Enqueue the engine on `tensors` (name -> tensor on the GPU), after the work already queued
        on the caller's current stream and before any it queues next. The outputs are buffers kept
        per input shape, allocated on the first call: the next call with the same shapes overwrites them."""
        torch = self.torch
        inputs = {name: tensors[name].to(self.dtypes[name]).contiguous() for name in self.inputs}
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineBuildError(
                    f"input {name} of shape {tuple(tensor.shape)} is outside the engine's "
                    "optimization profile (export with a larger --max-batch)"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        shapes = tuple(tuple(t.shape) for t in inputs.values())
        if shapes not in self.buffers:
            device = next(iter(inputs.values())).device
            self.buffers[shapes] = {
                name: torch.empty(
                    tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=device
                )
                for name in self.outputs
            }
        outputs = self.buffers[shapes]
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        caller = torch.cuda.current_stream()
        self.stream.wait_stream(caller)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT failed to run the engine")
        caller.wait_stream(self.stream)
        return outputs

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {
            name: self.torch.from_numpy(np.ascontiguousarray(array)).to("cuda")
            for name, array in inputs.items()
        }
        # (the copy to the host runs on the caller's stream, which waits for the engine)
        return {name: t.float().cpu().numpy() for name, t in self.run_device(tensors).items()}


def engine_pipeline(folder: Path):
    """The joint pipeline (images -> probs, mask, saliency, all on the GPU) over the engines that
    `mmtrt build-engines` recorded in the manifest of the export `folder`: the fused multimix
    engine when there is one, else the saliency engine then the decoder engine (as the split ONNX
    graphs run). Returns it and the largest batch the engines take."""
    from mmtrt.export.manifest import read_manifest

    folder = Path(folder)
    engines = read_manifest(folder).get("engines", {})
    build = f"build them on this host with: mmtrt build-engines {folder}"
    if engines.get("state") != "built":
        reason = f" ({engines['reason']})" if engines.get("reason") else ""
        raise TensorRTUnavailable(
            f"{folder} has no TensorRT engines (state: {engines.get('state', 'none')}{reason}); {build}"
        )

    def load(graph: str) -> EngineRunner:
        if graph not in engines["plans"]:
            raise TensorRTUnavailable(f"{folder} has no {graph} engine; {build}")
        path = folder / engines["plans"][graph]["file"]
        try:
            return EngineRunner(path.read_bytes())
        except EngineBuildError as exc:
            raise EngineBuildError(
                f"{path.name}: {exc}; rebuild the engines with: mmtrt build-engines {folder}"
            ) from None

    pipeline = "fused" if "multimix" in engines["plans"] else "joint"
    runners = {graph: load(graph).run_device for graph in PIPELINES[pipeline]}

    def run(images):
        tensors = run_pipeline(runners, images, pipeline)
        return tuple(tensors[name] for name in JOINT_OUTPUTS)

    return run, engines["profile"]["max"]
