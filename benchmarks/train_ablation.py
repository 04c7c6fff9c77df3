"""Ablation of MultiMix on synthetic data at 10 segmentation / 100 classification labels.

    OMP_NUM_THREADS=1 python benchmarks/train_ablation.py     # the committed table (see its .md for timing)
    python benchmarks/train_ablation.py --seeds 0 --steps-per-epoch 5 --epochs 2   # a smoke run

Models (all trained by `train.trainer.train` with the same data, schedule and seeds; only the
loss weights and the bridge differ):

    unet          U-Net alone: Dice on labelled seg; decoder bridge gets zeros for the saliency
    encoder       encoder alone: CE on labelled cls
    encoder_ssl   encoder + SSL: CE + L_u (FixMatch weak/strong on unlabelled cls)
    unet_mt       U-Net multi-task: CE + Dice, no saliency bridge
    mt_bridge     multi-task + saliency bridge: CE + Dice, saliency into the decoder
    multimix      full MultiMix: CE + Dice + L_u + KL_seg, saliency bridge

Each run picks its best checkpoint on the validation split; the table reports that checkpoint's
metrics on the held-out test split, mean +- std over the seeds. Runs go to --runs (default
runs/ablation/), a run whose metrics.json exists is reused, and the table is written to
benchmarks/results/train_ablation.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.config import TrainConfig  # noqa: E402
from train.trainer import train  # noqa: E402

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
SEG_KEYS = ("dice", "jaccard", "ssim", "avg_hausdorff", "precision", "recall")


def fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    a = np.asarray(vals, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="images per stream")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=8)
    p.add_argument("--seg-labels", type=int, default=10)
    p.add_argument("--cls-labels", type=int, default=100)
    p.add_argument("--synth-cls", default="400,100,200")
    p.add_argument("--synth-seg", default="60,20,40")
    p.add_argument(
        "--difficulty",
        type=float,
        default=0.0,
        help="synthetic pneumonia subtlety; at 0.25 and 0.5 no classifier left chance level in this budget",
    )
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--synth-cache", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_ablation"))
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="train nothing: tabulate the runs that exist under --runs (the n column says how many)",
    )
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    started = time.time()
    rows: dict[str, list[dict]] = {m: [] for m in models}
    for seed in seeds:
        for m in models:
            out = Path(args.runs) / f"{m}-s{seed}"
            mfile = out / "metrics.json"
            if not mfile.is_file() and args.collect_only:
                continue
            if not mfile.is_file():
                cfg = TrainConfig(
                    out=str(out),
                    image_size=args.image_size,
                    batch=args.batch,
                    epochs=args.epochs,
                    steps_per_epoch=args.steps_per_epoch,
                    lr=args.lr,
                    lr_step=args.lr_step,
                    seg_labels=args.seg_labels,
                    cls_labels=args.cls_labels,
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
                t0 = time.time()
                train(cfg)
                print(f"{m} seed {seed}: {time.time() - t0:.0f} s", flush=True)
            res = json.loads(mfile.read_text())
            rows[m].append(
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
        "command": "python benchmarks/train_ablation.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("runs", "out", "synth_cache")},
        "wall_s_this_invocation": time.time() - started,
        "runs": rows,
    }
    lines = [
        "# MultiMix ablation on synthetic data (10 seg / 100 cls labels)",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command'].strip()}`",
        f"- settings: {json.dumps(report['settings'])}",
        "- metrics: test split, checkpoint chosen on validation; mean ± std over seeds " + str(seeds),
        "",
        "| model | n | " + " | ".join(CLS_KEYS + SEG_KEYS) + " | train s/run |",
        "|---|---|" + "---|" * (len(CLS_KEYS) + len(SEG_KEYS) + 1),
    ]
    for m in models:
        cells = [fmt([r["test"][k] for r in rows[m] if k in r["test"]]) for k in CLS_KEYS + SEG_KEYS]
        wall = np.mean([r["wall_s"] for r in rows[m]]) if rows[m] else float("nan")
        lines.append(f"| {NAMES[m]} | {len(rows[m])} | " + " | ".join(cells) + f" | {wall:.0f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    md_file = out.with_suffix(".md")
    # keep the hand-written findings (every "## " section) of the previous table
    if md_file.is_file() and "\n## " in md_file.read_text():
        md += "\n## " + md_file.read_text().split("\n## ", 1)[1]
    md_file.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
