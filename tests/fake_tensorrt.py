"""The named stand-in for TensorRT, which cannot exist on the machines that run this suite: the
engine code (mmtrt/export/tensorrt.py) is tested against it, and against real TensorRT only
where a GPU with TensorRT is present (those tests skip elsewhere, with the reason).

Its names and enum values are TensorRT's own: the API surface of each version is read from
tests/export/tensorrt_api_<major>.json, written by scripts/tensorrt_api.py from the real bindings.
A name the emulated version lacks raises AttributeError, as in TensorRT."""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx

from mmtrt.export import tensorrt as trt_code
from mmtrt.graphs import GRAPHS

SURFACES = {
    major: json.loads((Path(__file__).parent / "export" / f"tensorrt_api_{major}.json").read_text())
    for major in (10, 11)
}


def _tensorrt_and_gpu() -> str | None:
    try:
        trt_code.require_tensorrt()
    except trt_code.TensorRTUnavailable as exc:
        return str(exc)
    return None


NO_TENSORRT = _tensorrt_and_gpu()


class TensorRTEnum(enum.Enum):
    """Like a pybind11 enum of the bindings: int() gives the value, no arithmetic."""

    def __int__(self):
        return self.value

    __index__ = __int__


class Emulated:
    """A fake of one TensorRT class (`real`): reading or setting a public name that the emulated
    version's class lacks raises AttributeError, as TensorRT would."""

    real: str
    surface: dict

    def _check(self, name: str) -> None:
        cls = type(self)
        if not name.startswith("_") and name not in cls.surface["classes"][cls.real]:
            raise AttributeError(f"TensorRT {cls.surface['tensorrt']} has no {cls.real}.{name}")

    def __getattribute__(self, name):
        object.__getattribute__(self, "_check")(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        self._check(name)
        object.__setattr__(self, name, value)


# ONNX ops of the test graphs -> the layer TensorRT's parser makes of them
LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "ReduceMean": "REDUCE",
    "Sigmoid": "ACTIVATION",
    "Greater": "ELEMENTWISE",
    "Mul": "ELEMENTWISE",
    "Sub": "ELEMENTWISE",
    "Cast": "CAST",
    "Abs": "UNARY",
}


