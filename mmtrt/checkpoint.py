"""MultiMix checkpoints: one format, written atomically, read with `weights_only=True`.

A checkpoint is a plain dict of tensors and JSON-like values (nothing that needs pickle's code
execution):

    {"format": "mmtrt.multimix", "format_version": 1,
     "config": {...MultiMix constructor arguments...},
     "model": state_dict,
     "meta": {...free JSON-like data: epoch, metrics, seed...},
     **extra}   # e.g. optimizer / scheduler / RNG state for resuming training
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmtrt.files import atomic_write, file_sha256  # noqa: F401  (re-exported)
from mmtrt.model import MultiMix

FORMAT = "mmtrt.multimix"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_checkpoint(path: Path, model: MultiMix, meta: dict[str, Any] | None = None, **extra: Any) -> None:
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
        **extra,
    }
    atomic_write(Path(path), lambda fh: torch.save(state, fh))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, after checking that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding pickled code
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mmtrt MultiMix checkpoint (no '{FORMAT}' format tag); for a "
            f"state_dict of the published MultiMix code or of mmtrt's MultiMix, run "
            f"`mmtrt import-weights {path} OUT.pt` and use OUT.pt"
        )
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('format_version')!r}, "
            f"this mmtrt reads version {FORMAT_VERSION}"
        )
    return state


def load_checkpoint(path: Path) -> tuple[MultiMix, dict[str, Any]]:
    """The model (in eval mode) and the checkpoint's meta dict."""
    state = read_checkpoint(path)
    try:
        model = MultiMix(**state["config"])
    except TypeError as exc:
        raise CheckpointError(f"{path}: unknown model configuration {state.get('config')!r}") from exc
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the MultiMix architecture: {_first_line(exc, 3)}"
        ) from exc
    return model.eval(), state.get("meta", {})


def _first_line(exc: Exception, lines: int = 1) -> str:
    return " ".join(str(exc).strip().splitlines()[:lines])
