"""The training loop: data, DDP, compile, mixed precision, and the steps; the run state it saves
and resumes is train/run_state.py, validation train/validation.py, the final report train/report.py.

Run folder (``--out``):
    config.json     the TrainConfig of the run
    last.pt         written atomically every ``--ckpt-every`` steps and at each epoch end: model,
                    optimizer, scheduler, GradScaler, RNG states and the next step to run
    best.pt         the checkpoint with the best validation score so far (``--select-metric``)
    log.jsonl       one JSON object a line: "run" (start/resume), "train" (every --log-every
                    steps), "val" (each epoch), "compile", "end"
    metrics.json    final: best and last validation metrics, test metrics of best.pt when the data
                    has a test split, throughput, compile time, work per step

All checkpoints are read back with ``torch.load(weights_only=True)`` (mmtrt.checkpoint).

Reproducibility and resume: before step ``g`` the torch generators are re-seeded from
(seed, g, rank), and the batch of step ``g`` is a pure function of (seed, g, rank) (train.data). So
the state that decides step ``g`` is exactly (weights, optimizer, scheduler, scaler, g), which
last.pt holds; a run killed at any point (SIGKILL included) and resumed from last.pt replays the
lost steps and ends with the same weights as an uninterrupted run with the same seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mmtrt.model import MultiMix

from . import data as tdata
from .config import TrainConfig
from .report import StepTimes, jsonable, now, test_best, write_metrics
from .run_state import RunState
from .step import TrainModule, compile_step, work_per_step
from .validation import eval_sets, validate

log = logging.getLogger("train")


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says why."""


# Fields of the saved config that a --resume may change (they do not change the result).
RESUME_OVERRIDES = (
    "out",
    "resume",
    "epochs",
    "max_steps",
    "progress",
    "workers",
    "compile",
    "ckpt_every",
    "log_every",
    "device",
)


# ------------------------------------------------------------------------------------------------
# Distributed set-up
# ------------------------------------------------------------------------------------------------
class Dist:
    def __init__(self, cfg: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", str(self.rank)))
        want = cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available")
        if want == "cuda":
            self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, 4242]).generate_state(1)[0])


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class JsonLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"time": now(), **record}, default=jsonable) + "\n")


def load_resume_config(cfg: TrainConfig) -> TrainConfig:
    """The saved config of the run in cfg.out, with the fields a resume may change taken from cfg."""
    path = Path(cfg.out) / "config.json"
    if not path.is_file() or not (Path(cfg.out) / "last.pt").is_file():
        raise TrainError(f"--resume: no resumable run in {cfg.out} (config.json and last.pt are needed)")
    saved = TrainConfig.current_names(json.loads(path.read_text()))
    merged = {**saved, **{k: getattr(cfg, k) for k in RESUME_OVERRIDES}}
    differing = sorted(
        k for k, v in cfg.to_dict().items() if k not in RESUME_OVERRIDES and k in saved and saved[k] != v
    )
    if differing:
        warnings.warn(
            f"--resume: using the run's saved values for {differing} (the command line differs)", stacklevel=2
        )
    return TrainConfig.from_dict(merged)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.resume:
        cfg = load_resume_config(cfg)
    out = Path(cfg.out)
    dd = Dist(cfg)
    flush = dd.device.type == "cpu" and cfg.flush_denormal
    try:
        if flush:
            torch.set_flush_denormal(True)
        return _train(cfg, out, dd)
    finally:
        if flush:  # process-wide state: put back the default for whoever runs next in this process
            torch.set_flush_denormal(False)
        dd.close()


