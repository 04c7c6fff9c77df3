"""The named stand-in for TensorRT, which cannot exist on the machines that run this suite: the
engine code (mmtrt/export/tensorrt.py) is tested against it, and against real TensorRT only
where a GPU with TensorRT is present (those tests skip elsewhere, with the reason)."""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np
import onnx

from mmtrt.export import tensorrt as trt_code
from mmtrt.graphs import GRAPHS


def _tensorrt_and_gpu() -> str | None:
    try:
        trt_code.require_tensorrt()
    except trt_code.TensorRTUnavailable as exc:
        return str(exc)
    return None


NO_TENSORRT = _tensorrt_and_gpu()


class FakeTensorRT(types.SimpleNamespace):
    """A stand-in for the absent `tensorrt` module: only the names the engine code uses, recording
    what it is asked to do. Its ONNX 'parser' makes one layer per ONNX node, named after the node
    (as TensorRT's parser names layers). Its runtime loads `fake_plan`s and runs them on CPU
    memory through the addresses it is given: every output is the sum of the inputs plus the
    output's position (1, 2, ...), so a test can tell which tensor went where."""

    def __init__(self, version: str):
        record = {
            "flags": set(),
            "cleared": set(),
            "profiles": [],
            "network_flags": None,
            "cache_in": None,
            "constrained": {},
            "loaded": [],
            "executed_on": [],
        }
        enum = lambda *names: types.SimpleNamespace(**{n: n for n in names})

        class Layer:
            def __init__(self, node):
                self.name, self.num_outputs = node.name, len(node.output)
                self.type = "CONVOLUTION" if node.op_type == "Conv" else "OTHER"

            def get_output(self, i):
                return types.SimpleNamespace(dtype="float32")

            def __setattr__(self, key, value):
                if key == "precision":
                    record["constrained"][self.name] = value
                object.__setattr__(self, key, value)

            def set_output_type(self, i, dtype):
                assert dtype == "float32"

        class Network:
            layers, inputs = [], []
            num_layers = property(lambda s: len(s.layers))
            num_inputs = property(lambda s: len(s.inputs))

            def get_layer(self, i):
                return self.layers[i]

            def get_input(self, i):
                return self.inputs[i]

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                graph = onnx.load(path).graph
                self.network.layers = [Layer(n) for n in graph.node]
                self.network.inputs = [
                    types.SimpleNamespace(
                        name=i.name, shape=(-1, *[d.dim_value for d in i.type.tensor_type.shape.dim[1:]])
                    )
                    for i in graph.input
                ]
                return True

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (low, opt, high)

        class Config:
            def set_flag(self, flag):
                record["flags"].add(flag)

            def clear_flag(self, flag):
                record["cleared"].add(flag)

            def add_optimization_profile(self, profile):
                record["profiles"].append(profile.shapes)

            def create_timing_cache(self, data):
                record["cache_in"] = data
                return types.SimpleNamespace(serialize=lambda: b"timings:" + bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                record["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class Logger:
            WARNING = 1

            def __init__(self, level):
                pass

        class Engine:
            def __init__(self, plan):
                spec = json.loads(plan)
                self.max_batch, self.inputs, self.outputs = spec["max_batch"], spec["inputs"], spec["outputs"]
                self.num_io_tensors = len(self.inputs) + len(self.outputs)
                record["loaded"].append(spec["graph"])

            def get_tensor_name(self, i):
                return [*self.inputs, *self.outputs][i]

            def get_tensor_mode(self, name):
                return "INPUT" if name in self.inputs else "OUTPUT"

            def get_tensor_dtype(self, name):
                return "float32"

            def create_execution_context(self):
                return Context(self)

        class Context:
            def __init__(self, engine):
                self.engine, self.shapes, self.addresses = engine, {}, {}

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)
                return 1 <= shape[0] <= self.engine.max_batch  # the optimization profile

            def get_tensor_shape(self, name):  # outputs have the shape of the first input
                return self.shapes[self.engine.inputs[0]]

            def set_tensor_address(self, name, address):
                self.addresses[name] = address
                return True

            def execute_async_v3(self, stream_handle):
                shape = self.shapes[self.engine.inputs[0]]
                memory = lambda name: np.ctypeslib.as_array(
                    (ctypes.c_float * int(np.prod(shape))).from_address(self.addresses[name])
                ).reshape(shape)
                total = sum(memory(name) for name in self.engine.inputs)
                for position, name in enumerate(self.engine.outputs, 1):
                    memory(name)[...] = total + position
                record["executed_on"].append(stream_handle)
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return Engine(plan)

        weak_typing = ["FP16", "BF16"] if version.startswith("10.") else []  # removed in TensorRT 11
        super().__init__(
            __version__=version,
            float32="float32",
            record=record,
            Logger=Logger,
            Builder=Builder,
            OnnxParser=Parser,
            BuilderFlag=enum("TF32", "OBEY_PRECISION_CONSTRAINTS", *weak_typing),
            LayerType=enum("CONVOLUTION", "OTHER"),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
            Runtime=Runtime,
            TensorIOMode=enum("INPUT", "OUTPUT"),
            nptype=lambda dtype: np.dtype(dtype),
        )

    @staticmethod
    def fake_plan(graph: str, max_batch: int = 8) -> bytes:
        """What FakeTensorRT's runtime loads: the graph's tensor names (mmtrt.graphs) and its batch limit."""
        spec = GRAPHS[graph]
        return json.dumps(
            {"graph": graph, "inputs": spec.inputs, "outputs": spec.outputs, "max_batch": max_batch}
        ).encode()
