"""Training-step benchmark: steps/s and images/s of the MultiMix training step, per variant.

    python -m benchmarks.train_bench --device cpu --size 256 --batch-size 2 --steps 3     # this CPU
    python -m benchmarks.train_bench --device cuda                                         # a CUDA host

Variants (default: all that apply to the device):
    eager-fp32, compiled-fp32, eager-bf16, compiled-bf16  (CPU and CUDA; bf16 is fast on CPUs with
                                                          AVX512_BF16 / AMX, emulated elsewhere)
    compiled-fp16 (GradScaler), eager-fp16                (CUDA only)
Each variant builds a fresh model (seed 0) and runs the full five-stream step of train.step
(forward + losses + double-backward saliency + Adam step) on a fixed batch of synthetic X-rays
(`--batch-size` images per stream, so 5 x batch images per step; data loading is not timed). The first
step is timed on its own: for a compiled variant, compile_s = first step - median step. Results
go to benchmarks/results/train_bench_<device>.json and .md with the date, machine and command.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import torch

from benchmarks import command_line, script
from mmtrt.bench.report import cpu_model, markdown_table
from mmtrt.data import synth_xray
from mmtrt.model import MultiMix
from train.config import TrainConfig
from train.step import TrainModule, compile_step, work_per_step

ROOT = Path(__file__).resolve().parents[1]

CPU_VARIANTS = ("eager-fp32", "eager-bf16", "compiled-fp32", "compiled-bf16")
CUDA_VARIANTS = ("eager-fp32", "compiled-fp32", "eager-bf16", "compiled-bf16", "eager-fp16", "compiled-fp16")


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            sm_count=p.multi_processor_count,
        )
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def make_batch(size: int, b: int, device: torch.device) -> dict[str, torch.Tensor]:
    def imgs(offset):
        arr = np.stack([synth_xray(offset + i, label=i % 2, size=size)[0] for i in range(b)])
        return torch.from_numpy(arr).float().div(255).unsqueeze(1).to(device)

    mask = np.stack([synth_xray(i, label=i % 2, size=size)[1] for i in range(b)])
    return {
        "seg_l_img": imgs(0),
        "seg_l_mask": torch.from_numpy(mask > 127).float().unsqueeze(1).to(device),
        "seg_u_img": imgs(100),
        "cls_l_img": imgs(200),
        "cls_l_y": torch.arange(b, device=device) % 2,
        "cls_w": imgs(300),
        "cls_s": imgs(300).flip(-1),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(name: str, args, device, batch) -> dict:
    mode, precision = name.split("-")
    cfg = TrainConfig(
        out="bench",
        image_size=args.size,
        batch_size=args.batch_size,
        precision=precision,
        amp_scope=args.amp_scope,
        device=device.type,
    )
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MultiMix().to(device).train()
    module = TrainModule(model, cfg)
    fn = compile_step(module, device) if mode == "compiled" else module
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = fn(batch)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    times, losses = [], []
    for i in range(1 + args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if i == 0:
            first = dt
        elif i > args.warmup:
            times.append(dt)
        print(f"  {name} step {i}: {dt:.3f} s loss {losses[-1]:.4f}", flush=True)
    med = statistics.median(times)
    images = 5 * args.batch_size
    res = {
        "variant": name,
        "first_step_s": first,
        "compile_s": (first - med) if mode == "compiled" else None,
        "median_step_s": med,
        "min_step_s": min(times),
        "steps_per_s": 1 / med,
        "images_per_s": images / med,
        "steps_timed": len(times),
        "losses_finite": bool(np.isfinite(losses).all()),
    }
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def to_markdown(report: dict) -> str:
    m, w = report["machine"], report["work"]
    lines = [
        f"# Training-step benchmark ({report['device']})",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {m.get('gpu', m.get('cpu', '?'))}; {m.get('cpu_count')} CPU cores "
        f"({m.get('cpu', '?')}); torch {m['torch']}; load average at start {m.get('load_average_at_start')}",
        f"- step: 5 streams x {report['batch']} images at {report['size']}x{report['size']} "
        f"= {w['images_per_step']} images; decoder on {w['decoder_images_per_step']}; "
        f"forward {w['forward_gflop_per_step']:.1f} GFLOP/step (reference pipeline, same images: "
        f"{w['reference_forward_gflop_per_step']:.1f}); amp scope {report['amp_scope']}",
        "",
    ]
    rows = []
    for r in report["results"]:
        if "error" in r:
            rows.append({"variant": r["variant"], "steps/s": f"failed: {r['error'][:80]}"})
            continue
        rows.append(
            {
                "variant": r["variant"],
                "steps/s": f"{r['steps_per_s']:.3f}",
                "images/s": f"{r['images_per_s']:.1f}",
                "median step (s)": f"{r['median_step_s']:.3f}",
                "first step (s)": f"{r['first_step_s']:.1f}",
                "compile (s)": f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-",
                "finite": r["losses_finite"],
            }
        )
    return "\n".join(lines) + "\n" + markdown_table(rows) + "\n"


@script(__doc__)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--size", type=click.IntRange(min=32), default=256, help="Image side (multiple of 32).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per stream [default: 10 on CUDA, 2 on CPU].",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Timed steps [default: 20 on CUDA, 3 on CPU]."
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help="Untimed steps after the first [default: 3 on CUDA, 1 on CPU].",
)
@click.option("--variants", default=None, help="Comma-separated subset of: " + ", ".join(CUDA_VARIANTS) + ".")
@click.option("--amp-scope", type=click.Choice(["full", "decoder"]), default="full")
@click.option(
    "--out", default=None, help="Results file stem [default: benchmarks/results/train_bench_<device>]."
)
@click.option("--no-write", is_flag=True, help="Print only.")
def main(**options) -> None:
    args = SimpleNamespace(**options)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    cuda = device.type == "cuda"
    args.batch_size = args.batch_size or (10 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    variants = args.variants.split(",") if args.variants else list(CUDA_VARIANTS if cuda else CPU_VARIANTS)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the trainer does on CPU
    batch = make_batch(args.size, args.batch_size, device)
    cfg = TrainConfig(out="bench", image_size=args.size, batch_size=args.batch_size)
    work = work_per_step(
        MultiMix().to(device), cfg, 2 * args.batch_size, 2 * args.batch_size, args.batch_size
    )
    args.machine = machine(device)  # (load average taken before the first variant)
    results = []
    gpu_tag = ""
    if cuda:
        gpu_tag = "_" + torch.cuda.get_device_name(device).replace("NVIDIA ", "").split()[0].lower()
    for v in variants:
        print(f"{v} ...", flush=True)
        try:
            results.append(run_variant(v, args, device, batch))
        except Exception as exc:  # noqa: BLE001 - report and go on with the other variants
            results.append({"variant": v, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            print(f"  {v} failed: {results[-1]['error']}", flush=True)
        write_report(args, dev, gpu_tag, device, work, results, final=False)  # after each variant
    if not write_report(args, dev, gpu_tag, device, work, results, final=True):
        raise SystemExit(1)  # a variant failed (reported above)


def write_report(args, dev, gpu_tag, device, work, results, final: bool) -> bool:
    """Write (and when ``final``, print) the report; whether every variant ran."""
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": dev + gpu_tag,
        "command": command_line(),
        "size": args.size,
        "batch": args.batch_size,
        "amp_scope": args.amp_scope,
        "machine": args.machine,
        "work": work,
        "results": results,
    }
    try:
        report["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        pass
    md = to_markdown(report)
    if final:
        print(md)
    if not args.no_write:
        stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_bench_{dev}{gpu_tag}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(md)
        if final:
            print(f"wrote {stem}.json and {stem}.md")
    return all("error" not in r for r in results)


if __name__ == "__main__":
    main()
