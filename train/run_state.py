"""The state of a run that decides its next step, and how it is saved, resumed and selected.

That state is exactly (weights, optimizer, scheduler, GradScaler, next step) plus the torch RNG
state and the best validation score so far: last.pt holds all of it, so a run killed at any
point and resumed from last.pt ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mmtrt.checkpoint import read_checkpoint, save_checkpoint
from mmtrt.files import remove_stale_temporaries
from mmtrt.model import MultiMix

from .config import TrainConfig
from .metrics import selection_score


class RunState:
    def __init__(
        self, model: MultiMix, cfg: TrainConfig, device: torch.device, out: Path, cls_root: Path | None = None
    ):
        self.model, self.cfg, self.device, self.out = model, cfg, device, Path(out)
        # what the checkpoints say they were trained on (`mmtrt export` fits its image gate there)
        self.cls_root = str(Path(cls_root).resolve()) if cls_root is not None else None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.next_step = 0
        self.best_score = -math.inf
        self.best_info: dict[str, Any] | None = None

    def resume(self, log, *, clean: bool = True) -> None:
        """Load last.pt of the run folder. With ``clean`` (one process of a run), first remove
        what a SIGKILL during a checkpoint write left behind; ``log`` records each removed file."""
        for name in ("last.pt", "best.pt") if clean else ():
            for tmp in remove_stale_temporaries(self.out / name):
                log({"type": "run", "event": "removed-temporary", "file": tmp.name})
        state = read_checkpoint(self.out / "last.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        trainer_state = state["trainer"]
        self.next_step = int(trainer_state["next_step"])
        self.best_score = float(trainer_state["best_score"])
        self.best_info = trainer_state.get("best_info") or None
        torch.set_rng_state(state["rng"]["torch"])

    def _meta(self, step: int, epoch: float, metrics: dict | None, **extra) -> dict:
        return {
            "epoch": epoch,
            "step": step,
            "seed": self.cfg.seed,
            "metrics": metrics or {},
            "cls_data": self.cls_root,
            **extra,
            "train_config": self.cfg.to_dict(),
        }

    def save_last(self, next_step: int, epoch: float, val: dict | None) -> None:
        """Write last.pt (atomically): everything a resume at ``next_step`` needs."""
        save_checkpoint(
            self.out / "last.pt",
            self.model,
            meta=self._meta(next_step, epoch, val),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
            rng={
                "torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if self.device.type == "cuda" else {}),
            },
            trainer={
                "next_step": next_step,
                "best_score": self.best_score,
                "best_info": self.best_info or {},
            },
        )

    def select(self, val: dict[str, float], epoch: int, step: int) -> tuple[float, bool]:
        """Score the validation metrics (``--select-metric``); a better score than any before
        writes best.pt. Returns (score, improved)."""
        score = selection_score(val, self.cfg.select_metric)
        improved = math.isfinite(score) and score > self.best_score
        if improved:
            self.best_score = score
            self.best_info = {"epoch": epoch, "step": step, "score": score, "val": val}
            save_checkpoint(self.out / "best.pt", self.model, meta=self._meta(step, epoch, val, score=score))
        return score, improved
