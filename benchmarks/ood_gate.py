"""The image gate of an export (mmtrt/ood.py) on images it was not made for: its AUROC and
false-accept rate between the in-domain test split and real non-chest images that installed
packages ship (mmtrt.data.foreign: pydicom's test files, scikit-image's and matplotlib's sample
images), its false-reject rate on the in-domain test split, and the share of each cross-domain
chest source it rejects (a domain shift, reported, not a failure).

The scores are the export's own: its fp32 encoder graph in onnxruntime, as the served models
compute them, compared with the threshold its manifest records.

    bash scripts/demo.sh     # the main job: runs/demo/export, runs/demo/data/cls
    mmtrt synth runs/ood/nih --source nih --n-cls 100 --seed 1 --difficulty 0.0
    mmtrt synth runs/ood/montgomery --source montgomery --n-seg 50 --seed 1 --difficulty 0.0
    python -m benchmarks.ood_gate --export runs/demo/export --data runs/demo/data/cls \\
        --cross nih=runs/ood/nih/cls/test --cross montgomery=runs/ood/montgomery/seg/test/CXR_png
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from benchmarks import command_line, report_option, script
from benchmarks.goals import OOD_GATE

BATCH = 8


def _scores(run, images: np.ndarray) -> np.ndarray:
    out = [
        run({"image": images[i : i + BATCH]}, outputs=["ood_score"])["ood_score"]
        for i in range(0, len(images), BATCH)
    ]
    return np.concatenate(out).reshape(-1).astype(np.float64)


def _folder_images(folder: Path) -> np.ndarray:
    from mmtrt.data import IMAGE_EXTENSIONS, load_image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise click.BadParameter(f"{folder}: no images")
    return np.stack([load_image(p, 256)[None] for p in files])


def _figure(path: Path, groups: dict[str, np.ndarray], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    every = np.concatenate(list(groups.values()))
    bins = np.geomspace(max(every.min(), 1e-2) * 0.9, every.max() * 1.1, 50)
    for name, values in groups.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} ({len(values)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("out-of-distribution score (log scale; about 1 = a typical training image)")
    ax.set_ylabel("images")
    ax.set_title("The export's image gate: in-domain, cross-domain and non-chest images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@script(__doc__)
@click.option("--export", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The in-domain classification root; its test/ split is used.",
)
@click.option("--cross", multiple=True, help="NAME=FOLDER of cross-domain chest images (repeatable).")
@report_option("ood_gate", "OUT.json, OUT.md and OUT.png")
def main(export: Path, data: Path, cross: tuple[str, ...], out: Path):
    from sklearn.metrics import roc_auc_score

    from mmtrt.bench.report import environment, markdown_table
    from mmtrt.data import ClassificationFolder, foreign
    from mmtrt.runtimes import ort

    manifest = json.loads((export / "manifest.json").read_text())
    gate = manifest.get("ood")
    if not gate:
        raise click.UsageError(f"{export} has no image gate (export it again with this mmtrt)")
    threshold = float(gate["threshold"])
    run = ort.runner(export / manifest["graphs"]["encoder"]["file"])

    test = ClassificationFolder(data, "test", size=256)
    in_domain = _scores(run, np.stack([test[i][0].numpy() for i in range(len(test))]))
    images = foreign.collect()
    foreign_scores = _scores(run, np.stack([f.image for f in images]))
    crosses = {}
    for item in cross:
        name, _, folder = item.partition("=")
        crosses[name] = _scores(run, _folder_images(Path(folder)))

    y = np.r_[np.zeros(len(in_domain)), np.ones(len(foreign_scores))]
    auroc = float(roc_auc_score(y, np.r_[in_domain, foreign_scores]))
    false_accept = float(np.mean(foreign_scores <= threshold))
    false_reject = float(np.mean(in_domain > threshold))
    summary = {
        "auroc_non_chest": auroc,
        "false_accept_rate": false_accept,
        "in_domain_false_reject_rate": false_reject,
        "held_out_false_reject_rate": gate["held_out"]["false_reject_rate"],
        "threshold": threshold,
        "quantile": gate["quantile"],
        "in_domain_images": len(in_domain),
        "non_chest_images": len(images),
        "cross_domain_rejected": {name: float(np.mean(s > threshold)) for name, s in crosses.items()},
        "goal": OOD_GATE,
        "goal_met": auroc >= OOD_GATE["auroc"] and false_reject <= OOD_GATE["in_domain_false_reject"],
    }
    per_image = [
        {"image": f.name, "kind": f.kind, "score": round(float(s), 4), "refused": bool(s > threshold)}
        for f, s in sorted(zip(images, foreign_scores), key=lambda t: t[1])
    ]
    env = environment()
    report = {"command": command_line(), "environment": env, "export": str(export), "method": gate["method"],
              "summary": summary, "non_chest": per_image}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    _figure(
        out.with_suffix(".png"),
        {"in-domain test": in_domain, **crosses, "non-chest": foreign_scores},
        threshold,
    )
    rows = [
        {"images": "in-domain test", "n": len(in_domain), "median score": f"{np.median(in_domain):.3g}",
         "rejected": f"{false_reject:.1%}"},
        *({"images": f"cross-domain: {name}", "n": len(s), "median score": f"{np.median(s):.3g}",
           "rejected": f"{np.mean(s > threshold):.1%}"} for name, s in crosses.items()),
        {"images": "non-chest (packages)", "n": len(images), "median score": f"{np.median(foreign_scores):.3g}",
         "rejected": f"{1 - false_accept:.1%}"},
    ]  # fmt: skip
    lowest = markdown_table([{k: str(v) for k, v in r.items()} for r in per_image[:10]])
    out.with_suffix(".md").write_text(
        f"# The image gate on images it was not made for ({env['date']})\n\n"
        f"Command: `{command_line()}`  \nMachine: {env['cpu']}, {env['cpu_cores']} cores  \n"
        f"Export: `{export}` (threshold {threshold:.4g}: the {gate['quantile']} quantile of "
        f"{gate['held_out']['images']} held-out in-distribution images, "
        f"{gate['held_out']['false_reject_rate']:.1%} of which it rejects)  \nMethod: {gate['method']}\n\n"
        f"**AUROC (in-domain test vs non-chest) {auroc:.4f}; false-accept rate at the threshold "
        f"{false_accept:.1%}; in-domain false rejects {false_reject:.1%}** (goal: AUROC >= "
        f"{OOD_GATE['auroc']} at <= {OOD_GATE['in_domain_false_reject']:.0%} false rejects: "
        f"{'met' if summary['goal_met'] else 'NOT met'}).\n\n"
        + markdown_table(rows)
        + f"\n\n![scores]({out.with_suffix('.png').name})\n\nThe ten non-chest images closest to the "
        "chest X-rays (all of them, with their scores, in the JSON):\n\n" + lowest + "\n"
    )
    click.echo(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