def _train(cfg: TrainConfig, out: Path, dd: Dist) -> dict[str, Any]:
    device = dd.device
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            cfg.save(out / "config.json")
    jlog = JsonLog(out / "log.jsonl", dd.main)

    # data (rank 0 generates synthetic data first; the others then find it in the cache)
    if dd.main:
        cls_root, seg_root = tdata.data_roots(cfg)
    dd.barrier()
    if not dd.main:
        cls_root, seg_root = tdata.data_roots(cfg)
    pools = tdata.make_pools(cfg, cls_root, seg_root)
    spe = tdata.steps_per_epoch(cfg, pools, dd.world)
    total = cfg.epochs * spe
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    val_cls, val_seg = eval_sets(cfg, cls_root, seg_root, "val")
    if cfg.trains_classifier and val_cls is None:
        raise TrainError(f"{cls_root}: no val/ split; the best checkpoint is chosen on held-out data")
    if cfg.uses_seg and val_seg is None:
        raise TrainError(f"{seg_root}: no val/ split; the best checkpoint is chosen on held-out data")

    # model, optimiser, schedule, scaler
    torch.manual_seed(cfg.seed)
    model = MultiMix().to(device).train()
    module = TrainModule(model, cfg)
    if dd.enabled:
        full = cfg.uses_cls and cfg.uses_ssl and cfg.uses_seg and cfg.saliency_bridge
        module = torch.nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not full,
        )
    state = RunState(model, cfg, device, out, cls_root if cfg.uses_cls else None)
    optimizer, scheduler, scaler = state.optimizer, state.scheduler, state.scaler
    if cfg.resume:
        state.resume(jlog.write, clean=dd.main)
        jlog.write({"type": "run", "event": "resume", "next_step": state.next_step})
    start_step = state.next_step

    times = StepTimes()
    step_fn = module
    # auto: compile on CUDA; on CPU the compiled step was no faster than the eager one and its
    # compile takes minutes (benchmarks/results/train_bench_cpu.md), so auto trains eagerly there.
    # --compile on compiles anyway (correctly: train.step.compile_step).
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"):
        step_fn = compile_step(module, device)
        times.compiled = True

    batches = tdata.StepBatches(cfg, pools, dd.rank, dd.world, total_steps=total)
    loader = DataLoader(
        batches,
        batch_size=None,
        sampler=range(start_step, total),
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    n_seg = cfg.seg_batch_size * ((len(pools.seg_l) > 0) + (len(pools.seg_u) > 0))
    n_cls_grad = cfg.batch_size * ((len(pools.cls_l) > 0) + (len(pools.cls_u) > 0))
    n_cls_nograd = cfg.batch_size * (len(pools.cls_u) > 0)
    work = work_per_step(model, cfg, n_seg, n_cls_grad, n_cls_nograd)
    images_per_step = work["images_per_step"]
    if not cfg.resume:
        jlog.write(
            {
                "type": "run",
                "event": "start",
                "config": cfg.to_dict(),
                "world_size": dd.world,
                "device": str(device),
                "torch": torch.__version__,
                "steps_per_epoch": spe,
                "total_steps": total,
                "data": {"cls_root": str(cls_root), "seg_root": str(seg_root), **pools.sizes()},
                "work": work,
            }
        )

    disable = {"auto": None, "on": False, "off": True}[cfg.progress] if dd.main else True
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=start_step, desc="train", unit="step", disable=disable, dynamic_ncols=True
    )

    last_val: dict[str, float] = {}
    first_batch_digest = None
    t_run = time.perf_counter()

    def save_last(next_step: int, epoch: float, val: dict | None) -> None:
        if dd.main:
            state.save_last(next_step, epoch, val)

    def run_step(fn, batch):
        loss, parts = fn(batch)
        scaler.scale(loss).backward()
        return loss, parts

    step = start_step
    for step, batch in zip(range(start_step, total), loader):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if first_batch_digest is None:
            first_batch_digest = hashlib.sha256(
                b"".join(batch[k].cpu().numpy().tobytes() for k in sorted(batch))
            ).hexdigest()
        torch.manual_seed(step_seed(cfg.seed, step, dd.rank))
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if times.compiled and times.first_s is None and cfg.compile == "auto":
            try:
                loss, parts = run_step(step_fn, batch)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager
                times.compile_fallback = (
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                warnings.warn(
                    f"torch.compile failed, training eagerly instead ({times.compile_fallback})", stacklevel=2
                )
                step_fn, times.compiled = module, False
                optimizer.zero_grad(set_to_none=True)
                torch.manual_seed(step_seed(cfg.seed, step, dd.rank))
                loss, parts = run_step(step_fn, batch)
        else:
            loss, parts = run_step(step_fn, batch)
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())  # (also synchronises a GPU: the timing below is real)
        dt = time.perf_counter() - t0
        if times.add(dt) and times.compiled:
            jlog.write({"type": "compile", "first_step_s": dt})
        if not math.isfinite(loss_value) and not scaler.is_enabled():
            raise FloatingPointError(
                f"non-finite loss {loss_value} at step {step} ({ {k: float(v) for k, v in parts.items()} })"
            )
        img_s = images_per_step * dd.world / dt
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{img_s:.1f}", refresh=False)
        epoch = step // spe
        if (step + 1) % cfg.log_every == 0 or step == start_step:
            jlog.write(
                {
                    "type": "train",
                    "step": step,
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "step_s": dt,
                    "images_per_s": img_s,
                    **{k: float(v) for k, v in parts.items()},
                }
            )

        epoch_end = (step + 1) % spe == 0
        stop = step + 1 == total
        if epoch_end or stop:
            t_eval = time.perf_counter()
            val = validate(model, cfg, val_cls, val_seg, device) if dd.main else {}
            times.eval_s += time.perf_counter() - t_eval
            last_val = val
            if epoch_end:
                scheduler.step()
            if dd.main:
                score, improved = state.select(val, epoch, step + 1)
                jlog.write(
                    {"type": "val", "epoch": epoch, "step": step + 1, "score": score, "best": improved, **val}
                )
                bar.write(f"epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
            save_last(step + 1, epoch if epoch_end else epoch + ((step + 1) % spe) / spe, val)
            dd.barrier()
        elif cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
            save_last(step + 1, epoch + ((step + 1) % spe) / spe, None)
    bar.close()
    wall = time.perf_counter() - t_run

    # ---- final report ------------------------------------------------------------------------
    digests = [params_digest(model)]
    batch_digests = [first_batch_digest]
    if dd.enabled:
        gathered: list = [None] * dd.world
        dist.all_gather_object(gathered, (digests[0], first_batch_digest))
        digests = [g[0] for g in gathered]
        batch_digests = [g[1] for g in gathered]
    result: dict[str, Any] = {}
    if dd.main:
        timing = times.summary(
            device=device,
            world=dd.world,
            precision=cfg.precision,
            images_per_step=images_per_step,
            wall_s=wall,
        )
        result = {
            "finished": now(),
            "out": str(out),
            "config": cfg.to_dict(),
            "best": state.best_info,
            "last": {"step": step + 1 if total > start_step else start_step, "val": last_val},
            "test": test_best(cfg, out, cls_root, seg_root, device),
            "timing": timing,
            "work": work,
            "data": pools.sizes(),
            "distributed": {
                "world_size": dd.world,
                "param_digests": digests,
                "first_batch_digests": batch_digests,
                "in_sync": len(set(digests)) == 1,
            },
        }
        write_metrics(out, result)
        jlog.write({"type": "end", "timing": result["timing"], "best": state.best_info})
    return result
