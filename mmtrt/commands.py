"""Small commands about checkpoints."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("init")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
def init_checkpoint(checkpoint: Path, seed: int):
    """Write a randomly initialised MultiMix CHECKPOINT (for trying export and serving before
    training; its predictions mean nothing)."""
    import torch

    from mmtrt.checkpoint import save_checkpoint
    from mmtrt.model import MultiMix, count_parameters

    torch.manual_seed(seed)
    model = MultiMix()
    save_checkpoint(checkpoint, model, meta={"origin": "random initialisation", "seed": seed})
    click.echo(
        f"wrote {checkpoint}: MultiMix, {count_parameters(model):,} parameters, random weights (seed {seed})"
    )
