"""Soak test of the served joint pipeline (mmtrt.bench.soak): the fused `multimix` model on the
real Triton server (CPU flavour), --concurrency clients (half HTTP, half gRPC) sending batch-1
requests for --minutes, every answer checked against onnxruntime, bad requests mixed in; writes
OUT.json and OUT.md and exits 1 unless nothing was lost and every bad request was rejected.

    .venv/bin/python benchmarks/soak.py --minutes 10 --export EXPORT_DIR

EXPORT_DIR holds multimix.onnx, encoder.onnx and manifest.json (`mmtrt export CKPT --out
EXPORT_DIR`); without --export a seeded random checkpoint is exported into a temporary folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from benchmarks import command_line, report_option, script
from mmtrt.bench.soak import run_soak


@script(__doc__)
@click.option("--minutes", type=float, default=10.0, help="How long the load runs.")
@click.option("--concurrency", type=click.IntRange(min=1), default=16)
@click.option(
    "--export",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Export folder (multimix.onnx, encoder.onnx, manifest.json) [default: mmtrt init + mmtrt "
    "export into a temporary folder].",
)
@click.option("--window", "window_s", type=float, default=10.0, help="Seconds per latency window.")
@click.option(
    "--bad-every",
    type=click.IntRange(min=0),
    default=10,
    help="Every N-th request of a client is a bad one (the kinds in turn); 0: none.",
)
@click.option(
    "--warmup",
    "warmup_s",
    type=float,
    default=10.0,
    help="Seconds left out of the stability and memory-growth figures.",
)
@click.option("--ort-threads", type=click.IntRange(min=1), default=1)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000)
@report_option("reliability_soak")
def main(**settings):
    """The options are run_soak's settings, by name."""
    sys.exit(0 if run_soak(**settings, command=command_line(), say=click.echo) else 1)


if __name__ == "__main__":
    main()
