"""`mmtrt train` and `python -m train`: one click command generated from :class:`TrainConfig`.

Every field of the dataclass becomes an option with its help text, type, choices and default,
so the two entry points cannot drift apart and a new field cannot be added without its help.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import click

from mmtrt.cli import CONTEXT_SETTINGS

from .config import TrainConfig

PROG = "python -m train"
DESCRIPTION = (
    "Train MultiMix (joint chest X-ray classification + lung segmentation with a saliency "
    "bridge) from few labels. Five streams per step: labelled seg, unlabelled seg, labelled "
    "cls, weak + strong views of the same unlabelled cls images. Loss = w_ce CE + w_dice Dice "
    "+ w_u L_u + w_kl KL_seg. Without --cls-data/--seg-data it trains on synthetic data. "
    "Scale-out: torchrun --nproc-per-node N -m train ... (NCCL on GPUs, gloo on CPU)."
)
_TYPES = {"int": int, "float": float, "str": str, "str | None": str}


def _option(f: dataclasses.Field):
    meta = dict(f.metadata)
    help_text = meta.pop("help", None)
    if not help_text:
        raise AssertionError(f"TrainConfig.{f.name} has no help text")
    flag = "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": help_text}
    if meta.pop("required", False):
        kwargs["required"] = True
    negatable = meta.pop("negatable", False)
    if f.type in ("bool", bool):
        if negatable or f.default:
            return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=f.default, **kwargs)
        return click.option(flag, f.name, is_flag=True, default=False, **kwargs)
    kind = click.Choice(meta.pop("choices")) if "choices" in meta else _TYPES.get(str(f.type), str)
    return click.option(flag, f.name, type=kind, default=f.default, **kwargs)


def _with_config_options(fn):
    for f in reversed(dataclasses.fields(TrainConfig)):
        fn = _option(f)(fn)
    return fn


@click.command("train", help=DESCRIPTION, context_settings=CONTEXT_SETTINGS)
@_with_config_options
def train_command(**options):
    config = _config(options)
    from .trainer import TrainError, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config)
    except (OSError, TrainError) as exc:  # e.g. a full disk or an unwritable --out: named in the message
        raise click.ClickException(str(exc)) from None
    if result:
        summary = {
            "best": (result["best"] or {}).get("val"),
            "test": result["test"],
            "timing": result["timing"],
        }
        click.echo(json.dumps(summary, indent=2, default=str))


def _config(options: dict) -> TrainConfig:
    try:
        return TrainConfig(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig that ``python -m train ARGV`` would run (usage errors exit 2)."""
    with train_command.make_context(PROG, list(argv or [])) as ctx:
        return _config(ctx.params)


def help_text() -> str:
    with click.Context(train_command, info_name=PROG) as ctx:
        return train_command.get_help(ctx)


def main(argv: list[str] | None = None) -> None:
    train_command.main(args=argv, prog_name=PROG)
