"""The scripts that reproduce the committed results under benchmarks/results/, and the project's own
goals (goals.py). Run each from the repository root as ``python -m benchmarks.<name>``; ``--help``
says what it measures and writes.

What the scripts share lives here: how a run was started (:func:`command_line`), where reports go
(:data:`RESULTS`, :func:`report_option`), and the ``--checkpoint`` / ``--export`` pair of the
scripts that measure an export (:func:`export_options`). The options they share with mmtrt's
commands are mmtrt.cli_options'."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from mmtrt.cli import CONTEXT_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def command_line() -> str:
    """How this run was started, as one would type it again: ``python -m benchmarks.<name> ...``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*program, *sys.argv[1:]])


def script(doc: str):
    """The click command of a script whose module docstring is ``doc``: its first paragraph is
    the help; -h and the defaults shown as in mmtrt's commands."""
    return click.command(help=doc.split("\n\n")[0], context_settings=CONTEXT_SETTINGS)


def report_option(name: str, writes: str = "OUT.json and OUT.md"):
    """``--out``: the report's path without suffix [default: benchmarks/results/``name``]."""
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=RESULTS / name,
        show_default=False,  # (the absolute path, as this checkout has it)
        help=f"Report path without suffix: writes {writes} [default: benchmarks/results/{name}].",
    )


def export_options(default: str):
    """``--checkpoint`` and ``--export``: a checkpoint and the `mmtrt export` folder made from it,
    both or neither (then the script makes what ``default`` says); see :func:`exported_pair`."""

    def decorate(command):
        command = click.option(
            "--export",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help=f"An `mmtrt export` folder [default: {default}].",
        )(command)
        return click.option(
            "--checkpoint",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="The checkpoint --export was exported from.",
        )(command)

    return decorate


def exported_pair(checkpoint: Path | None, export: Path | None) -> bool:
    """True when ``--checkpoint`` and ``--export`` are both given and ``export`` was made from
    ``checkpoint`` (its manifest.json records the checkpoint's sha256), False when neither is; a
    usage error otherwise."""
    if (checkpoint is None) != (export is None):
        raise click.UsageError(
            "give both --checkpoint and --export (the checkpoint it was exported from), or neither"
        )
    if export is None:
        return False
    from mmtrt.files import file_sha256

    manifest = export / "manifest.json"
    made_from = (
        json.loads(manifest.read_text()).get("checkpoint", {}).get("sha256") if manifest.is_file() else None
    )
    if made_from and made_from != file_sha256(checkpoint):
        raise click.UsageError(f"{checkpoint} is not the checkpoint {export} was exported from")
    return True
