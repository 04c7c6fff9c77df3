"""Weights from elsewhere -> an mmtrt checkpoint (``mmtrt import-weights SRC OUT.pt``).

Accepted sources (read with ``torch.load(..., weights_only=True)``: tensors and plain containers
only, never pickled code):

- a ``state_dict`` of the published MultiMix code (Haque et al.; its module names, in its order:
  ``encoder.dconv_down{1..5}.{0,3}.{weight,bias}``, ``encoder.fc.{weight,bias}``,
  ``decoder.dconv_up{4,3,2,1}.{0,3}.{weight,bias}``, ``decoder.conv_last.{weight,bias}``,
  ``decoder.conv_last_saliency.{weight,bias}``). Indices 0 and 3 of each ``double_conv`` are its
  two convolutions (1, 2, 4, 5, 6 are InstanceNorm without affine parameters, LeakyReLU and
  Dropout: no weights). ``decoder.conv_last_saliency`` (Conv1x1, 17 -> 1 channels) is defined
  but unused by the published forward pass, and mmtrt has no such layer: it is dropped, and
  the import says so;
- the same wrapped as ``{"state_dict": ...}``, and/or with the ``module.`` prefix of
  ``nn.DataParallel`` / DistributedDataParallel;
- a plain ``state_dict`` of mmtrt's own :class:`mmtrt.model.MultiMix` (same wrappers).

Every tensor is checked name by name against MultiMix's parameters (shape, floating dtype,
finite values); a missing, unexpected or misshaped key is an error listing all of them, and
nothing is written. The checkpoint is written atomically by :func:`mmtrt.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmtrt.files import file_sha256
from mmtrt.model import MultiMix

__all__ = ["WeightsError", "ImportReport", "published_to_mmtrt", "convert_state_dict", "import_weights"]

# Published name -> mmtrt name. dconv_up4 is the deepest decoder stage (386 -> 128 channels).
UNUSED_PUBLISHED = ("decoder.conv_last_saliency.weight", "decoder.conv_last_saliency.bias")


def published_to_mmtrt() -> OrderedDict[str, str | None]:
    """The published code's parameter names, in its order, each with mmtrt's name (None: dropped)."""
    names: OrderedDict[str, str | None] = OrderedDict()
    for k in range(1, 6):
        for idx, conv in ((0, "conv1"), (3, "conv2")):
            for p in ("weight", "bias"):
                names[f"encoder.dconv_down{k}.{idx}.{p}"] = f"encoder.blocks.{k - 1}.{conv}.{p}"
    for p in ("weight", "bias"):
        names[f"encoder.fc.{p}"] = f"encoder.fc.{p}"
    for stage, k in enumerate((4, 3, 2, 1)):
        for idx, conv in ((0, "conv1"), (3, "conv2")):
            for p in ("weight", "bias"):
                names[f"decoder.dconv_up{k}.{idx}.{p}"] = f"decoder.stages.{stage}.{conv}.{p}"
    for p in ("weight", "bias"):
        names[f"decoder.conv_last.{p}"] = f"decoder.out.{p}"
    for name in UNUSED_PUBLISHED:
        names[name] = None
    return names


class WeightsError(ValueError):
    """Weights that cannot become an mmtrt checkpoint; the message names the file and every problem."""


@dataclass
class ImportReport:
    layout: str  # "published" or "mmtrt"
    wrapped: list[str] = field(default_factory=list)  # e.g. ['{"state_dict": ...}', "module. prefix"]
    dropped: list[str] = field(default_factory=list)
    converted_dtypes: list[str] = field(default_factory=list)
    parameters: int = 0


def _unwrap(obj, report: ImportReport, source: str) -> dict:
    if (
        isinstance(obj, dict)
        and "format" in obj
        and "model" in obj
        and str(obj.get("format")).startswith("mmtrt")
    ):
        raise WeightsError(
            f"{source}: already an mmtrt checkpoint (format {obj['format']!r}); nothing to import"
        )
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        report.wrapped.append('{"state_dict": ...}')
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{source}: not a state_dict (a {type(obj).__name__}); expected a dict of tensors")
    keys = [str(k) for k in obj]
    if all(k.startswith("module.") for k in keys):
        report.wrapped.append("module. prefix")
        obj = {str(k)[len("module.") :]: v for k, v in obj.items()}
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{source}: not a state_dict: values that are not tensors under {not_tensors[:10]}"
        )
    return {str(k): v for k, v in obj.items()}


def convert_state_dict(obj, source: str = "weights") -> tuple[dict[str, torch.Tensor], ImportReport]:
    """A loaded object (see the module docstring) -> (state_dict with mmtrt's names, report).
    Raises WeightsError listing every missing, unexpected and misshaped key."""
    expected = MultiMix().state_dict()
    published = published_to_mmtrt()
    report = ImportReport(layout="mmtrt")
    sd = _unwrap(obj, report, source)
    is_published = any(k in published and published[k] != k for k in sd) or any(
        ".dconv_" in k or ".conv_last" in k for k in sd
    )
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    if is_published:
        report.layout = "published"
        for k, v in sd.items():
            if k not in published:
                unexpected.append(k)
            elif published[k] is None:
                report.dropped.append(f"{k} {tuple(v.shape)}")
            else:
                out[published[k]] = v
        back = {v: k for k, v in published.items() if v is not None}
        missing = [back[k] for k in expected if k not in out]
    else:
        for k, v in sd.items():
            if k in expected:
                out[k] = v
            else:
                unexpected.append(k)
        missing = [k for k in expected if k not in out]
        back = {k: k for k in expected}

    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    misshaped, bad_values = [], []
    for k, v in out.items():
        want = expected[k]
        if tuple(v.shape) != tuple(want.shape):
            misshaped.append(f"{back[k]}: {tuple(v.shape)}, expected {tuple(want.shape)}")
        elif not v.is_floating_point():
            bad_values.append(f"{back[k]}: dtype {v.dtype}, expected a floating-point tensor")
        elif not torch.isfinite(v).all():
            bad_values.append(f"{back[k]}: holds NaN or infinite values")
    if misshaped:
        problems.append(f"misshaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    if bad_values:
        problems.append(f"bad values ({len(bad_values)}): {'; '.join(bad_values)}")
    if problems:
        raise WeightsError(
            f"{source}: these weights do not fit MultiMix ({report.layout} layout): " + " | ".join(problems)
        )
    converted = {}
    for k in expected:  # mmtrt's order
        v = out[k].detach().cpu()
        if v.dtype != expected[k].dtype:
            report.converted_dtypes.append(f"{back[k]}: {v.dtype} -> float32")
            v = v.to(torch.float32)
        converted[k] = v.contiguous()
    report.parameters = sum(v.numel() for v in converted.values())
    return converted, report


def _load(src: Path):
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).strip().splitlines()[:2])
        hint = (
            " (it holds pickled Python objects, e.g. a whole model or an optimizer: load it where its "
            "code is and save model.state_dict() instead)"
            if "weights_only" in str(exc) or "Unsupported global" in str(exc)
            else ""
        )
        raise WeightsError(
            f"{src}: not a readable torch file{hint}: {type(exc).__name__}: {text[:400]}"
        ) from exc


def import_weights(src: Path, out: Path) -> ImportReport:
    """Read ``src``, convert and check it, and write the mmtrt checkpoint ``out`` (only when every
    check passed). Returns what was done; raises WeightsError."""
    from mmtrt.checkpoint import save_checkpoint

    src, out = Path(src), Path(out)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise WeightsError(f"{out}: the output would overwrite the source")
    state, report = convert_state_dict(_load(src), str(src))
    model = MultiMix()
    model.load_state_dict(state, strict=True)
    meta = {
        "origin": "mmtrt import-weights",
        "source": src.name,
        "source_sha256": file_sha256(src),
        "layout": report.layout,
        "wrapped": report.wrapped,
        "dropped": report.dropped,
        "converted_dtypes": report.converted_dtypes,
    }
    save_checkpoint(out, model.eval(), meta=meta)
    return report
