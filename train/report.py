"""The end of a run: test metrics of best.pt, timing, and the metrics.json every run writes."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mmtrt.checkpoint import load_checkpoint
from mmtrt.files import atomic_write_text

from .config import TrainConfig
from .validation import eval_sets, validate


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


@dataclass
class StepTimes:
    """Wall time of the training steps: the first (which includes any compile) apart."""

    first_s: float | None = None
    rest_s: list[float] = field(default_factory=list)
    compiled: bool = False
    compile_fallback: str | None = None
    eval_s: float = 0.0

    def add(self, seconds: float) -> bool:
        """Record a step; True for the first one."""
        if self.first_s is None:
            self.first_s = seconds
            return True
        self.rest_s.append(seconds)
        return False

    def summary(self, *, device, world: int, precision: str, images_per_step: int, wall_s: float) -> dict:
        median = statistics.median(self.rest_s) if self.rest_s else self.first_s
        compile_s = (
            self.first_s - median if (self.compiled and self.first_s is not None and self.rest_s) else None
        )
        return {
            "device": str(device),
            "world_size": world,
            "precision": precision,
            "compiled": self.compiled,
            "compile_fallback": self.compile_fallback,
            "first_step_s": self.first_s,
            "compile_s": compile_s,
            "median_step_s": median,
            "steps_per_s": (1.0 / median) if median else None,
            "images_per_s": (images_per_step * world / median) if median else None,
            "steps_timed": len(self.rest_s),
            "eval_s": self.eval_s,
            "wall_s": wall_s,
        }


def test_best(cfg: TrainConfig, out: Path, cls_root: Path, seg_root: Path, device) -> dict | None:
    """Metrics of best.pt on the test split, when the data has one (else None)."""
    test_cls, test_seg = eval_sets(cfg, cls_root, seg_root, "test")
    if not (out / "best.pt").is_file() or (test_cls is None and test_seg is None):
        return None
    best_model, _ = load_checkpoint(out / "best.pt")
    return validate(best_model.to(device), cfg, test_cls, test_seg, device)


def write_metrics(out: Path, result: dict[str, Any]) -> None:
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=jsonable) + "\n")
