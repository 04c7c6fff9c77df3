"""The six-model ablation (benchmarks/train_ablation.py) evaluated with `mmtrt evaluate` on
in-domain and cross-domain sources.

In-domain: a fresh test split of the default generator (the ablation trains on it), at the
ablation's difficulty. Cross-domain: the named sources `nih` (classification) and `montgomery`
(segmentation, left/right masks, 0.875 mm: distances in mm), see mmtrt/data/sources.py. One
`mmtrt evaluate` run per seed holds the six models side by side (report.html, metrics.json,
figures); then one table: mean +- std over seeds, each model only on the tasks it trains.

    python benchmarks/eval_ablation.py                       # train what is missing (slow), evaluate
    python benchmarks/eval_ablation.py --seeds 0 --reduced   # a reduced run (short training)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_ablation import MODELS, NAMES  # noqa: E402

CLS_MODELS = ("encoder", "encoder_ssl", "unet_mt", "mt_bridge", "multimix")
SEG_MODELS = ("unet", "unet_mt", "mt_bridge", "multimix")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_ablation"))
    p.add_argument("--difficulty", type=float, default=0.0, help="as the ablation's training data")
    p.add_argument("--n-cls", type=int, default=100, help="test images per classification source")
    p.add_argument("--n-seg", type=int, default=20, help="test pairs per segmentation source")
    p.add_argument("--reduced", action="store_true", help="train missing runs for 2 x 10 steps only")
    p.add_argument("--train", action="store_true", help="train missing runs (else skip them)")
    args = p.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    data = out / "data"
    py = [sys.executable]
    if not (data / "in" / "cls").is_dir():
        from mmtrt.data import write_synthetic_datasets
        from mmtrt.data.sources import write_source_dataset

        write_synthetic_datasets(
            data / "in",
            n_cls={"test": args.n_cls},
            n_seg={"test": args.n_seg},
            seed=9,
            difficulty=args.difficulty,
        )
        write_source_dataset(data / "nih", "nih", {"test": args.n_cls}, seed=9, difficulty=args.difficulty)
        write_source_dataset(
            data / "mcu", "montgomery", {"test": args.n_seg}, seed=9, difficulty=args.difficulty
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.train or args.reduced:
        extra = ["--epochs", "2", "--steps-per-epoch", "10"] if args.reduced else []
        subprocess.run(
            [
                *py,
                str(ROOT / "benchmarks" / "train_ablation.py"),
                "--seeds",
                args.seeds,
                "--runs",
                str(runs),
                *extra,
            ],
            check=True,
        )
    table: dict[str, list[dict]] = {m: [] for m in MODELS}
    for seed in seeds:
        ckpts = [(m, runs / f"{m}-s{seed}" / "best.pt") for m in MODELS]
        ckpts = [(m, c) for m, c in ckpts if c.is_file()]
        if not ckpts:
            continue
        dest = out / f"seed{seed}"
        cmd = [*py, "-m", "mmtrt.cli", "evaluate", *(str(c) for _, c in ckpts)]
        for m, _ in ckpts:
            cmd += ["--name", m]
        cmd += [
            "--cls-data", str(data / "in" / "cls"), "--seg-data", str(data / "in" / "seg"),
            "--cross-cls", str(data / "nih" / "cls"), "--cross-seg", str(data / "mcu" / "seg"),
            "--out", str(dest),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        res = json.loads((dest / "metrics.json").read_text())["results"]
        for m, _ in ckpts:
            table[m].append(res[m])
    lines = [
        "# Ablation, evaluated in- and cross-domain (`python benchmarks/eval_ablation.py`)",
        "",
        "In-domain: default generator test split; cross-domain: `nih` (classification) and `montgomery`"
        " (segmentation, distances in mm). Mean ± std over seeds; each model only on the tasks it trains.",
        "",
        "| model | n | acc in | acc cross | AUROC in | AUROC cross | Dice in | Dice cross | HD95 in (px) | HD95 cross (mm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def col(rows, dom, task, key, field):
        vals = [r[dom][task][key][field] for r in rows if task in r.get(dom, {})]
        return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "-"

    for m, rows in table.items():
        if not rows:
            continue
        c = m in CLS_MODELS
        s = m in SEG_MODELS
        cells = [
            col(rows, "in-domain", "classification", "accuracy", "value") if c else "-",
            col(rows, "cross-domain", "classification", "accuracy", "value") if c else "-",
            col(rows, "in-domain", "classification", "auroc", "value") if c else "-",
            col(rows, "cross-domain", "classification", "auroc", "value") if c else "-",
            col(rows, "in-domain", "segmentation", "dice", "mean") if s else "-",
            col(rows, "cross-domain", "segmentation", "dice", "mean") if s else "-",
            col(rows, "in-domain", "segmentation", "hd95", "mean") if s else "-",
            col(rows, "cross-domain", "segmentation", "hd95", "mean") if s else "-",
        ]
        lines.append(f"| {NAMES[m]} | {len(rows)} | " + " | ".join(cells) + " |")
    (out / "eval_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
