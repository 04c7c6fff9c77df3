"""`mmtrt evaluate`'s work: run every model over every source's test split, compute the metrics
of mmtrt.metrics per image, aggregate with bootstrap CIs, write metrics.json, CSVs, figures and
the HTML report.

A *domain* is a pair of sources: a classification root (Kermany layout) and/or a segmentation
root (JSRT or Montgomery layout). ``in-domain`` comes from --cls-data/--seg-data, ``cross-domain``
from --cross-cls/--cross-seg. Every model sees exactly the same images (the loaders' sorted
order), so per-image figures show the same images for every model.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mmtrt.files import atomic_write_text
from mmtrt.metrics import (
    CALIBRATION_KEYS,
    CLS_KEYS,
    SEG_KEYS,
    calibration_ci,
    calibration_metrics,
    classification_ci,
    classification_metrics,
    confusion_matrix,
    mean_ci,
    reliability_curve,
    roc_curve,
    segmentation_metrics,
)

from .predictors import EvaluateError

__all__ = ["Domain", "evaluate", "spacing_of"]

MASK_THRESHOLD = 0.5
#: what is also reported before the temperature of a calibration evaluate applies
UNCALIBRATED_KEYS = ("ece", "brier")
HIST_BINS = 64


@dataclass
class Domain:
    name: str
    cls_root: Path | None = None
    seg_root: Path | None = None


@dataclass
class Collected:
    """One model on one domain."""

    cls_labels: np.ndarray | None = None
    cls_probs: np.ndarray | None = None  # as the model answers them (calibrated, if it is)
    cls_predicted: np.ndarray | None = None  # the labels it answers (at its operating point)
    cls_uncalibrated: np.ndarray | None = None  # the softmax before a calibration evaluate applied
    cls_files: list[str] = field(default_factory=list)
    seg_files: list[str] = field(default_factory=list)
    seg_metrics: list[dict[str, float]] = field(default_factory=list)
    gallery_seg: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # index -> arrays
    gallery_cls: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    # images the predictor's image gate refused: left out of the metrics, counted and listed
    cls_refused: list[str] = field(default_factory=list)
    seg_refused: list[str] = field(default_factory=list)
    seconds: float = 0.0


def spacing_of(seg_root: Path, native_mm: float | None) -> tuple[float | None, str]:
    """(native pixel spacing in mm or None, where it came from): --seg-spacing, else a
    ``source.json`` with ``pixel_spacing_mm`` in the segmentation root or its parent (written by
    `mmtrt synth`), else None (distances in pixels of the 256 x 256 network grid)."""
    if native_mm is not None:
        return float(native_mm), "--seg-spacing"
    for folder in (seg_root, seg_root.parent):
        f = folder / "source.json"
        if f.is_file():
            try:
                v = json.loads(f.read_text()).get("pixel_spacing_mm")
            except (OSError, ValueError):
                continue
            if v:
                return float(v), str(f)
    return None, "unknown: distances in pixels of the 256x256 grid"


def _grid_spacing(path: Path, native_mm: float, size: int) -> tuple[float, float]:
    """mm per pixel of the resized grid: the loaders resize each axis to ``size`` independently."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return native_mm * h / size, native_mm * w / size


