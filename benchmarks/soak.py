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

from mmtrt.bench.soak import run_soak

ROOT = Path(__file__).resolve().parent.parent


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--minutes", type=float, default=10.0, show_default=True, help="How long the load runs.")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--export",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Export folder (multimix.onnx, encoder.onnx, manifest.json) [default: mmtrt init + mmtrt "
    "export into a temporary folder].",
)
@click.option("--window", type=float, default=10.0, show_default=True, help="Seconds per latency window.")
@click.option(
    "--bad-every",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Every N-th request of a client is a bad one (the kinds in turn); 0: none.",
)
@click.option(
    "--warmup",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds left out of the stability and memory-growth figures.",
)
@click.option("--ort-threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=ROOT / "benchmarks" / "results" / "reliability_soak",
    show_default=True,
    help="Report stem: writes STEM.json and STEM.md.",
)
def main(minutes, concurrency, export, window, bad_every, warmup, ort_threads, max_queue_delay_us, out):
    passed = run_soak(
        minutes=minutes,
        out=out,
        command="python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        concurrency=concurrency,
        export=export,
        window_s=window,
        bad_every=bad_every,
        warmup_s=warmup,
        ort_threads=ort_threads,
        max_queue_delay_us=max_queue_delay_us,
        say=lambda line: click.echo(line),
    )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
