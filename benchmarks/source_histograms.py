"""The synthetic sources side by side: one example per source (with its lung-mask contour) and
their intensity histograms as the loaders see them (mmtrt.data.load_image: [0, 1], 256 x 256).

    python -m benchmarks.source_histograms [--n 24] [--out benchmarks/results/sources.png]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np

from benchmarks import script
from mmtrt.cli_options import difficulty_option


@script(__doc__)
@click.option("--n", type=click.IntRange(min=2), default=24, help="Images per source.")
@difficulty_option(0.3)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("benchmarks/results/sources.png"),
)
def main(n: int, difficulty: float, out: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmtrt.data import ClassificationFolder, SegmentationPairs, write_synthetic_datasets
    from mmtrt.data.sources import SOURCES, write_source_dataset

    names = ["default", *SOURCES]
    examples, hists = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            root = Path(tmp) / name
            if name == "default":
                write_synthetic_datasets(root, n_cls={"test": 0}, n_seg={"test": n}, difficulty=difficulty)
                task = "seg"
            else:
                write_source_dataset(root, name, {"test": n}, difficulty=difficulty)
                task = SOURCES[name].task
            ds = (
                SegmentationPairs(root / "seg", "test")
                if task == "seg"
                else ClassificationFolder(root / "cls", "test")
            )
            pix = np.concatenate([ds[i][0].numpy().ravel() for i in range(len(ds))])
            hists[name] = np.histogram(pix, bins=64, range=(0, 1))[0]
            img, tgt = ds[1]
            examples[name] = (
                img.numpy()[0],
                tgt.numpy()[0] > 0.5 if task == "seg" else None,
                ds.paths[1].suffix,
            )
    fig = plt.figure(figsize=(3 * len(names), 6.4))
    for k, name in enumerate(names):
        ax = fig.add_subplot(2, len(names), k + 1)
        img, mask, ext = examples[name]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        spec = SOURCES.get(name)
        sub = "generator default" if spec is None else f"{spec.population}, {spec.fmt}"
        ax.set_title(f"{name}\n{sub}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(2, 1, 2)
    edges = np.linspace(0, 1, 65)
    for name, h in hists.items():
        ax.plot((edges[:-1] + edges[1:]) / 2, h / h.sum() * 64, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("pixel intensity after load_image")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"Intensity histograms ({n} test images per source, difficulty {difficulty})")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