def _pick(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _pick_cls(labels: list[int], k: int) -> list[int]:
    """k gallery images alternating NORMAL / PNEUMONIA, spread over each class."""
    by = [[i for i, y in enumerate(labels) if y == c] for c in (0, 1)]
    picks = []
    for c in (0, 1):
        idx = by[c]
        picks += [idx[j] for j in _pick(len(idx), (k + 1 - c) // 2)]
    return sorted(picks)


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield list(range(s, min(n, s + size)))


def _predicted_batches(
    predictor, domain: Domain, task: str, dataset, batch: int, hist: dict | None, need_mask
):
    """Each batch of ``dataset`` with the predictor's outputs, as (indices, items, images, outputs),
    under a progress bar; ``need_mask(indices)``: whether that batch needs the mask and saliency.
    Adds the images' intensity histogram to ``hist`` (when given) under "<domain> <task>"."""
    from tqdm import tqdm

    key, desc = f"{domain.name} {task}", f"{predictor.name} | {domain.name} | {task}"
    with tqdm(total=len(dataset), desc=desc, unit="img", leave=False, disable=None) as bar:
        for idx in _batches(len(dataset), batch):
            items = [dataset[i] for i in idx]
            x = np.stack([im.numpy() for im, _ in items])
            if hist is not None:
                hist.setdefault(key, np.zeros(HIST_BINS))
                hist[key] += np.histogram(x, bins=HIST_BINS, range=(0, 1))[0]
            yield idx, items, x, predictor.predict(x, need_mask=need_mask(idx))
            bar.update(len(idx))


def _collect(
    predictor, domain: Domain, sets: dict, spacing: dict, gallery: int, batch: int, hist: dict | None
):
    out = Collected()
    t0 = time.perf_counter()
    cls_set = sets.get("cls")
    if cls_set is not None:
        labels, probs, predicted, uncalibrated, files = [], [], [], [], []
        picks = set(_pick_cls(list(cls_set.labels), gallery))

        def need_mask(idx):
            return predictor.kind == "triton" or any(i in picks for i in idx)

        for idx, items, x, res in _predicted_batches(
            predictor, domain, "cls", cls_set, batch, hist, need_mask
        ):
            ok = res["answered"]
            out.cls_refused += [str(cls_set.paths[i]) for j, i in enumerate(idx) if not ok[j]]
            probs.append(res["probs"][ok])
            predicted.append(res["label"][ok])
            if "uncalibrated_probs" in res:
                uncalibrated.append(res["uncalibrated_probs"][ok])
            labels += [int(y) for j, (_, y) in enumerate(items) if ok[j]]
            files += [str(cls_set.paths[i]) for j, i in enumerate(idx) if ok[j]]
            for j, i in enumerate(idx):
                if i in picks and ok[j]:
                    out.gallery_cls[i] = {
                        "file": str(cls_set.paths[i]),
                        "label": int(items[j][1]),
                        "image": x[j, 0],
                        "saliency": res["saliency"][j],
                        "probs": res["probs"][j],
                    }
        out.cls_labels = np.array(labels)
        out.cls_probs = np.concatenate(probs)
        out.cls_predicted = np.concatenate(predicted)
        out.cls_uncalibrated = np.concatenate(uncalibrated) if uncalibrated else None
        out.cls_files = files
    seg_set = sets.get("seg")
    if seg_set is not None:
        picks = set(_pick(len(seg_set), gallery))
        batches = _predicted_batches(predictor, domain, "seg", seg_set, batch, hist, lambda idx: True)
        for idx, items, x, res in batches:
            for j, i in enumerate(idx):
                if not res["answered"][j]:
                    out.seg_refused.append(str(seg_set.paths[i]))
                    continue
                out.seg_files.append(str(seg_set.paths[i]))
                target = items[j][1].numpy()[0] > 0.5
                prob = res["mask"][j]
                m = segmentation_metrics(prob > MASK_THRESHOLD, target, spacing=spacing["seg"][i], prob=prob)
                out.seg_metrics.append(m)
                if i in picks:
                    out.gallery_seg[i] = {
                        "file": str(seg_set.paths[i]),
                        "dice": m["dice"],
                        "image": x[j, 0],
                        "target": target,
                        "pred": prob > MASK_THRESHOLD,
                        "saliency": res["saliency"][j],
                    }
    out.seconds = time.perf_counter() - t0
    return out


def _open_sets(domain: Domain, split: str | None, seg_spacing: float | None, size: int):
    from mmtrt.data import ClassificationFolder, DataError, SegmentationPairs

    sets, spacing = {}, {"seg": [], "native_mm": None, "spacing_source": None}
    try:
        if domain.cls_root is not None:
            sets["cls"] = ClassificationFolder(domain.cls_root, split, size=size)
        if domain.seg_root is not None:
            seg = SegmentationPairs(domain.seg_root, split, size=size)
            sets["seg"] = seg
            native, where = spacing_of(Path(domain.seg_root), seg_spacing)
            spacing["native_mm"], spacing["spacing_source"] = native, where
            spacing["seg"] = [
                None if native is None else _grid_spacing(p, native, seg.size) for p in seg.paths
            ]
    except DataError as e:
        raise EvaluateError(f"{domain.name} data: {e}") from None
    return sets, spacing


def _summarise(c: Collected, n_boot: int, seed: int) -> dict:
    res: dict = {}
    if c.cls_labels is not None and not len(c.cls_labels):
        raise EvaluateError(f"the image gate refused every classification image ({len(c.cls_refused)})")
    if c.cls_labels is not None:
        y, probs, pred = c.cls_labels, c.cls_probs, c.cls_predicted
        # one set of resamples (same images, resamples and seed) for every interval
        m = {**classification_metrics(y, probs), **calibration_metrics(y, probs, pred)}
        ci = {
            **classification_ci(y, probs, n_boot=n_boot, seed=seed),
            **calibration_ci(y, probs, pred, n_boot=n_boot, seed=seed),
        }
        cls = {"n": int(len(y))}
        for k in (*CLS_KEYS, *CALIBRATION_KEYS):
            cls[k] = {"value": m[k], "ci95": list(ci[k])}
        cls["confusion"] = confusion_matrix(y, pred).tolist()
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
        cls["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        cls["reliability"] = reliability_curve(y, probs)
        if c.cls_uncalibrated is not None:  # the same metrics before the temperature
            raw = c.cls_uncalibrated
            m = calibration_metrics(y, raw)
            ci = calibration_ci(y, raw, n_boot=n_boot, seed=seed)
            for k in UNCALIBRATED_KEYS:
                cls[f"{k}_uncalibrated"] = {"value": m[k], "ci95": list(ci[k])}
            cls["reliability_uncalibrated"] = reliability_curve(y, raw)
        cls["refused"] = len(c.cls_refused)  # by the image gate: not in n, nor in the metrics
        res["classification"] = cls
    if c.seg_refused and not c.seg_metrics:
        raise EvaluateError(f"the image gate refused every segmentation image ({len(c.seg_refused)})")
    if c.seg_metrics:
        seg = {"n": len(c.seg_metrics), "refused": len(c.seg_refused)}
        keys = [k for k in (*SEG_KEYS, "ssim") if k in c.seg_metrics[0]]
        for k in keys:
            v = np.array([m[k] for m in c.seg_metrics])
            lo, hi = mean_ci(v, n_boot=n_boot, seed=seed)
            seg[k] = {
                "mean": float(v.mean()),
                "median": float(np.median(v)),
                "std": float(v.std()),
                "ci95": [lo, hi],
            }
        res["segmentation"] = seg
    res["seconds"] = c.seconds
    return res


def _unique_names(predictors) -> None:
    seen: dict[str, int] = {}
    for p in predictors:
        base = p.name
        if base in seen:
            seen[base] += 1
            p.name = f"{base}#{seen[base]}"
        else:
            seen[base] = 1


def evaluate(
    predictors: list,
    domains: list[Domain],
    out: Path,
    *,
    split: str | None = "test",
    batch: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    gallery: int = 4,
    seg_spacing: float | None = None,
    say=print,
) -> dict:
    """Evaluate every predictor on every domain; write everything under ``out``; return the
    metrics dict (what metrics.json holds)."""
    from . import figures, report

    if not predictors:
        raise EvaluateError("nothing to evaluate: give checkpoint(s) and/or --url")
    domains = [d for d in domains if d.cls_root is not None or d.seg_root is not None]
    if not domains:
        raise EvaluateError("no data: give --cls-data and/or --seg-data")
    _unique_names(predictors)
    sizes = {p.image_size for p in predictors}
    if len(sizes) > 1:
        raise EvaluateError(
            "the models were trained at different image sizes "
            + ", ".join(f"{p.name}: {p.image_size}" for p in predictors)
            + "; evaluate them in separate runs"
        )
    size = sizes.pop()
    opened = {d.name: _open_sets(d, split, seg_spacing, size) for d in domains}
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    collected: dict[str, dict[str, Collected]] = {}
    hist: dict[str, np.ndarray] = {}
    for k, p in enumerate(predictors):
        collected[p.name] = {}
        for d in domains:
            sets, spacing = opened[d.name]
            c = _collect(p, d, sets, spacing, gallery, batch, hist if k == 0 else None)
            collected[p.name][d.name] = c
            parts = []
            if c.cls_labels is not None:
                parts.append(f"accuracy {classification_metrics(c.cls_labels, c.cls_probs)['accuracy']:.3f}")
            if c.seg_metrics:
                parts.append(f"Dice {np.mean([m['dice'] for m in c.seg_metrics]):.3f}")
            say(f"{p.name} | {d.name}: " + ", ".join(parts) + f" ({c.seconds:.1f} s)")

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "split": split,
        "image_size": size,
        "mask_threshold": MASK_THRESHOLD,
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95, "over": "images"},
        "models": {p.name: p.describe() for p in predictors},
        "domains": {
            d.name: {
                "cls_root": str(d.cls_root) if d.cls_root else None,
                "seg_root": str(d.seg_root) if d.seg_root else None,
                "n_cls": len(opened[d.name][0]["cls"]) if "cls" in opened[d.name][0] else 0,
                "n_seg": len(opened[d.name][0]["seg"]) if "seg" in opened[d.name][0] else 0,
                "seg_native_spacing_mm": opened[d.name][1]["native_mm"],
                "seg_spacing_source": opened[d.name][1]["spacing_source"],
                "distance_unit": "mm" if opened[d.name][1]["native_mm"] else "px",
            }
            for d in domains
        },
        "results": {
            name: {dn: _summarise(c, n_boot, seed) for dn, c in per.items()}
            for name, per in collected.items()
        },
    }
    atomic_write_text(
        out / "metrics.json", json.dumps(_finite(results), indent=2, default=_json_default) + "\n"
    )
    _write_csvs(out, results, collected)
    figs = figures.make_all(out / "figures", results, collected, hist)
    report.write_html(out / "report.html", results, figs)
    say(f"wrote {out / 'report.html'}, metrics.json, summary.csv, per_image.csv, figures/")
    return results


def _finite(x):
    """NaN / inf -> None (strict JSON; e.g. an AUROC over a single class)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)) and not math.isfinite(float(x)):
        return None
    return x


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    raise TypeError(type(x))


def _write_csvs(out: Path, results: dict, collected: dict) -> None:
    summary = []
    for model, per in results["results"].items():
        for dom, r in per.items():
            for task, key in (("classification", "value"), ("segmentation", "mean")):
                block = r.get(task)
                if not block:
                    continue
                for k, v in block.items():
                    if isinstance(v, dict) and key in v:
                        summary.append([model, dom, task, k, v[key], *v["ci95"], block["n"]])
    _write_csv(
        out / "summary.csv",
        ["model", "domain", "task", "metric", "value", "ci95_low", "ci95_high", "n"],
        summary,
    )
    per_image = []
    for model, per in collected.items():
        for dom, c in per.items():
            if c.cls_labels is not None:
                for fname, y, p, k in zip(c.cls_files, c.cls_labels, c.cls_probs, c.cls_predicted):
                    per_image.append(
                        [model, dom, "classification", fname, int(y), f"{p[1]:.6f}", int(k)]
                        + [""] * (len(SEG_KEYS) + 1)
                    )
            for fname, m in zip(c.seg_files, c.seg_metrics):
                per_image.append(
                    [model, dom, "segmentation", fname, "", "", ""]
                    + [f"{m[k]:.6f}" for k in SEG_KEYS]
                    + [f"{m['ssim']:.6f}" if "ssim" in m else ""]
                )
            for task, refused in (("classification", c.cls_refused), ("segmentation", c.seg_refused)):
                per_image += [
                    [model, dom, task, fname, "", "", "refused"] + [""] * (len(SEG_KEYS) + 1)
                    for fname in refused
                ]
    _write_csv(
        out / "per_image.csv",
        ["model", "domain", "task", "file", "label", "p_pneumonia", "predicted", *SEG_KEYS, "ssim"],
        per_image,
    )


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *rows])
    atomic_write_text(path, text.getvalue())
