"""The figures of `mmtrt evaluate` (matplotlib, Agg, PNG): per-image Dice box plots, boundary
visualisations, ROC curves, confusion matrices, reliability diagrams, a saliency gallery, the
sources' intensity histograms. Each function returns the paths it wrote; :func:`make_all` returns
``[(title, path), ...]`` in report order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmtrt.files import atomic_write
from mmtrt.metrics import ECE_BINS

DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI, bbox_inches="tight"))
    _plt().close(fig)
    return path


def dice_boxplot(path: Path, collected: dict) -> Path | None:
    plt = _plt()
    models = list(collected)
    domains = list(dict.fromkeys(d for per in collected.values() for d, c in per.items() if c.seg_metrics))
    if not domains:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(models) * len(domains)), 4))
    width = 0.8 / len(domains)
    colours = plt.cm.tab10.colors
    for j, dom in enumerate(domains):
        data, pos = [], []
        for i, m in enumerate(models):
            c = collected[m].get(dom)
            if c is not None and c.seg_metrics:
                data.append([r["dice"] for r in c.seg_metrics])
                pos.append(i + (j - (len(domains) - 1) / 2) * width)
        bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=True)
        for b in bp["boxes"]:
            b.set_facecolor(colours[j % 10])
            b.set_alpha(0.6)
        ax.plot([], [], "s", color=colours[j % 10], alpha=0.6, label=dom)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=15, ha="right")
    ax.set_ylabel("Dice per image")
    ax.set_title("Segmentation: Dice per image, by model and domain")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def boundaries(path: Path, collected: dict, domain: str) -> Path | None:
    """Rows = the same gallery images for every model; columns = models. Green = ground truth
    contour, red = predicted."""
    plt = _plt()
    models = [m for m in collected if collected[m].get(domain) and collected[m][domain].gallery_seg]
    if not models:
        return None
    # the images every model answered (one its image gate refused has no entry)
    idx = sorted(set.intersection(*(set(collected[m][domain].gallery_seg) for m in models)))
    if not idx:
        return None
    fig, axes = plt.subplots(
        len(idx), len(models), figsize=(2.6 * len(models), 2.6 * len(idx)), squeeze=False
    )
    for r, i in enumerate(idx):
        for col, m in enumerate(models):
            c = collected[m][domain]
            g = c.gallery_seg[i]
            ax = axes[r][col]
            ax.imshow(g["image"], cmap="gray", vmin=0, vmax=1)
            for mask, colour in ((g["target"], "lime"), (g["pred"], "red")):
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            dice = g["dice"]
            if r == 0:
                ax.set_title(f"{m}\nDice {dice:.3f}", fontsize=8)
            else:
                ax.set_title(f"Dice {dice:.3f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(Path(g["file"]).name, fontsize=7)
    fig.suptitle(f"{domain}: ground truth (green) vs prediction (red)", fontsize=10)
    return _save(fig, path)


def roc(path: Path, results: dict) -> Path | None:
    plt = _plt()
    curves = [
        (m, d, r["classification"])
        for m, per in results["results"].items()
        for d, r in per.items()
        if "classification" in r
    ]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    styles = dict(zip(dict.fromkeys(d for _, d, _ in curves), ("-", "--", ":", "-.")))
    for m, d, c in curves:
        models = list(results["results"])
        colour = plt.cm.tab10.colors[models.index(m) % 10]
        auc = c["auroc"]["value"]
        ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], styles[d], color=colour, label=f"{m} | {d} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, alpha=0.6)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (PNEUMONIA)")
    ax.set_title("ROC curves")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_aspect("equal")
    return _save(fig, path)


def confusions(path: Path, results: dict) -> Path | None:
    plt = _plt()
    cells = [
        (m, d, np.array(r["classification"]["confusion"]))
        for m, per in results["results"].items()
        for d, r in per.items()
        if "classification" in r
    ]
    if not cells:
        return None
    models = list(dict.fromkeys(m for m, _, _ in cells))
    domains = list(dict.fromkeys(d for _, d, _ in cells))
    fig, axes = plt.subplots(
        len(domains), len(models), figsize=(2.8 * len(models), 2.6 * len(domains)), squeeze=False
    )
    for m, d, cm in cells:
        ax = axes[domains.index(d)][models.index(m)]
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.sum(1).max()))
        for (a, b), v in np.ndenumerate(cm):
            ax.text(b, a, str(v), ha="center", va="center", fontsize=11,
                    color="white" if v > 0.6 * cm.sum(1).max() else "black")  # fmt: skip
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["NORMAL", "PNEUM."], fontsize=7)
        ax.set_yticks([0, 1])
        ax.set_yticklabels(["NORMAL", "PNEUM."], fontsize=7)
        ax.set_title(f"{m} | {d}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in axes.flat:
        if not ax.images:
            ax.axis("off")
    return _save(fig, path)


def reliability(path: Path, results: dict, domain: str) -> Path | None:
    """The reliability diagram of P(PNEUMONIA) on ``domain``, one line per model (dashed: before
    the temperature evaluate applied): each bin's fraction of PNEUMONIA images against its mean
    predicted probability (the diagonal is perfect calibration), with the images per bin below."""
    plt = _plt()
    models = list(results["results"])
    curves = [
        (m, results["results"][m][domain]["classification"])
        for m in models
        if "classification" in results["results"][m].get(domain, {})
    ]
    if not curves:
        return None
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, alpha=0.6, label="perfect calibration")
    width = 0.8 / (ECE_BINS * len(curves))  # the models' bars side by side
    for k, (m, c) in enumerate(curves):
        colour = plt.cm.tab10.colors[models.index(m) % 10]
        r = c["reliability"]
        ece = c["ece"]["value"]
        ax.plot(r["mean_predicted"], r["fraction_positive"], "o-", color=colour, ms=4,
                label=f"{m} (ECE {ece:.3f})")  # fmt: skip
        if "reliability_uncalibrated" in c:  # before the temperature
            u = c["reliability_uncalibrated"]
            ax.plot(u["mean_predicted"], u["fraction_positive"], "x--", color=colour, ms=4, alpha=0.6,
                    label=f"{m}, uncalibrated (ECE {c['ece_uncalibrated']['value']:.3f})")  # fmt: skip
        x = np.asarray(r["mean_predicted"]) + (k - (len(curves) - 1) / 2) * width
        bars.bar(x, r["count"], width=width, color=colour, alpha=0.6)
    ax.set_ylabel("fraction PNEUMONIA")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{domain}: reliability of P(PNEUMONIA)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    bars.set_xlabel("mean predicted P(PNEUMONIA) in the bin")
    bars.set_ylabel("images")
    bars.grid(alpha=0.3)
    return _save(fig, path)


def saliency_gallery(path: Path, collected: dict, domain: str) -> Path | None:
    """Rows = classification gallery images (NORMAL and PNEUMONIA), columns = the image, then
    each model's saliency over it (each map scaled to its own 99th percentile)."""
    plt = _plt()
    models = [m for m in collected if collected[m].get(domain) and collected[m][domain].gallery_cls]
    if not models:
        return None
    first = collected[models[0]][domain]
    idx = sorted(set.intersection(*(set(collected[m][domain].gallery_cls) for m in models)))
    if not idx:
        return None
    fig, axes = plt.subplots(
        len(idx), len(models) + 1, figsize=(2.4 * (len(models) + 1), 2.4 * len(idx)), squeeze=False
    )
    names = ("NORMAL", "PNEUMONIA")
    for r, i in enumerate(idx):
        img = first.gallery_cls[i]["image"]
        ax = axes[r][0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{names[first.gallery_cls[i]['label']]} (true)", fontsize=8)
        ax.set_ylabel(Path(first.gallery_cls[i]["file"]).name, fontsize=7)
        for col, m in enumerate(models, start=1):
            g = collected[m][domain].gallery_cls[i]
            s = g["saliency"]
            top = float(np.percentile(s, 99)) or 1.0
            ax = axes[r][col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.clip(s / top, 0, 1), cmap="inferno", alpha=0.55)
            ax.set_title(f"{m}\nP(PNEUMONIA) {g['probs'][1]:.2f}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{domain}: saliency |d logit / d image| of the predicted class", fontsize=10)
    return _save(fig, path)


def intensity_histograms(path: Path, hist: dict) -> Path | None:
    plt = _plt()
    if not hist:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    edges = np.linspace(0, 1, len(next(iter(hist.values()))) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    for name, counts in hist.items():
        dens = counts / max(1.0, counts.sum()) / (edges[1] - edges[0])
        ax.plot(centres, dens, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("pixel intensity (after mmtrt.data.load_image, [0, 1])")
    ax.set_ylabel("density")
    ax.set_title("Intensity histograms of the sources (test split)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def make_all(folder: Path, results: dict, collected: dict, hist: dict) -> list[tuple[str, Path]]:
    folder = Path(folder)
    domains = list(results["domains"])
    figs: list[tuple[str, Path | None]] = [
        ("Dice per image", dice_boxplot(folder / "dice_boxplot.png", collected))
    ]
    for d in domains:
        slug = d.replace(" ", "_")
        figs.append((f"Boundaries, {d}", boundaries(folder / f"boundaries_{slug}.png", collected, d)))
    figs.append(("ROC curves", roc(folder / "roc.png", results)))
    figs.append(("Confusion matrices", confusions(folder / "confusion.png", results)))
    for d in domains:
        slug = d.replace(" ", "_")
        figs.append((f"Reliability, {d}", reliability(folder / f"reliability_{slug}.png", results, d)))
    for d in domains:
        slug = d.replace(" ", "_")
        figs.append(
            (f"Saliency gallery, {d}", saliency_gallery(folder / f"saliency_{slug}.png", collected, d))
        )
    figs.append(("Intensity histograms", intensity_histograms(folder / "intensity_histograms.png", hist)))
    return [(t, p) for t, p in figs if p is not None]
