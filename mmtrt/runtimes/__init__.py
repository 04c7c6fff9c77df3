"""Per-graph runners of the exported graphs, one module per runtime.

A runner maps named input arrays to named output arrays (:data:`mmtrt.graphs.Runner`);
:func:`mmtrt.graphs.run_pipeline` chains them into the joint, fused or classify pipeline, the
same way for every runtime:

- :mod:`.ort`      onnxruntime (the one place onnxruntime sessions are made);
- :mod:`.pytorch`  the PyTorch graphs of :mod:`mmtrt.graphs` (eager, no gradients);
- :mod:`.openvino` OpenVINO's CPU plugin, the precision always explicit (f32 unless bf16 on bf16
  hardware);
- :mod:`mmtrt.export.tensorrt` TensorRT engines (:class:`~mmtrt.export.tensorrt.EngineRunner`).

The Triton python-backend model (model_repository/cpu/model.py) runs its graph with the runners of
:mod:`.ort` and :mod:`.openvino` themselves: `mmtrt repo` copies both modules beside it (they
import numpy and their runtime only, never torch), so a repository runs without mmtrt installed.
"""
