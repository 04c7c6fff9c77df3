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


def runner(source, *, threads: int = 0):
    """A :data:`mmtrt.graphs.Runner` over a CPU session of ``source``: float32 arrays in, every
    output of the graph out, by name."""
    sess = session(source, threads=threads)
    names = [o.name for o in sess.get_outputs()]

    def run(inputs) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        return dict(zip(names, sess.run(names, feed)))

    return run


def runners(export_dir: Path, graphs: Sequence[str], *, threads: int = 0) -> dict:
    """graph -> :func:`runner` of ``<export_dir>/<graph>.onnx``."""
    return {graph: runner(Path(export_dir) / f"{graph}.onnx", threads=threads) for graph in graphs}