class FakeTensorRT(types.ModuleType):
    """A stand-in for the `tensorrt` module of TensorRT `major` (10 or 11), recording what the engine
    code asks of it; put it in sys.modules with `use_fake_tensorrt`. Its ONNX 'parser' makes one
    layer per ONNX node, named after the node (as TensorRT's parser names layers). Its runtime
    loads `fake_plan`s and runs them on CPU memory through the addresses it is given: every output
    is the sum of the inputs plus the output's position (1, 2, ...), so a test can tell which tensor
    went where."""

    def __init__(self, major: int):
        super().__init__("tensorrt")
        surface = SURFACES[major]
        self.__version__ = surface["tensorrt"]
        self.record = record = {
            "flags": set(),
            "cleared": set(),
            "profiles": [],
            "network_flags": None,
            "cache_in": None,
            "constrained": {},
            "loaded": [],
            "executed_on": [],
        }
        enums = {
            name: TensorRTEnum(name, members) for name, members in surface["enums"].items() if "." not in name
        }
        for name, value in surface["constants"].items():  # float32 = DataType.FLOAT, ...
            owner, member = value.split(".")
            if owner in enums:
                setattr(self, name, enums[owner][member])
        for name, members in enums.items():
            setattr(self, name, members)
        trt = self

        class Fake(Emulated):
            pass

        Fake.surface = surface

        class Tensor(Fake):
            real = "ITensor"

            def __init__(self, name, shape):
                self.name, self.shape, self.dtype = name, shape, trt.float32

        class Layer(Fake):
            real = "ILayer"

            def __init__(self, node):
                self.name, self.num_outputs = node.name, len(node.output)
                self.type = trt.LayerType[LAYER_TYPES[node.op_type]]

            def get_output(self, i):
                return Tensor(f"{self.name}:{i}", None)

            def __setattr__(self, key, value):
                super().__setattr__(key, value)
                if key == "precision":
                    record["constrained"][self.name] = value

            def set_output_type(self, i, dtype):
                assert dtype == trt.float32

        class Network(Fake):
            real = "INetworkDefinition"

            def __init__(self):
                self._layers, self._inputs = [], []

            num_layers = property(lambda s: len(s._layers))
            num_inputs = property(lambda s: len(s._inputs))

            def get_layer(self, i):
                return self._layers[i]

            def get_input(self, i):
                return self._inputs[i]

        class OnnxParser(Fake):
            real = "OnnxParser"

            def __init__(self, network, logger):
                self._network, self.num_errors = network, 0

            def parse_from_file(self, path):
                graph = onnx.load(path).graph
                self._network._layers = [Layer(n) for n in graph.node]
                self._network._inputs = [
                    Tensor(i.name, (-1, *[d.dim_value for d in i.type.tensor_type.shape.dim[1:]]))
                    for i in graph.input
                ]
                return True

        class Profile(Fake):
            real = "IOptimizationProfile"

            def __init__(self):
                self._shapes = {}

            def set_shape(self, name, low, opt, high):
                self._shapes[name] = (low, opt, high)

        class TimingCache(Fake):
            real = "ITimingCache"

            def __init__(self, data):
                self._data = bytes(data)

            def serialize(self):
                return b"timings:" + self._data

        class Config(Fake):
            real = "IBuilderConfig"

            def set_flag(self, flag):
                record["flags"].add(flag)

            def clear_flag(self, flag):
                record["cleared"].add(flag)

            def add_optimization_profile(self, profile):
                record["profiles"].append(profile._shapes)

            def create_timing_cache(self, data):
                record["cache_in"] = data
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self._cache = cache
                return True

            def get_timing_cache(self):
                return self._cache

        class Builder(Fake):
            real = "Builder"

            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                record["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class Logger(Fake):
            real = "Logger"

            def __init__(self, min_severity):
                self.min_severity = min_severity

        Logger.Severity = TensorRTEnum("Severity", surface["enums"]["ILogger.Severity"])
        for severity in Logger.Severity:  # Logger.WARNING is Logger.Severity.WARNING
            setattr(Logger, severity.name, severity)

        class Engine(Fake):
            real = "ICudaEngine"

            def __init__(self, plan):
                spec = json.loads(plan)
                self._max_batch, self._inputs, self._outputs = (
                    spec["max_batch"],
                    spec["inputs"],
                    spec["outputs"],
                )
                self.num_io_tensors = len(self._inputs) + len(self._outputs)
                record["loaded"].append(spec["graph"])

            def get_tensor_name(self, i):
                return [*self._inputs, *self._outputs][i]

            def get_tensor_mode(self, name):
                return trt.TensorIOMode.INPUT if name in self._inputs else trt.TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return trt.float32

            def create_execution_context(self):
                return Context(self)

        class Context(Fake):
            real = "IExecutionContext"

            def __init__(self, engine):
                self._engine, self._shapes, self._addresses = engine, {}, {}

            def set_input_shape(self, name, shape):
                self._shapes[name] = tuple(shape)
                return 1 <= shape[0] <= self._engine._max_batch  # the optimization profile

            def get_tensor_shape(self, name):  # outputs have the shape of the first input
                return self._shapes[self._engine._inputs[0]]

            def set_tensor_address(self, name, address):
                self._addresses[name] = address
                return True

            def execute_async_v3(self, stream_handle):
                shape = self._shapes[self._engine._inputs[0]]
                memory = lambda name: np.ctypeslib.as_array(
                    (ctypes.c_float * int(np.prod(shape))).from_address(self._addresses[name])
                ).reshape(shape)
                total = sum(memory(name) for name in self._engine._inputs)
                for position, name in enumerate(self._engine._outputs, 1):
                    memory(name)[...] = total + position
                record["executed_on"].append(stream_handle)
                return True

        class Runtime(Fake):
            real = "Runtime"

            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return Engine(plan)

        numpy_types = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}
        classes = [Builder, OnnxParser, Logger, Runtime]
        for cls in classes:
            setattr(self, cls.real, cls)
        self.nptype = lambda dtype: numpy_types[dtype.name]
        for cls in [*classes, Tensor, Layer, Network, Profile, TimingCache, Config, Engine, Context]:
            _check_names(cls, surface)
        missing = {n for n in vars(self) if not n.startswith("_") and n != "record"} - set(surface["module"])
        assert not missing, f"the fake defines names TensorRT {self.__version__} has not: {sorted(missing)}"

    def __getattr__(self, name):  # only for names not set above
        raise AttributeError(f"TensorRT {self.__version__} has no tensorrt.{name}")

    @staticmethod
    def fake_plan(graph: str, max_batch: int = 8) -> bytes:
        """What FakeTensorRT's runtime loads: the graph's tensor names (mmtrt.graphs) and its batch limit."""
        spec = GRAPHS[graph]
        return json.dumps(
            {"graph": graph, "inputs": spec.inputs, "outputs": spec.outputs, "max_batch": max_batch}
        ).encode()


def _check_names(cls: type, surface: dict) -> None:
    """The public names a fake class defines must be the real class's names in some TensorRT
    version (a name only one version has, e.g. ILayer.precision, raises when used in the other)."""
    real = set().union(*(s["classes"][cls.real] for s in SURFACES.values()))
    defined = {
        n for c in cls.__mro__ if c not in (Emulated, object) for n in vars(c) if not n.startswith("_")
    }
    invented = defined - real - {"real", "surface"}
    assert not invented, f"the fake {cls.real} defines names no TensorRT has: {sorted(invented)}"


def use_fake_tensorrt(monkeypatch, major: int) -> FakeTensorRT:
    """A FakeTensorRT of TensorRT `major`, imported as `tensorrt` for the rest of the test."""
    fake = FakeTensorRT(major)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake
