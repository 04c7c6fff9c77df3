"""`mmtrt synth`: write the synthetic data sets."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--n-cls", default=200, show_default=True, help="Classification images per split (train/val/test)."
)
@click.option("--n-seg", default=40, show_default=True, help="Segmentation image/mask pairs per split.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--difficulty",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="How subtle the pneumonia signal is: 0 obvious, 1 invisible.",
)
def synth(out: Path, n_cls: int, n_seg: int, seed: int, difficulty: float):
    """Write synthetic chest X-rays in the real datasets' layouts under OUT:
    OUT/cls/{train,val,test}/{NORMAL,PNEUMONIA}/*.png (Kermany) and
    OUT/seg/{train,val,test}/{images,masks}/*.png (JSRT)."""
    from mmtrt.data import write_synthetic_datasets

    summary = write_synthetic_datasets(out, n_cls=n_cls, n_seg=n_seg, seed=seed, difficulty=difficulty)
    click.echo(json.dumps(summary, indent=2))
