"""Runners of the PyTorch graphs of :mod:`mmtrt.graphs` (eager, no gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmtrt.graphs import GRAPHS
from mmtrt.model import MultiMix


def runners(model: MultiMix, graphs: Sequence[str] = tuple(GRAPHS)) -> dict:
    """graph -> :data:`mmtrt.graphs.Runner` over ``GRAPHS[graph].build(model)``: tensors in,
    every output of the graph out, by name."""

    def runner(name: str):
        spec = GRAPHS[name]
        module = spec.build(model)

        @torch.no_grad()
        def run(inputs) -> dict[str, torch.Tensor]:
            return dict(zip(spec.outputs, module(*(inputs[n] for n in spec.inputs))))

        return run

    return {name: runner(name) for name in graphs}
