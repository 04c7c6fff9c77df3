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


# The targets, by where they run (kept here, not beside the code that builds them, so that
# `--help` needs no torch import). eager-bf16 would run on a CPU, but emulated where the CPU has no
# bfloat16 arithmetic (about 30x slower than float32 on this project's CPU machine).
ANY_DEVICE = ("reference", "eager", "compiled", "ort-fused", "ort-split", "ort-encoder", "ort-saliency")
CUDA_ONLY = ("cuda-graphs", "eager-fp16", "compiled-fp16", "eager-bf16", "tensorrt")
# OpenVINO's CPU plugin (precision hint f32); -bf16: over the export's bf16 copies (an export made
# with --precision bf16, on a CPU with bf16 hardware); triton-ov(-bf16): the cpu repository served
# with OpenVINO (mmtrt repo --runtime openvino [--precision bf16]); triton-bytes: the same server as
# triton, sent PNG files (multimix_image) instead of tensors
CPU_ONLY = tuple(f"ov-{t}{p}" for p in ("", "-bf16") for t in ("fused", "split", "encoder", "saliency"))
TRITON = ("triton", "triton-bytes", "triton-ov", "triton-ov-bf16")
DEFAULT_TARGETS = {
    "cpu": "reference,eager,ort-fused,ort-split,ort-encoder,ort-saliency,"
    "ov-fused,ov-split,ov-encoder,ov-saliency,triton,triton-bytes,triton-ov",
    "cuda": "reference,eager,compiled,cuda-graphs,eager-fp16,compiled-fp16,eager-bf16,"
    "ort-fused,ort-split,ort-encoder,ort-saliency,tensorrt",
}


@click.command("bench")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"), show_default=True
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Where the in-process targets run; on cuda each call is timed with CUDA events.",
)
@click.option(
    "--targets",
    default=None,
    help=f"Comma-separated, from {', '.join(ANY_DEVICE)}, {', '.join(TRITON)}; on cpu also "
    f"{', '.join(CPU_ONLY)} (OpenVINO); on cuda also {', '.join(CUDA_ONLY)} "
    "(the engines of `mmtrt build-engines`). Default on cpu: reference, eager, the ort and ov "
    "targets, triton (onnxruntime), triton-bytes (the same server sent PNG files: decoding in the "
    "server) and triton-ov (OpenVINO); on cuda: every in-process target, leaving out with a note tensorrt and onnxruntime "
    "where they cannot run. 'compiled' costs minutes of compile on a CPU.",
)
@click.option("--batches", default="1,4,8", show_default=True, help="Batch sizes of the in-process sweep.")
@click.option(
    "--concurrency", default="1,2,4,8", show_default=True, help="Client counts of the Triton sweep."
)
@click.option("--triton-batch", default=8, show_default=True, help="Images per request in the Triton sweep.")
@click.option(
    "--file-size",
    default=1024,
    show_default=True,
    type=click.IntRange(16, 4096),
    help="triton-bytes: rows and columns of the 8-bit PNG files it sends (1024: the NIH ChestX-ray14 format).",
)
@click.option(
    "--seconds", default=3.0, show_default=True, help="Timed seconds per measurement (after warm-up)."
)
@click.option(
    "--perf-analyzer/--no-perf-analyzer",
    default=True,
    show_default=True,
    help="Also measure with Triton's perf_analyzer where it can run.",
)
def bench(
    checkpoint,
    export_dir,
    out,
    device,
    targets,
    batches,
    concurrency,
    triton_batch,
    file_size,
    seconds,
    perf_analyzer,
):
    """Throughput and latency of MultiMix from CHECKPOINT and its EXPORT_DIR (from `mmtrt export`):
    PyTorch (reference path, shared-pass eager, compiled; on a GPU also CUDA graphs and fp16/bf16),
    onnxruntime (fused and split graphs), TensorRT engines (GPU) and a Triton server (HTTP and
    gRPC, concurrency sweep). Writes OUT/bench.{json,md} and plots."""
    wanted = [t for t in (targets or DEFAULT_TARGETS[device]).split(",") if t]
    unknown = set(wanted) - set(ANY_DEVICE) - set(CUDA_ONLY) - set(CPU_ONLY) - set(TRITON)
    if unknown:
        raise click.BadParameter(f"unknown target(s) {sorted(unknown)}", param_hint="--targets")
    cpu_only = [t for t in wanted if t in CPU_ONLY]
    if device == "cuda" and cpu_only:
        raise click.BadParameter(
            f"{', '.join(cpu_only)}: OpenVINO CPU target(s), give --device cpu", param_hint="--targets"
        )
    gpu_only = [t for t in wanted if t in CUDA_ONLY]
    if device == "cpu" and gpu_only:
        raise click.BadParameter(
            f"{', '.join(gpu_only)}: GPU-only target(s), give --device cuda"
            + (" (TensorRT needs a CUDA GPU)" if "tensorrt" in gpu_only else ""),
            param_hint="--targets",
        )
    batch_sizes, clients = _ints(batches), _ints(concurrency)

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            f"no CUDA GPU is visible to PyTorch {torch.__version__} (torch.cuda.is_available() is False)",
            param_hint="--device",
        )
    from tqdm import tqdm

    from mmtrt.bench import runner
    from mmtrt.export.manifest import ExportError
    from mmtrt.export.tensorrt import EngineBuildError, TensorRTUnavailable

    served = len([t for t in wanted if t in TRITON])
    steps = len([t for t in wanted if t not in TRITON]) * len(batch_sizes) + served * 2 * len(clients)
    try:
        with tqdm(total=steps, desc="bench", unit="measurement") as progress:
            report = runner.run_bench(
                checkpoint,
                export_dir,
                out,
                device=device,
                targets=wanted,
                batch_sizes=batch_sizes,
                concurrency=clients,
                triton_batch=triton_batch,
                file_size=file_size,
                seconds=seconds,
                use_perf_analyzer=perf_analyzer,
                tensorrt_required=targets is not None,
                progress=progress,
                command="mmtrt bench " + " ".join(sys.argv[2:]),
            )
    except (
        TensorRTUnavailable,
        EngineBuildError,
        ExportError,
    ) as exc:  # only for a tensorrt target asked for
        raise click.ClickException(f"cannot run the tensorrt target: {exc}") from None
    click.echo((out / "bench.md").read_text())
    missed = [g for g in report["goals"] if g["met"] is False]
    if missed:
        click.echo(f"{len(missed)} goal(s) missed (a finding, reported above).")
