"""The four deployable graphs of a MultiMix model, with their tensor names.

This module names them (no torch needed: serving and clients read it too); their nn.Modules are
in :mod:`mmtrt.graph_modules`. All share the batch as their first, dynamic axis; images are
float32 [B, 1, 256, 256] in [0, 1].

    encoder    image -> logits, probs, skip1..skip5, ood_score, in_distribution   (classification only)
    saliency   image -> logits, probs, skip1..skip5, saliency, ood_score, in_distribution
    decoder    image, saliency, skip1..skip5 -> mask_logits, mask
    multimix   image -> probs, mask, saliency, ood_score, in_distribution      (the fused pipeline)

Every graph that sees an image also says whether it looks like the training images (the image
gate of :mod:`mmtrt.ood`: its score and the verdict at the export's threshold).

`saliency` + `decoder` is the split joint pipeline (what a Triton ensemble of engines runs);
`multimix` is the same computation in one graph. :data:`PIPELINES` names these chains once, and
:func:`run_pipeline` runs one over per-graph runners of any runtime (onnxruntime, TensorRT,
PyTorch; :mod:`mmtrt.runtimes`), feeding each graph its inputs by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

SKIPS = ("skip1", "skip2", "skip3", "skip4", "skip5")
#: the image gate (mmtrt.ood): float32 [B, 1] score, bool [B, 1] score <= the export's threshold
OOD = ("ood_score", "in_distribution")


@dataclass(frozen=True)
class GraphSpec:
    name: str
    module: str  # its nn.Module class in mmtrt.graph_modules (imported only to build one)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def build(self, model):
        """The graph as an nn.Module over the parts of ``model`` (a MultiMix), in eval mode."""
        from mmtrt import graph_modules

        return getattr(graph_modules, self.module)(model).eval()


GRAPHS: dict[str, GraphSpec] = {
    spec.name: spec
    for spec in (
        GraphSpec("encoder", "EncoderGraph", ("image",), ("logits", "probs", *SKIPS, *OOD)),
        GraphSpec("saliency", "SaliencyGraph", ("image",), ("logits", "probs", *SKIPS, "saliency", *OOD)),
        GraphSpec("decoder", "DecoderGraph", ("image", "saliency", *SKIPS), ("mask_logits", "mask")),
        GraphSpec("multimix", "FusedGraph", ("image",), ("probs", "mask", "saliency", *OOD)),
    )
}


#: pipeline -> the graphs it chains, in order; each graph takes its inputs by name from the
#: image and the outputs of the graphs before it.
PIPELINES: dict[str, tuple[str, ...]] = {
    "joint": ("saliency", "decoder"),
    "fused": ("multimix",),
    "classify": ("encoder",),
}
#: what a joint prediction is, whichever pipeline makes it
JOINT_OUTPUTS = ("probs", "mask", "saliency", *OOD)

#: a per-graph runner: named input arrays -> named output arrays (all the graph's outputs)
Runner = Callable[[Mapping[str, object]], Mapping[str, object]]


def run_pipeline(runners: Mapping[str, Runner], images, pipeline: str = "joint") -> dict:
    """Run ``pipeline`` on ``images`` with ``runners`` (graph name -> :data:`Runner`); return
    every tensor it produced, by name (``image`` included)."""
    tensors = {"image": images}
    for graph in PIPELINES[pipeline]:
        tensors.update(runners[graph]({name: tensors[name] for name in GRAPHS[graph].inputs}))
    return tensors
