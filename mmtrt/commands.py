"""Small commands about checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from mmtrt.cli_options import seed_option


@click.command("init")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@seed_option("the random initialisation")
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


@click.command("import-weights")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def import_weights(src: Path, out: Path):
    """Write the mmtrt checkpoint OUT from the weights SRC: a state_dict of the published
    MultiMix code (also wrapped as {"state_dict": ...} or with DataParallel's "module."
    prefix) or of mmtrt's own MultiMix. Read with weights_only=True; every tensor is checked by
    name and shape, and nothing is written if any is missing, unexpected or misshaped. The
    published decoder.conv_last_saliency layer (unused by its forward pass) is dropped."""
    from mmtrt.weights import WeightsError
    from mmtrt.weights import import_weights as run

    try:
        report = run(src, out)
    except WeightsError as e:
        raise click.ClickException(str(e)) from None
    wrapped = f", unwrapped from {' and '.join(report.wrapped)}" if report.wrapped else ""
    click.echo(f"read {src}: {report.layout} layout{wrapped}")
    for name in report.dropped:
        click.echo(f"dropped {name}: not part of MultiMix's forward pass (unused in the published code too)")
    for line in report.converted_dtypes:
        click.echo(f"converted {line}")
    click.echo(f"wrote {out}: MultiMix, {report.parameters:,} parameters")
