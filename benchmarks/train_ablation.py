"""Ablation of MultiMix: six models, at one or more label budgets, several seeds.

    python -m benchmarks.train_ablation --jobs 2     # the default generator, 10 seg / 100 cls labels
    python -m benchmarks.train_ablation --seeds 0 --steps-per-epoch 5 --epochs 2   # a smoke run
    python -m benchmarks.eval_ablation               # the committed study (sources, two budgets)

Models (all trained by `train.trainer.train` with the same data, schedule and seeds; only the
loss weights and the bridge differ):

    unet          U-Net alone: Dice on labelled seg; decoder bridge gets zeros for the saliency
    encoder       encoder alone: CE on labelled cls
    encoder_ssl   encoder + SSL: CE + L_u (FixMatch weak/strong on unlabelled cls)
    unet_mt       U-Net multi-task: CE + Dice, no saliency bridge
    mt_bridge     multi-task + saliency bridge: CE + Dice, saliency into the decoder
    multimix      full MultiMix: CE + Dice + L_u + KL_seg, saliency bridge

Each run picks its best checkpoint on the validation split; the table reports that checkpoint's
metrics on the held-out test split, mean +- std over the seeds. Runs go to
--runs/<model>-seg<S>-cls<C>-s<seed> (default runs/ablation/), a run whose metrics.json exists is
reused, and the table is written to --out.{json,md}. --jobs N trains N runs at once, one torch
thread each (longest first). On the synthetic generator at --difficulty 0.25 and 0.5, no
classifier left chance level in the default budget.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from benchmarks import command_line, script
from mmtrt.bench.report import cpu_model, markdown_table
from mmtrt.cli_options import difficulty_option
from mmtrt.runtimes.openvino import cpu_flags
from train.config import TrainConfig
from train.trainer import train

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "unet": dict(w_ce=0.0, w_u=0.0, w_kl=0.0, saliency_bridge=False),
    "encoder": dict(w_dice=0.0, w_u=0.0, w_kl=0.0),
    "encoder_ssl": dict(w_dice=0.0, w_kl=0.0),
    "unet_mt": dict(w_u=0.0, w_kl=0.0, saliency_bridge=False),
    "mt_bridge": dict(w_u=0.0, w_kl=0.0),
    "multimix": dict(),
}
NAMES = {
    "unet": "U-Net alone",
    "encoder": "Encoder alone",
    "encoder_ssl": "Encoder + SSL",
    "unet_mt": "U-Net multi-task",
    "mt_bridge": "Multi-task + saliency bridge",
    "multimix": "MultiMix (full)",
}
CLS_KEYS = ("accuracy", "f1_normal", "f1_pneumonia", "auroc")
SEG_KEYS = ("dice", "jaccard", "hd95", "assd", "precision", "recall")


def fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    a = np.asarray(vals, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0:.3f}"


def cpu_name() -> str:
    """The CPU's model name and its vector flags (the CPU changes between machines)."""
    vector = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    return f"{cpu_model()} ({' '.join(vector)})"


def parse_budgets(text: str) -> list[tuple[int, int]]:
    """'10:100,50:1000' -> [(10, 100), (50, 1000)] (segmentation labels : classification labels)."""
    out = []
    for item in text.split(","):
        seg, _, cls = item.partition(":")
        out.append((int(seg), int(cls)))
    return out


def run_dir(runs: Path, model: str, budget: tuple[int, int], seed: int) -> Path:
    return Path(runs) / f"{model}-seg{budget[0]}-cls{budget[1]}-s{seed}"


# relative cost of a step (measured at 64 px, 1 thread): longest first keeps --jobs busy to the end
COST = {"multimix": 4.0, "mt_bridge": 3.0, "encoder_ssl": 2.0, "unet_mt": 1.5, "unet": 1.0, "encoder": 0.8}


def _train_one(job: tuple[str, dict, str]) -> str:
    import torch

    _, cfg_kwargs, label = job
    torch.set_num_threads(1)
    t0 = time.time()
    train(TrainConfig(**cfg_kwargs))
    return f"{label}: {time.time() - t0:.0f} s"


#: the options that benchmarks.eval_ablation has too (and passes on to this script)
SEEDS_OPTION = click.option(
    "--seeds", default="0,1,2", help="Comma-separated: each model is trained once per seed and label budget."
)


def jobs_option(default: int):
    return click.option(
        "--jobs",
        type=click.IntRange(min=1),
        default=default,
        help="Training runs at once, one torch thread each.",
    )


