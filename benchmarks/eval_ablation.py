"""The ablation study as the papers report it: six models, two label budgets, three seeds, trained
on Kermany-style classification + JSRT-style segmentation sources and evaluated with `mmtrt
evaluate` in-domain (their test splits) and cross-domain (NIH-style classification,
Montgomery-style segmentation with left/right masks).

    python -m benchmarks.eval_ablation            # data, training (~1 h on 2 cores), evaluation, figures
    python -m benchmarks.eval_ablation --smoke    # the same pipeline with 2 x 5 steps
    python -m benchmarks.eval_ablation --difficulty 0.5 --budgets 10:100   # subtler pneumonia, one budget

Writes, under --out (default benchmarks/results/ablation/):
    train.{md,json}                       each run's test-split metrics (benchmarks.train_ablation)
    seg<S>-cls<C>/seed<k>/                one `mmtrt evaluate` run of the six models (metrics.json,
                                          summary.csv, per_image.csv); seed 0 also its boundary panels
                                          and Dice box plot, and the first budget's seed 0 its
                                          report.html (~5 MB each: the full runs stay in
                                          <runs>/evaluate/)
    ablation.{md,json}                    the table: mean +- std over seeds, each model on its tasks
    dice_boxplot.png, classification.png  per-image Dice pooled over seeds; accuracy / AUROC per seed
    report_screenshot.png                 the first budget's seed-0 report in headless Chromium

The recipe (why these sizes): 64 x 64 images, 4 images per stream, 16 epochs x 50 steps (Adam
1e-3, x0.1 after 12 epochs): 36 runs then fit about an hour on a 2-core CPU, two runs at a time,
one thread each. The data are the named sources of mmtrt/data/sources.py at difficulty 0.0: at
0.5 no classifier leaves chance level in this step budget (benchmarks/results/ablation-d0.5/).
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import numpy as np

from benchmarks import command_line, script, train_ablation
from benchmarks.train_ablation import MODELS, NAMES
from mmtrt.bench.report import markdown_table
from mmtrt.cli_options import difficulty_option

ROOT = Path(__file__).resolve().parents[1]

BUDGETS = "10:100,50:1000"  # segmentation labels : classification labels (the papers')
DATA = {  # source -> images per split; one fixed seed, so every model sees the same images
    "kermany": {"train": 1500, "val": 100, "test": 200},
    "jsrt": {"train": 100, "val": 20, "test": 40},
    "nih": {"test": 200},
    "montgomery": {"test": 40},
}
DATA_SEED = 9
TRAIN = ["--image-size", "64", "--batch-size", "4", "--epochs", "16", "--steps-per-epoch", "50", "--lr", "1e-3",
         "--lr-step", "12"]  # fmt: skip
SMOKE = ["--image-size", "64", "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "5"]
CLS_MODELS = ("encoder", "encoder_ssl", "unet_mt", "mt_bridge", "multimix")
SEG_MODELS = ("unet", "unet_mt", "mt_bridge", "multimix")
DOMAINS = ("in-domain", "cross-domain")


def write_data(root: Path, difficulty: float) -> None:
    from mmtrt.data.sources import write_source_dataset

    for source, counts in DATA.items():
        if not (root / source / "source.json").is_file():
            write_source_dataset(root / source, source, counts, seed=DATA_SEED, difficulty=difficulty)


def evaluate(runs: Path, data: Path, budget: str, seed: int, dest: Path) -> dict | None:
    ckpts = [
        (m, train_ablation.run_dir(runs, m, train_ablation.parse_budgets(budget)[0], seed) / "best.pt")
        for m in MODELS
    ]
    ckpts = [(m, c) for m, c in ckpts if c.is_file()]
    if not ckpts:
        return None
    if not (dest / "metrics.json").is_file():
        from mmtrt.cli import main as mmtrt

        cmd = ["evaluate", *(str(c) for _, c in ckpts)]
        for m, _ in ckpts:
            cmd += ["--name", m]
        cmd += [
            "--cls-data", str(data / "kermany" / "cls"), "--seg-data", str(data / "jsrt" / "seg"),
            "--cross-cls", str(data / "nih" / "cls"), "--cross-seg", str(data / "montgomery" / "seg"),
            "--out", str(dest),
        ]  # fmt: skip
        mmtrt(cmd, standalone_mode=False)
    return json.loads((dest / "metrics.json").read_text())


def publish(src: Path, dest: Path, figures: bool, report: bool) -> None:
    """Copy the part of an evaluate run that is committed (the rest stays under --runs)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "summary.csv", "per_image.csv") + (("report.html",) if report else ()):
        shutil.copy2(src / name, dest / name)
    if figures:
        (dest / "figures").mkdir(exist_ok=True)
        for png in ("dice_boxplot.png", "boundaries_in-domain.png", "boundaries_cross-domain.png"):
            shutil.copy2(src / "figures" / png, dest / "figures" / png)


