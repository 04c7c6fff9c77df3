"""`mmtrt export` and `mmtrt build-engines`: the command-line faces of :mod:`mmtrt.export.exporter`."""

from __future__ import annotations

from pathlib import Path

import click

from mmtrt.export.exporter import DEFAULT_MAX_BATCH, DEFAULT_OOD_QUANTILE


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Export folder to create.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    help="fp32 graphs are always written; fp16/bf16 add mixed-precision copies and engines.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BATCH,
    help="Largest batch: validated, and the TensorRT profile's max.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 18; 22 for bf16].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option(
    "--engines/--no-engines",
    default=True,
    help="Build TensorRT engines when TensorRT and a CUDA GPU are present.",
)
@click.option(
    "--ood-data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="In-distribution images the image gate is fitted on: a classification root with train/ "
    "(the Gaussians) and val/ (the threshold) [default: the checkpoint's training data].",
)
@click.option(
    "--ood-quantile",
    type=click.FloatRange(0.5, 1.0, max_open=True),
    default=DEFAULT_OOD_QUANTILE,
    show_default=True,
    help="The image gate's threshold: this quantile of the held-out (val/) images' scores; the "
    "share of such images it rejects is written in the manifest.",
)
def export(checkpoint, out, precision, max_batch, opset, overwrite, engines, ood_data, ood_quantile):
    """Export a MultiMix CHECKPOINT to ONNX graphs with a dynamic batch axis and an image gate
    (an out-of-distribution score fitted on in-distribution images), check them against PyTorch
    in onnxruntime and OpenVINO, write a manifest, and build TensorRT engines where possible."""
    from mmtrt.checkpoint import CheckpointError
    from mmtrt.export.exporter import export_model
    from mmtrt.export.manifest import ExportError

    try:
        export_model(
            checkpoint,
            out,
            precision=precision,
            max_batch=max_batch,
            opset=opset,
            overwrite=overwrite,
            engines=engines,
            ood_data=ood_data,
            ood_quantile=ood_quantile,
            echo=click.echo,
        )
    except (ExportError, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("build-engines")
@click.argument("folder", type=click.Path(path_type=Path))
def build_engines_command(folder):
    """Build the TensorRT engines of an export FOLDER on this host (TensorRT 10 or 11 and a CUDA
    GPU needed), check them against onnxruntime and add them to its manifest."""
    from mmtrt.export.exporter import build_engines
    from mmtrt.export.manifest import ExportError
    from mmtrt.export.tensorrt import TensorRTUnavailable

    try:
        build_engines(folder, echo=click.echo)
    except TensorRTUnavailable as exc:
        raise click.ClickException(f"cannot build TensorRT engines here: {exc}") from None
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