@script(__doc__)
@SEEDS_OPTION
@click.option("--models", default=",".join(MODELS))
@click.option("--image-size", type=click.IntRange(min=32), default=64)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, help="Images per stream.")
@click.option("--epochs", type=click.IntRange(min=1), default=12)
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=25)
@click.option("--lr", type=float, default=1e-3)
@click.option("--lr-step", type=click.IntRange(min=1), default=8)
@click.option(
    "--budgets",
    default="10:100",
    help="Label budgets, seg:cls[,seg:cls...] (the papers': 10:100,50:1000).",
)
@click.option("--cls-data", default=None, help="Classification root (default: the synthetic generator).")
@click.option("--seg-data", default=None, help="Segmentation root (default: the synthetic generator).")
@jobs_option(1)
@click.option("--synth-cls", default="400,100,200")
@click.option("--synth-seg", default="60,20,40")
@difficulty_option(0.0)
@click.option("--runs", default=str(ROOT / "runs" / "ablation"))
@click.option("--synth-cache", default=None)
@click.option(
    "--out",
    default=str(ROOT / "runs" / "ablation" / "train_ablation"),
    help="Table: OUT.md, OUT.json.",
)
@click.option(
    "--collect-only",
    is_flag=True,
    help="Train nothing: tabulate the runs that exist under --runs (the n column says how many).",
)
def main(**settings) -> None:
    train_and_tabulate(settings, command_line())


def train_and_tabulate(settings: dict, command: str) -> None:
    """Train the runs of ``settings`` (the options of this script, by name) that have no
    metrics.json yet, then write the table; ``command``: how they were asked for."""
    args = SimpleNamespace(**settings)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    budgets = parse_budgets(args.budgets)
    started = time.time()
    jobs = []
    for budget in budgets:
        for seed in seeds:
            for m in models:
                out = run_dir(args.runs, m, budget, seed)
                if (out / "metrics.json").is_file() or args.collect_only:
                    continue
                cfg = dict(
                    out=str(out),
                    cls_data=args.cls_data,
                    seg_data=args.seg_data,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    epochs=args.epochs,
                    steps_per_epoch=args.steps_per_epoch,
                    lr=args.lr,
                    lr_step=args.lr_step,
                    seg_labels=budget[0],
                    cls_labels=budget[1],
                    synth_cls=args.synth_cls,
                    synth_seg=args.synth_seg,
                    synth_difficulty=args.difficulty,
                    synth_cache=args.synth_cache,
                    seed=seed,
                    compile="off",
                    progress="off",
                    ckpt_every=0,
                    log_every=25,
                    **MODELS[m],
                )
                jobs.append((m, cfg, f"{m} seg {budget[0]} cls {budget[1]} seed {seed}"))
    jobs.sort(key=lambda job: -COST[job[0]])
    if args.jobs > 1 and jobs:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for i, line in enumerate(pool.imap_unordered(_train_one, jobs), 1):
                click.echo(f"[{i}/{len(jobs)}] {line} ({time.time() - started:.0f} s so far)")
    else:
        for i, job in enumerate(jobs, 1):
            click.echo(f"[{i}/{len(jobs)}] {_train_one(job)}")
    rows: dict[str, list[dict]] = {f"{m}@{b[0]}:{b[1]}": [] for b in budgets for m in models}
    for budget in budgets:
        for seed in seeds:
            for m in models:
                mfile = run_dir(args.runs, m, budget, seed) / "metrics.json"
                if not mfile.is_file():
                    continue
                res = json.loads(mfile.read_text())
                rows[f"{m}@{budget[0]}:{budget[1]}"].append(
                    {
                        "seed": seed,
                        "test": res["test"] or {},
                        "val": (res["best"] or {}).get("val", {}),
                        "best_epoch": (res["best"] or {}).get("epoch"),
                        "images_per_s": res["timing"]["images_per_s"],
                        "wall_s": res["timing"]["wall_s"],
                    }
                )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count()},
        "settings": {k: v for k, v in settings.items() if k not in ("runs", "out", "synth_cache")},
        "wall_s_this_invocation": time.time() - started,
        "runs": rows,
    }
    lines = [
        "# MultiMix ablation (test split of the training data)",
        "",
        f"- date: {report['date']}; machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores",
        f"- command: `{report['command'].strip()}`",
        f"- settings: {json.dumps(report['settings'])}",
        "- metrics: test split, checkpoint chosen on validation; mean ± std over seeds " + str(seeds),
        "",
    ]
    table = []
    for key, runs in rows.items():
        m, budget = key.split("@")
        wall = np.mean([r["wall_s"] for r in runs]) if runs else float("nan")
        table.append(
            {
                "model": NAMES[m],
                "labels seg:cls": budget,
                "n": len(runs),
                **{k: fmt([r["test"][k] for r in runs if k in r["test"]]) for k in CLS_KEYS + SEG_KEYS},
                "train s/run": f"{wall:.0f}",
            }
        )
    lines.append(markdown_table(table))
    md = "\n".join(lines) + "\n"
    click.echo(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md_file = out.with_suffix(".md")
    # keep the hand-written findings (every "## " section) of the previous table
    if md_file.is_file() and "\n## " in md_file.read_text():
        md += "\n## " + md_file.read_text().split("\n## ", 1)[1]
    md_file.write_text(md)


if __name__ == "__main__":
    main()