def per_image_dice(folder: Path) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    with open(folder / "per_image.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["task"] == "segmentation":
                out.setdefault((row["model"], row["domain"]), []).append(float(row["dice"]))
    return out


def value(res: dict, model: str, domain: str, task: str, key: str) -> float | None:
    block = res["results"].get(model, {}).get(domain, {}).get(task)
    if not block or key not in block:
        return None
    v = block[key]
    return v.get("value", v.get("mean"))


def mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.3f}"


def table(evals: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    any_res = next(r for per in evals.values() for r in per.values())
    unit = {d: any_res["domains"][d]["distance_unit"] for d in DOMAINS if d in any_res["domains"]}
    headers = {  # (metric, domain) -> column
        **{
            (k, d): f"{label} {d.split('-')[0]}"
            for k, label in (("accuracy", "acc"), ("auroc", "AUROC"), ("dice", "Dice"))
            for d in DOMAINS
        },
        **{("hd95", d): f"HD95 {d.split('-')[0]} ({unit.get(d, 'px')})" for d in DOMAINS},
    }
    table_rows, data = [], {}
    for budget, per_seed in evals.items():
        for m in MODELS:
            rows = [r for r in per_seed.values() if m in r["results"]]
            if not rows:
                continue
            row, rec = {"model": NAMES[m], "labels seg:cls": budget, "seeds": len(rows)}, {}
            for task, key, models in (
                ("classification", "accuracy", CLS_MODELS),
                ("classification", "auroc", CLS_MODELS),
                ("segmentation", "dice", SEG_MODELS),
                ("segmentation", "hd95", SEG_MODELS),
            ):
                for dom in DOMAINS:
                    vals = [value(r, m, dom, task, key) for r in rows] if m in models else []
                    rec[f"{key} {dom}"] = vals
                    row[headers[key, dom]] = mean_std(vals)
            data[f"{m}@{budget}"] = rec
            table_rows.append(row)
    return markdown_table(table_rows), data


def paired(data: dict, a: str, b: str, budget: str, key: str) -> str:
    """a - b per seed (same seed = same labelled subset and initial weights)."""
    va, vb = data.get(f"{a}@{budget}", {}).get(key), data.get(f"{b}@{budget}", {}).get(key)
    if not va or not vb:
        return "-"
    d = [x - y for x, y in zip(va, vb) if x is not None and y is not None]
    return f"{np.mean(d):+.3f} (per seed {', '.join(f'{x:+.3f}' for x in d)})"


def figures(out: Path, evals: dict[str, dict[int, dict]], folders: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.cm.tab10.colors
    budgets = list(evals)
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.2), squeeze=False, sharey=True)
    for ax, budget in zip(axes[0], budgets):
        pooled: dict[tuple[str, str], list[float]] = {}
        for folder in folders[budget].values():
            for k, v in per_image_dice(folder).items():
                pooled.setdefault(k, []).extend(v)
        for j, dom in enumerate(DOMAINS):
            data = [pooled.get((m, dom), []) for m in SEG_MODELS]
            pos = [i + (j - 0.5) * 0.38 for i in range(len(SEG_MODELS))]
            bp = ax.boxplot(data, positions=pos, widths=0.34, patch_artist=True, showfliers=True)
            for box in bp["boxes"]:
                box.set_facecolor(colours[j])
                box.set_alpha(0.6)
            ax.plot([], [], "s", color=colours[j], alpha=0.6, label=dom)
        ax.set_xticks(range(len(SEG_MODELS)))
        ax.set_xticklabels([NAMES[m] for m in SEG_MODELS], rotation=15, ha="right", fontsize=8)
        seg, cls = budget.split(":")
        ax.set_title(f"{seg} segmentation labels (images of all seeds pooled)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Dice per image")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dice_boxplot.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(budgets), figsize=(6.5 * len(budgets), 6.5), squeeze=False, sharey="row")
    for col, budget in enumerate(budgets):
        for row, key in enumerate(("accuracy", "auroc")):
            ax = axes[row][col]
            for j, dom in enumerate(DOMAINS):
                for i, m in enumerate(CLS_MODELS):
                    vals = [value(r, m, dom, "classification", key) for r in evals[budget].values()]
                    vals = [v for v in vals if v is not None]
                    x = i + (j - 0.5) * 0.3
                    ax.scatter([x] * len(vals), vals, color=colours[j], s=18, alpha=0.8)
                    if vals:
                        ax.hlines(np.mean(vals), x - 0.12, x + 0.12, color=colours[j])
                ax.plot([], [], "o", color=colours[j], label=dom)
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_xticks(range(len(CLS_MODELS)))
            ax.set_xticklabels(
                [NAMES[m] for m in CLS_MODELS] if row else [], rotation=15, ha="right", fontsize=8
            )
            ax.set_ylabel(key if col == 0 else "")
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(f"{budget.split(':')[1]} classification labels (dots: seeds, bar: mean)")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "classification.png", dpi=110)
    plt.close(fig)


