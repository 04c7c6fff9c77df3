"""The runtime and the precision the cpu flavour's graph models serve with, by a fixed rule: the
same export and settings build the same repository on any host of the same hardware.

Runtime (`mmtrt repo --runtime`):

- ``onnxruntime`` / ``openvino``: as asked; OpenVINO only where it can serve the export
  (installed here, and the export's parity check covered it: ``manifest.parity.runtimes``, an
  export validates the runtimes installed where it ran);
- ``auto``: OpenVINO for a reduced precision (bf16 / fp16: the CPU runtime that runs those
  convolutions natively; onnxruntime's CPU provider has no bf16 convolutions and emulates fp16
  ones), onnxruntime for fp32 (always installed with mmtrt). For fp32 neither runtime is the
  faster on every CPU, so none is assumed: on a 2-core Zen 4 at batch 8
  (benchmarks/results/openvino_cpu_bf16/bench.md) onnxruntime ran the fused graph at 12.1
  images/s in process against OpenVINO's 10.7, while served by Triton OpenVINO gave 12.7 against
  onnxruntime's 11.6. ``mmtrt bench`` measures both on a given host; ``--runtime openvino``
  serves fp32 with OpenVINO.

The choice and its reason are written into each graph model's config (parameters ``runtime``
and ``runtime_choice``) and printed by `mmtrt repo`.

Precision (`mmtrt repo --precision`): fp32, or the export's bf16 / fp16 copies run by OpenVINO
where this host has the hardware (:func:`served_precision`; float32, with a warning, where not).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ServingError
from .settings import PRECISIONS, RUNTIME_CHOICES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: str
    reason: str


#: the default, and what the gpu flavour's build takes (it has no graph models)
ONNXRUNTIME_ASKED_FOR = RuntimeChoice("onnxruntime", "asked for")


def validated_runtimes(manifest: dict) -> list[str] | None:
    """The runtimes the export's parity check covered; None when the manifest does not say
    (an export without a parity record, or one made before OpenVINO was validated)."""
    runtimes = (manifest.get("parity") or {}).get("runtimes")
    return list(runtimes) if isinstance(runtimes, list) else None


def openvino_problem(manifest: dict) -> str | None:
    """Why OpenVINO cannot serve this export here, or None."""
    from mmtrt.runtimes import openvino

    if not openvino.available():
        return "OpenVINO is not installed here (pip install openvino; scripts/setup.sh installs it)"
    covered = validated_runtimes(manifest)
    parity = manifest.get("parity") or {}
    if parity and covered is not None and "openvino" not in covered:
        return (
            f"the export's parity check covered {', '.join(covered)} only: export again where "
            "OpenVINO is installed so that its graphs are validated in OpenVINO too"
        )
    if parity and covered is None:
        return (
            "the export's parity check predates OpenVINO validation (manifest.parity.runtimes "
            "missing): export again with OpenVINO installed"
        )
    return None


def choose_runtime(requested: str, manifest: dict, precision: str = "fp32") -> RuntimeChoice:
    """The runtime serving the repository's graphs (``precision``: the one they are served in),
    by the rule of the module docstring. ServingError when OpenVINO is needed and cannot serve
    this export here."""
    if requested not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {requested!r}: choose from {', '.join(RUNTIME_CHOICES)}")
    if requested == "onnxruntime":
        return ONNXRUNTIME_ASKED_FOR
    if requested == "auto" and precision == "fp32":
        return RuntimeChoice(
            "onnxruntime",
            "auto: onnxruntime for fp32 (openvino for bf16 / fp16; --runtime openvino to serve fp32 with it)",
        )
    problem = openvino_problem(manifest)
    if problem:
        raise ServingError(
            f"--runtime openvino: {problem}"
            if requested == "openvino"
            else f"{precision} is served by OpenVINO: {problem}"
        )
    if requested == "openvino":
        return RuntimeChoice("openvino", "asked for")
    return RuntimeChoice(
        "openvino", f"auto: openvino, the CPU runtime that runs {precision} convolutions natively"
    )


def served_precision(
    precision: str, runtime: str, manifest: dict, export_dir: Path, graphs: Sequence[str]
) -> str:
    """The precision the cpu flavour serves: ``precision``'s mixed copies of the export's
    ``graphs`` (``<graph>.<precision>.onnx``, :mod:`mmtrt.export.precision`), run by OpenVINO,
    where this host has the hardware; float32, with a warning, where it has not."""
    from mmtrt.runtimes import openvino

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return precision
    exported = manifest.get("precision", "fp32")
    if exported != precision:
        raise ServingError(
            f"the export in {export_dir} is {exported}: it has no {precision} copies of its graphs; "
            f"export with `mmtrt export --precision {precision}`"
        )
    if runtime == "onnxruntime":
        raise ServingError(
            f"{precision} on CPU is served by OpenVINO (onnxruntime's CPU provider has no bf16 "
            "convolutions and emulates fp16 ones): pass --runtime openvino (or auto)"
        )
    native, note = openvino.reduced_precision_native(precision)
    if not native:
        log.warning("%s", note)
        return "fp32"
    copies = [manifest["graphs"][graph].get("reduced_precision_file") for graph in graphs]
    unchecked = [
        str(copy)
        for copy in copies
        if "openvino" not in ((manifest.get("files") or {}).get(copy) or {}).get("checked_in", [])
    ]
    if unchecked:
        raise ServingError(
            f"the export's {precision} copies {', '.join(unchecked)} were not checked in OpenVINO "
            f"(exported where OpenVINO or {precision} hardware was missing): export again on a host like this one"
        )
    return precision
