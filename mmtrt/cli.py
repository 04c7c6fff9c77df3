"""The `mmtrt` command line. Each command lives beside the code it drives and is imported only
when it runs, so `mmtrt --help` stays fast (no torch import)."""

from __future__ import annotations

import importlib

import click

#: how every command line of the project reads: -h as well as --help, and each option's default
#: shown in the help (an option says show_default=False, or its own text, where that misleads)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}

# name -> "module:click command". Only commands that work are listed here.
COMMANDS = {
    "synth": "mmtrt.data.commands:synth",
    "init": "mmtrt.commands:init_checkpoint",
    "train": "train.command:train_command",
    "import-weights": "mmtrt.commands:import_weights",
    "repo": "mmtrt.serving.commands:repo",
    "serve": "mmtrt.serving.commands:serve",
    "update": "mmtrt.serving.commands:update",
    "infer": "mmtrt.serving.commands:infer",
    "bench": "mmtrt.bench.command:bench",
    "evaluate": "mmtrt.evaluate.command:evaluate",
    "export": "mmtrt.export.command:export",
    "calibrate": "mmtrt.export.calibrate:calibrate",
    "build-engines": "mmtrt.export.command:build_engines_command",
    "dicom-node": "mmtrt.node.command:dicom_node",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="mmtrt")
def main():
    """Train, export, serve and benchmark MultiMix: joint chest X-ray classification + lung
    segmentation with a saliency bridge."""