def screenshot(report: Path, png: Path) -> str:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    if browser is None:
        return "no chromium on PATH: no screenshot"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", "--window-size=1280,2400", report.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return f"wrote {png}"


@script(__doc__)
@train_ablation.SEEDS_OPTION
@click.option("--budgets", default=BUDGETS, help="Label budgets seg:cls[,seg:cls]; the first is the low one.")
@difficulty_option(0.0)
@click.option("--runs", default=None, help="Training runs [runs/ablation(-d<difficulty>|-smoke)].")
@click.option("--data", default=None, help="The sources, written if missing [<runs>/data].")
@click.option(
    "--out",
    default=None,
    help="Results [benchmarks/results/ablation(-d<difficulty>), --smoke: <runs>/results].",
)
@train_ablation.jobs_option(2)
@click.option("--smoke", is_flag=True, help="2 x 5 training steps: checks the pipeline, not the models.")
def main(
    seeds: str,
    budgets: str,
    difficulty: float,
    runs: str | None,
    data: str | None,
    out: str | None,
    jobs: int,
    smoke: bool,
) -> None:
    name = "ablation" + (f"-d{difficulty:g}" if difficulty else "")
    runs = Path(runs or ROOT / "runs" / ("ablation-smoke" if smoke else name))
    out = Path(out or (runs / "results" if smoke else ROOT / "benchmarks" / "results" / name))
    data = Path(data or runs / "data")
    write_data(data, difficulty)
    budget_list = budgets.split(",")
    out.mkdir(parents=True, exist_ok=True)
    train_args = [
        "--seeds", seeds, "--budgets", budgets, *(SMOKE if smoke else TRAIN), "--jobs", str(jobs),
        "--cls-data", str(data / "kermany" / "cls"), "--seg-data", str(data / "jsrt" / "seg"),
        "--runs", str(runs), "--out", str(out / "train"),
    ]  # fmt: skip
    with train_ablation.main.make_context("train_ablation", train_args) as ctx:  # the script's defaults
        train_ablation.train_and_tabulate(
            ctx.params, shlex.join(["python", "-m", "benchmarks.train_ablation", *train_args])
        )
    seed_list = [int(s) for s in seeds.split(",")]
    evals: dict[str, dict[int, dict]] = {}
    folders: dict[str, dict[int, Path]] = {}
    for i, budget in enumerate(budget_list):
        for seed in seed_list:
            where = Path(f"seg{budget.replace(':', '-cls')}") / f"seed{seed}"
            res = evaluate(runs, data, budget, seed, runs / "evaluate" / where)
            if res is not None:
                publish(
                    runs / "evaluate" / where,
                    out / where,
                    seed == seed_list[0],
                    i == 0 and seed == seed_list[0],
                )
                evals.setdefault(budget, {})[seed] = res
                folders.setdefault(budget, {})[seed] = out / where
    results_table, cells = table(evals)
    figures(out, evals, folders)
    first = next(iter(folders.values()))[seed_list[0]]
    click.echo(screenshot(first / "report.html", out / "report_screenshot.png"))
    (seg_lo, cls_lo), (seg_hi, cls_hi) = (tuple(b.split(":")) for b in (budget_list[0], budget_list[-1]))
    claims = [
        (f"bridge lifts Dice at {seg_lo} labels (multi-task + bridge - multi-task)", "mt_bridge", "unet_mt", budget_list[0], "dice in-domain"),
        ("... and against the U-Net alone", "mt_bridge", "unet", budget_list[0], "dice in-domain"),
        (f"MultiMix - U-Net alone, Dice at {seg_lo} labels", "multimix", "unet", budget_list[0], "dice in-domain"),
        (f"SSL lifts accuracy at {cls_lo} labels (encoder + SSL - encoder)", "encoder_ssl", "encoder", budget_list[0], "accuracy in-domain"),
        ("... AUROC", "encoder_ssl", "encoder", budget_list[0], "auroc in-domain"),
    ]  # fmt: skip
    for budget, (seg, cls) in dict.fromkeys(
        [(budget_list[0], (seg_lo, cls_lo)), (budget_list[-1], (seg_hi, cls_hi))]
    ):
        claims += [
            (f"MultiMix - encoder, cross-domain accuracy, {cls} labels", "multimix", "encoder", budget, "accuracy cross-domain"),
            (f"MultiMix - U-Net alone, cross-domain Dice, {seg} labels", "multimix", "unet", budget, "dice cross-domain"),
        ]  # fmt: skip
    md = [
        "# Ablation: six models, two label budgets, in- and cross-domain",
        "",
        f"- command: `{command_line()}`",
        f"- sources at difficulty {difficulty:g} (seed {DATA_SEED}): "
        + ", ".join(f"{src} {counts}" for src, counts in DATA.items()),
        "- training: see train.md (settings, machine, each run's time); evaluation: `mmtrt evaluate` per budget"
        " and seed (seg*-cls*/seed*/report.html)",
        "- in-domain: Kermany-style (classification) and JSRT-style (segmentation) test splits; cross-domain:"
        " NIH-style and Montgomery-style; each model only on the tasks it trains; mean ± std over seeds",
        "",
        results_table,
        "",
        "## Paired differences (same seed: same labelled subset, same initial weights)",
        "",
        markdown_table(
            [
                {"claim": c, "difference, mean over seeds": paired(cells, a, b, bud, key)}
                for c, a, b, bud, key in claims
            ]
        ),
        "",
    ]
    (out / "ablation.json").write_text(json.dumps(cells, indent=2) + "\n")
    md_file = out / "ablation.md"
    text = "\n".join(md)
    # keep the hand-written findings (the "## Findings" section and after) of an earlier table
    if md_file.is_file() and "\n## Findings" in md_file.read_text():
        text += "\n## Findings" + md_file.read_text().split("\n## Findings", 1)[1]
    md_file.write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
