"""`mmtrt evaluate`: a thin command over mmtrt.evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mmtrt.cli_options import batch_size_option, seed_option, server_options
from mmtrt.serving.client import JOINT_MODEL


def _name_for(path: Path) -> str:
    # runs/x/best.pt -> "x/best"; model.pt -> "model"
    if path.stem in ("best", "last") and path.parent.name:
        return f"{path.parent.name}/{path.stem}"
    return path.stem


@click.command("evaluate")
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--cls-data",
    type=click.Path(path_type=Path),
    help="In-domain classification root (Kermany layout: SPLIT/{NORMAL,PNEUMONIA}/).",
)
@click.option(
    "--seg-data",
    type=click.Path(path_type=Path),
    help="In-domain segmentation root (JSRT images/+masks/ or Montgomery CXR_png/+ManualMask/, under SPLIT/).",
)
@click.option("--cross-cls", type=click.Path(path_type=Path), help="Cross-domain classification root.")
@click.option("--cross-seg", type=click.Path(path_type=Path), help="Cross-domain segmentation root.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--split", default="test", help="Split folder under each root ('' = the root itself).")
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Display name of each checkpoint, in order [default: from the path].",
)
@server_options(
    "Also (or only) evaluate the model served by Triton at this address; an http(s):// or "
    "grpc(s):// prefix is accepted. Repeat it for several servers of the same model: the "
    "requests are spread over those that are ready, and one whose server fails is sent to another."
)
@click.option(
    "--calibration",
    "calibration_export",
    type=click.Path(path_type=Path),
    help="An export folder whose calibration (`mmtrt calibrate`: temperature and operating point) "
    "the CHECKPOINT(s) are evaluated with, as its served models apply it; the report shows ECE and "
    "Brier before and after. Its image gate too: the images it refuses are counted, not scored. "
    "A served model (--url) always answers with its own export's.",
)
@click.option("--model", "served_model", default=JOINT_MODEL, help="Served model name (the joint model).")
@batch_size_option("Images per forward / request (capped at the served model's max_batch_size).")
@click.option(
    "--bootstrap",
    "n_boot",
    default=1000,
    type=click.IntRange(min=10),
    help="Bootstrap resamples of the 95% intervals.",
)
@seed_option("the bootstrap")
@click.option(
    "--gallery",
    default=4,
    type=click.IntRange(min=1),
    help="Images per boundary / saliency figure.",
)
@click.option(
    "--seg-spacing",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Native pixel spacing of the segmentation files in mm (distances then in mm) [default: source.json of the data, else pixels].",
)
@click.option(
    "--threads",
    default=0,
    type=click.IntRange(min=0),
    help="torch CPU threads (0 = torch's default).",
)
def evaluate(
    checkpoints, cls_data, seg_data, cross_cls, cross_seg, out, split, names, server, calibration_export, served_model,
    batch_size, n_boot, seed, gallery, seg_spacing, threads,
):  # fmt: skip
    """Evaluate CHECKPOINT(s) and/or a served model (--url) on the test split of the in-domain
    (--cls-data/--seg-data) and cross-domain (--cross-cls/--cross-seg) sources: accuracy, F1,
    ROC AUC, sensitivity, specificity, calibration error, Brier score, Dice, Jaccard, HD95, ASSD...
    with 95% bootstrap intervals, in OUT/metrics.json,
    summary.csv, per_image.csv, figures/ and one self-contained OUT/report.html."""
    from mmtrt.serving.errors import InferError

    from .predictors import CheckpointPredictor, EvaluateError, TritonPredictor
    from .run import Domain
    from .run import evaluate as run

    def fail(msg: str):
        click.echo(f"Error: {msg}", err=True)
        sys.exit(1)

    if not checkpoints and not server.urls:
        fail("give at least one CHECKPOINT or --url")
    if names and len(names) != len(checkpoints):
        fail(f"{len(names)} --name for {len(checkpoints)} checkpoint(s)")
    if not any((cls_data, seg_data, cross_cls, cross_seg)):
        fail("no data: give --cls-data and/or --seg-data (and --cross-cls/--cross-seg)")
    for opt, p in (
        ("--cls-data", cls_data),
        ("--seg-data", seg_data),
        ("--cross-cls", cross_cls),
        ("--cross-seg", cross_seg),
    ):
        if p is not None and not p.is_dir():
            fail(f"{opt} {p}: no such folder")
    if threads:
        import torch

        torch.set_num_threads(threads)
    calibration = gate = None
    if calibration_export is not None:
        from mmtrt.calibration import MANIFEST_KEY, Calibration, CalibrationError
        from mmtrt.export.manifest import ExportError, read_manifest
        from mmtrt.ood import MANIFEST_KEY as OOD_KEY
        from mmtrt.ood import STATS_FILE, OODError, read_stats

        try:
            manifest = read_manifest(calibration_export, check_files=False)
            calibration = Calibration.from_manifest(manifest)
            # the export's image gate too: the checkpoint refuses what the served models refuse
            gate = read_stats(calibration_export / STATS_FILE) if OOD_KEY in manifest else None
        except (ExportError, CalibrationError, OODError) as e:
            fail(f"--calibration: {e}")
        if MANIFEST_KEY not in manifest:
            fail(f"--calibration: {calibration_export} is not calibrated (run `mmtrt calibrate` on it)")
    predictors = []
    try:
        for i, ckpt in enumerate(checkpoints):
            name = names[i] if names else _name_for(ckpt)
            predictors.append(CheckpointPredictor(ckpt, name=name, calibration=calibration, gate=gate))
        if server.urls:
            servers = server.servers(say=lambda m: click.echo(m, err=True))
            predictors.append(TritonPredictor(servers, served_model))
        domains = [Domain("in-domain", cls_data, seg_data), Domain("cross-domain", cross_cls, cross_seg)]
        run(
            predictors, domains, out, split=split or None, batch=batch_size, n_boot=n_boot, seed=seed,
            gallery=gallery, seg_spacing=seg_spacing, say=click.echo,
        )  # fmt: skip
    except (EvaluateError, InferError) as e:  # InferError: an unusable --url
        fail(str(e))
    finally:
        for p in predictors:
            p.close()
