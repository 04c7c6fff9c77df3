"""`mmtrt bench`: every way of running MultiMix on the same images in one run, as ratios to the
published reference path."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give positive integers")
    return values


IN_PROCESS = ("reference", "eager", "compiled", "ort-fused", "ort-split", "ort-encoder", "ort-saliency")
DEFAULT_TARGETS = "reference,eager,ort-fused,ort-split,ort-encoder,ort-saliency,triton"


@click.command("bench")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"), show_default=True)
@click.option("--targets", default=DEFAULT_TARGETS, show_default=True,
              help=f"Comma-separated, from {', '.join(IN_PROCESS)}, triton ('compiled' costs minutes of compile on a CPU).")
@click.option("--batches", default="1,4,8", show_default=True, help="Batch sizes of the in-process sweep.")
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="Client counts of the Triton sweep.")
@click.option("--triton-batch", default=8, show_default=True, help="Images per request in the Triton sweep.")
@click.option("--seconds", default=3.0, show_default=True, help="Timed seconds per measurement (after warm-up).")
@click.option("--perf-analyzer/--no-perf-analyzer", default=True, show_default=True,
              help="Also measure with Triton's perf_analyzer where it can run.")
def bench(checkpoint, export_dir, out, targets, batches, concurrency, triton_batch, seconds, perf_analyzer):
    """Throughput and latency of MultiMix from CHECKPOINT and its EXPORT_DIR (from `mmtrt export`):
    PyTorch (reference path, shared-pass eager, compiled), onnxruntime (fused and split graphs) and
    a Triton server (HTTP and gRPC, concurrency sweep). Writes OUT/bench.{json,md} and plots."""
    from tqdm import tqdm

    from mmtrt.bench import runner

    wanted = [t for t in targets.split(",") if t]
    unknown = set(wanted) - set(IN_PROCESS) - {"triton"}
    if unknown:
        raise click.BadParameter(f"unknown target(s) {sorted(unknown)}", param_hint="--targets")
    batch_sizes, clients = _ints(batches), _ints(concurrency)
    steps = len([t for t in wanted if t != "triton"]) * len(batch_sizes) + ("triton" in wanted) * 2 * len(clients)
    with tqdm(total=steps, desc="bench", unit="measurement") as progress:
        report = runner.run_bench(checkpoint, export_dir, out, targets=wanted, batch_sizes=batch_sizes,
                                  concurrency=clients, triton_batch=triton_batch, seconds=seconds,
                                  use_perf_analyzer=perf_analyzer, progress=progress,
                                  command="mmtrt bench " + " ".join(sys.argv[2:]))
    click.echo((out / "bench.md").read_text())
    missed = [g for g in report["goals"] if g["met"] is False]
    if missed:
        click.echo(f"{len(missed)} goal(s) missed (a finding, reported above).")
