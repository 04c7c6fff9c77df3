"""onnxruntime sessions and runners of exported graphs (CPU, or CUDA where onnxruntime-gpu is)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CPU = ("CPUExecutionProvider",)


def session(source, *, threads: int = 0, providers: Sequence = CPU, log_severity: int = 3):
    """An ``InferenceSession`` of ``source`` (an ONNX file, or a serialized model as bytes) with
    ``threads`` intra-op threads (0: onnxruntime's default, one per core) and one inter-op
    thread (the graphs run sequentially). ``log_severity`` 3 logs errors only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = int(log_severity)
    source = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


class GraphRunner:
    """A :data:`mmtrt.graphs.Runner` over an onnxruntime session: float32 arrays in, the graph's
    outputs out by name (all of them, or those asked for). ``inputs``: the graph's input names;
    ``output_shapes``: output name -> shape (a symbolic dim as its name, or None)."""

    def __init__(self, sess):
        self.session = sess
        self.inputs = [i.name for i in sess.get_inputs()]
        self.output_shapes = {o.name: list(o.shape) for o in sess.get_outputs()}

    def __call__(self, inputs, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_shapes)
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        return dict(zip(names, self.session.run(names, feed)))


def runner(source, *, threads: int = 0) -> GraphRunner:
    """A :class:`GraphRunner` over a CPU session of ``source`` (:func:`session`)."""
    return GraphRunner(session(source, threads=threads))


def runners(export_dir: Path, graphs: Sequence[str], *, threads: int = 0) -> dict:
    """graph -> :func:`runner` of ``<export_dir>/<graph>.onnx``."""
    return {graph: runner(Path(export_dir) / f"{graph}.onnx", threads=threads) for graph in graphs}
