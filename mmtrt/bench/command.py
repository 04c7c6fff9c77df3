"""`mmtrt bench`: every way of running MultiMix on the same images in one run, as ratios to the
published reference path."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mmtrt.bench.targets import TARGETS, default_targets
from mmtrt.cli_options import IntList, NameList, batch_sizes_option, device_option


def _names(select) -> str:
    return ", ".join(name for name, target in TARGETS.items() if select(target))


@click.command("bench")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"))
@device_option("Where the in-process targets run; on cuda each call is timed with CUDA events.")
@click.option(
    "--targets",
    type=NameList(TARGETS),
    default=None,
    help="Comma-separated, from "
    + _names(lambda t: t.devices == ("cpu", "cuda"))
    + "; on cpu also "
    + _names(lambda t: t.devices == ("cpu",))
    + " (OpenVINO's CPU plugin); on cuda also "
    + _names(lambda t: t.devices == ("cuda",))
    + " (tensorrt: the engines of `mmtrt build-engines`). The triton targets serve the cpu "
    "repository flavour whatever the device: triton (onnxruntime; triton-bytes: the same server "
    "sent PNG files, decoded in the server), triton-ov (OpenVINO), -bf16 (the export's bf16 "
    "copies). Default on cpu: "
    + ", ".join(default_targets("cpu"))
    + "; on cuda: "
    + ", ".join(default_targets("cuda"))
    + ", leaving out with a note tensorrt and onnxruntime where they cannot run. "
    "'compiled' costs minutes of compile on a CPU.",
)
@batch_sizes_option("1,4,8", "Batch sizes of the in-process sweep (comma-separated).")
@click.option(
    "--concurrency",
    type=IntList(),
    default="1,2,4,8",
    help="Client counts of the Triton sweep (comma-separated).",
)
@click.option(
    "--triton-batch-size",
    type=click.IntRange(min=1),
    default=8,
    help="Images per request in the Triton sweep.",
)
@click.option(
    "--file-size",
    default=1024,
    type=click.IntRange(16, 4096),
    help="triton-bytes: rows and columns of the 8-bit PNG files it sends (1024: the NIH ChestX-ray14 format).",
)
@click.option("--seconds", default=3.0, help="Timed seconds per measurement (after warm-up).")
@click.option(
    "--perf-analyzer/--no-perf-analyzer",
    default=True,
    help="Also measure with Triton's perf_analyzer where it can run.",
)
def bench(
    checkpoint,
    export_dir,
    out,
    device,
    targets,
    batch_sizes,
    concurrency,
    triton_batch_size,
    file_size,
    seconds,
    perf_analyzer,
):
    """Throughput and latency of MultiMix from CHECKPOINT and its EXPORT_DIR (from `mmtrt export`):
    PyTorch (reference path, shared-pass eager, compiled; on a GPU also CUDA graphs and fp16/bf16),
    onnxruntime (fused and split graphs), TensorRT engines (GPU) and a Triton server (HTTP and
    gRPC, concurrency sweep). Writes OUT/bench.{json,md} and plots."""
    wanted = targets or default_targets(device)
    cpu_only = [t for t in wanted if TARGETS[t].devices == ("cpu",)]
    if device == "cuda" and cpu_only:
        raise click.BadParameter(
            f"{', '.join(cpu_only)}: OpenVINO CPU target(s), give --device cpu", param_hint="--targets"
        )
    gpu_only = [t for t in wanted if TARGETS[t].devices == ("cuda",)]
    if device == "cpu" and gpu_only:
        raise click.BadParameter(
            f"{', '.join(gpu_only)}: GPU-only target(s), give --device cuda"
            + (
                " (TensorRT needs a CUDA GPU)"
                if any(TARGETS[t].runtime == "tensorrt" for t in gpu_only)
                else ""
            ),
            param_hint="--targets",
        )

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
    from mmtrt.serving.errors import ServingError

    served = len([t for t in wanted if TARGETS[t].served])
    steps = (len(wanted) - served) * len(batch_sizes) + served * 2 * len(concurrency)
    try:
        with tqdm(total=steps, desc="bench", unit="measurement") as progress:
            runner.run_bench(
                checkpoint,
                export_dir,
                out,
                device=device,
                targets=wanted,
                batch_sizes=batch_sizes,
                concurrency=concurrency,
                triton_batch_size=triton_batch_size,
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
    except ServingError as exc:  # the served targets' server could not be started or used
        raise click.ClickException(str(exc)) from None
    click.echo((out / "bench.md").read_text())
