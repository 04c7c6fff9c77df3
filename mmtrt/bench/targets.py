"""The targets of `mmtrt bench`: every way of running MultiMix it measures, registered once as data.

A target is what one timed call (or one Triton request) runs: a runtime, the pipeline of graphs it
computes, a precision, and how the images reach it (in the same process, or sent to a Triton
server as tensors or as image files). Users name targets on the command line
(``--targets ort-fused,triton-bytes``); the runner builds each from its fields, never from its
name. Nothing here imports a runtime, so ``mmtrt bench --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmtrt.serving.client import IMAGE_MODEL, JOINT_MODEL

#: how the images reach the pipeline: a call in the bench's own process, or requests to a Triton
#: server (cpu repository flavour) carrying image tensors (model multimix) or image files
#: (multimix_image: decoded in the server, then multimix)
TRANSPORTS = ("in-process", "triton-tensors", "triton-files")
SERVED_MODEL = {"triton-tensors": JOINT_MODEL, "triton-files": IMAGE_MODEL}


@dataclass(frozen=True)
class Target:
    name: str  # what users type
    runtime: str  # pytorch | onnxruntime | openvino | tensorrt
    #: what one call computes: "reference" (the published PyTorch path: autograd saliency, then a
    #: second encoder pass), "shared-pass" (MultiMix.forward: one encoder pass with the saliency
    #: graph), a pipeline of mmtrt.graphs.PIPELINES (fused, joint, classify), "saliency" (that
    #: graph alone) or "engines" (TensorRT: the fused engine where built, else saliency -> decoder)
    pipeline: str
    precision: str = "fp32"  # fp32 | fp16 | bf16 (PyTorch: autocast; OpenVINO: the export's bf16 copies)
    transport: str = "in-process"
    devices: tuple[str, ...] = ("cpu", "cuda")  # the --device values it runs with
    default_on: tuple[str, ...] = ()  # the devices whose default target list has it
    compile_mode: str | None = None  # PyTorch: torch.compile's mode ("default", "reduce-overhead")

    @property
    def served(self) -> bool:
        return self.transport != "in-process"

    @property
    def served_model(self) -> str | None:
        """The Triton model its requests go to (None in process)."""
        return SERVED_MODEL.get(self.transport)


CPU, CUDA, BOTH = ("cpu",), ("cuda",), ("cpu", "cuda")


def _pytorch_on_cuda(name: str, precision: str = "fp32", compile_mode: str | None = None) -> Target:
    """A shared-pass PyTorch target that runs, and is measured by default, on a GPU only."""
    return Target(
        name, "pytorch", "shared-pass", precision, compile_mode=compile_mode, devices=CUDA, default_on=CUDA
    )


# eager-bf16 would run on a CPU, but emulated where the CPU has no bfloat16 arithmetic (about 30x
# slower than float32 on this project's CPU machine): CUDA only. The OpenVINO targets run on its CPU
# plugin (precision hint f32; -bf16: over the export's bf16 copies, an export made with
# --precision bf16, on a CPU with bf16 hardware). The Triton targets serve the cpu repository
# (mmtrt repo --runtime R [--precision P]) whatever --device says.
_REGISTRY = (
    Target("reference", "pytorch", "reference", default_on=BOTH),
    Target("eager", "pytorch", "shared-pass", default_on=BOTH),
    Target("compiled", "pytorch", "shared-pass", compile_mode="default", default_on=CUDA),
    _pytorch_on_cuda("cuda-graphs", compile_mode="reduce-overhead"),
    _pytorch_on_cuda("eager-fp16", "fp16"),
    _pytorch_on_cuda("compiled-fp16", "fp16", compile_mode="default"),
    _pytorch_on_cuda("eager-bf16", "bf16"),
    Target("ort-fused", "onnxruntime", "fused", default_on=BOTH),
    Target("ort-split", "onnxruntime", "joint", default_on=BOTH),
    Target("ort-encoder", "onnxruntime", "classify", default_on=BOTH),
    Target("ort-saliency", "onnxruntime", "saliency", default_on=BOTH),
    Target("ov-fused", "openvino", "fused", devices=CPU, default_on=CPU),
    Target("ov-split", "openvino", "joint", devices=CPU, default_on=CPU),
    Target("ov-encoder", "openvino", "classify", devices=CPU, default_on=CPU),
    Target("ov-saliency", "openvino", "saliency", devices=CPU, default_on=CPU),
    Target("ov-fused-bf16", "openvino", "fused", "bf16", devices=CPU),
    Target("ov-split-bf16", "openvino", "joint", "bf16", devices=CPU),
    Target("ov-encoder-bf16", "openvino", "classify", "bf16", devices=CPU),
    Target("ov-saliency-bf16", "openvino", "saliency", "bf16", devices=CPU),
    Target("tensorrt", "tensorrt", "engines", devices=CUDA, default_on=CUDA),
    Target("triton", "onnxruntime", "fused", transport="triton-tensors", default_on=CPU),
    Target("triton-bytes", "onnxruntime", "fused", transport="triton-files", default_on=CPU),
    Target("triton-ov", "openvino", "fused", transport="triton-tensors", default_on=CPU),
    Target("triton-ov-bf16", "openvino", "fused", "bf16", transport="triton-tensors"),
)
#: name -> Target, in the order reports list them
TARGETS: dict[str, Target] = {target.name: target for target in _REGISTRY}


def default_targets(device: str) -> list[str]:
    return [t.name for t in TARGETS.values() if device in t.default_on]
