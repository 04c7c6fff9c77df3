"""`mmtrt calibrate`: fit an export's temperature and choose its operating point on validation
images, and record both in its manifest (:mod:`mmtrt.calibration` says how they are applied).

It is a command of its own, run on a finished export, rather than a step of `mmtrt export`: the
calibration depends only on the probabilities of the graphs the export serves (computed here by
its own fp32 ONNX graph in onnxruntime), not on how the graphs were made; it leaves every graph,
engine and parity record untouched; and a clinic can choose another operating point, or
recalibrate on its own validation images, without exporting (and validating) again. Only the
manifest changes, written whole and atomically; serving reads it when a repository is built.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mmtrt.calibration import (
    MANIFEST_KEY,
    TEMPERATURE_RANGE,
    Calibration,
    CalibrationError,
    choose_threshold,
    fit_temperature,
    margins,
    nll,
)
from mmtrt.export.manifest import ExportError, now, read_manifest, write_manifest

#: the graph whose probabilities are calibrated, in order of preference (the cheapest first;
#: every graph's probs come from the same encoder)
PROBABILITY_GRAPHS = ("encoder", "saliency", "multimix")


def validation_probabilities(folder: Path, manifest: dict, data: Path, split: str | None, batch: int, echo):
    """(labels [N], probs [N, 2], graph file) of the export's fp32 graph over the images of the
    classification root ``data`` (Kermany layout, ``split`` folder)."""
    from mmtrt.data import ClassificationFolder, DataError
    from mmtrt.runtimes import ort

    graphs = manifest.get("graphs") or {}
    graph = next((g for g in PROBABILITY_GRAPHS if g in graphs), None)
    if graph is None:
        raise ExportError(f"{folder} has none of the graphs {', '.join(PROBABILITY_GRAPHS)} to calibrate")
    record = graphs[graph]
    size = int(record["inputs"]["image"]["shape"][-1])
    try:
        images = ClassificationFolder(data, split, size=size)
    except DataError as e:
        raise ExportError(f"--data: {e}") from None
    run = ort.runner(folder / record["file"])
    labels, probs = np.asarray(images.labels), []
    echo(f"calibrating on {len(images)} images of {data}{'/' + split if split else ''} with {record['file']}")
    for start in range(0, len(images), batch):
        x = np.stack([images[i][0].numpy() for i in range(start, min(len(images), start + batch))])
        probs.append(run({"image": x}, outputs=["probs"])["probs"])
    return labels, np.concatenate(probs), record["file"]


def calibrate_export(
    folder: Path,
    data: Path,
    *,
    split: str | None = "val",
    operating_point: str = "argmax",
    batch: int = 16,
    echo=print,
) -> dict:
    """Fit the temperature of the export ``folder`` on ``data``'s ``split``, choose the threshold
    that ``operating_point`` asks for, write them into its manifest; return the record."""
    from mmtrt.metrics import calibration_metrics

    folder = Path(folder)
    manifest = read_manifest(folder)
    labels, probs, graph_file = validation_probabilities(folder, manifest, Path(data), split, batch, echo)
    try:
        temperature = fit_temperature(labels, probs)
        calibrated = Calibration(temperature).probabilities(probs)
        threshold = choose_threshold(labels, calibrated[:, 1], operating_point)
        calibration = Calibration(temperature, threshold)
    except CalibrationError as e:
        raise ExportError(str(e)) from None
    before = calibration_metrics(labels, probs)
    after = calibration_metrics(labels, calibrated, calibration.labels(probs))
    margin = margins(probs)
    finite = np.isfinite(margin)
    record = {
        "temperature": temperature,
        "threshold": threshold,
        "operating_point": operating_point,
        "label": "PNEUMONIA when sigmoid((log p1 - log p0) / temperature) > threshold",
        "fitted": now(),
        "validation": {
            "data": str(Path(data).resolve()),
            "split": split,
            "graph": graph_file,
            "images": int(labels.size),
            "normal": int((labels == 0).sum()),
            "pneumonia": int((labels == 1).sum()),
            "nll_before": nll(labels[finite], margin[finite], 1.0),
            "nll_after": nll(labels[finite], margin[finite], temperature),
            "ece_before": before["ece"],
            "ece_after": after["ece"],
            "sensitivity": after["sensitivity"],
            "specificity": after["specificity"],
            # the served models publish these as the baseline their drift alerts compare with
            "mean_pneumonia_probability": float(calibrated[:, 1].mean()),
            "pneumonia_rate": float(calibration.labels(probs).mean()),
        },
    }
    write_manifest(folder, {**manifest, MANIFEST_KEY: record})
    if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01:
        echo(
            f"warning: the temperature is at the bound of its range {list(TEMPERATURE_RANGE)}: the "
            "probabilities carry little information on these images (too few, or a model that "
            "does not separate them)"
        )
    v = record["validation"]
    echo(
        f"temperature {temperature:.4f} (ECE {v['ece_before']:.4f} -> {v['ece_after']:.4f}), threshold "
        f"{threshold:.4f} ({operating_point}: sensitivity {v['sensitivity']:.3f}, specificity "
        f"{v['specificity']:.3f} on these images); written to {folder / 'manifest.json'}"
    )
    return record


@click.command("calibrate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Validation classification root (Kermany layout: SPLIT/{NORMAL,PNEUMONIA}/); never the test split.",
)
@click.option("--split", default="val", help="Split folder under --data ('' = the root itself).")
@click.option(
    "--operating-point",
    default="argmax",
    help="How the label's threshold on the calibrated P(PNEUMONIA) is chosen: argmax (0.5, the label "
    "of an uncalibrated export), youden, sensitivity=X (the most specific threshold with at least "
    "that sensitivity) or specificity=X (the most sensitive with at least that specificity).",
)
@click.option("--batch-size", default=16, type=click.IntRange(min=1), help="Images per forward.")
def calibrate(folder, data, split, operating_point, batch_size):
    """Fit the temperature of the export FOLDER (minimum NLL on the validation images) and choose
    its operating point; both go into its manifest.json and are applied by every served model
    built from it and by `mmtrt evaluate --calibration`."""
    from mmtrt.calibration import parse_operating_point

    try:
        parse_operating_point(operating_point)
        if not Path(data).is_dir():
            raise ExportError(f"--data {data}: no such folder")
        calibrate_export(
            folder,
            data,
            split=split or None,
            operating_point=operating_point,
            batch=batch_size,
            echo=click.echo,
        )
    except (ExportError, CalibrationError) as e:
        raise click.ClickException(str(e)) from None
