"""`mmtrt synth`: write the synthetic data sets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmtrt.cli_options import difficulty_option, seed_option


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-cls", default=200, help="Classification images per split (train/val/test).")
@click.option("--n-seg", default=40, help="Segmentation image/mask pairs per split.")
@seed_option("the images (the same seed writes the same files)")
@difficulty_option(0.5)
@click.option(
    "--source",
    type=click.Choice(["default", "kermany", "nih", "jsrt", "montgomery"]),
    default="default",
    help="default: both tasks, the generator as it is. A named source differs the way that data "
    "set does (anatomy, intensities, noise, borders, text, size, bit depth, layout; see "
    "mmtrt/data/sources.py) and writes one task: kermany/nih --n-cls classification images, "
    "jsrt/montgomery --n-seg segmentation pairs, plus OUT/source.json.",
)
def synth(out: Path, n_cls: int, n_seg: int, seed: int, difficulty: float, source: str):
    """Write synthetic chest X-rays in the real datasets' layouts under OUT:
    OUT/cls/{train,val,test}/{NORMAL,PNEUMONIA}/*.png (Kermany) and
    OUT/seg/{train,val,test}/{images,masks}/*.png (JSRT); with --source, one source's layout."""
    if source != "default":
        from mmtrt.data.sources import SOURCES, write_source_dataset

        n = n_cls if SOURCES[source].task == "cls" else n_seg
        summary = write_source_dataset(out, source, n, seed=seed, difficulty=difficulty)
        click.echo(json.dumps(summary, indent=2))
        return
    from mmtrt.data import write_synthetic_datasets

    summary = write_synthetic_datasets(out, n_cls=n_cls, n_seg=n_seg, seed=seed, difficulty=difficulty)
    click.echo(json.dumps(summary, indent=2))
