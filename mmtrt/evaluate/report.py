"""The self-contained HTML report of `mmtrt evaluate`: tables of the metrics with their 95 %
bootstrap intervals, and every figure embedded as a base64 PNG (no external file or network
resource, so the one file can be mailed or archived)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from mmtrt.files import atomic_write_text
from mmtrt.metrics import CALIBRATION_KEYS, CLS_KEYS, ECE_BINS, SEG_KEYS, SEG_LOWER_IS_BETTER

CALIBRATED_EXTRA = ("ece_uncalibrated", "brier_uncalibrated")
LOWER_IS_BETTER = (*SEG_LOWER_IS_BETTER, "ece", "brier", *CALIBRATED_EXTRA)

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f0f0f0; }
.ci { color: #777; font-size: 0.85em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f5f5f5; padding: 1px 4px; }
"""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}"


def _cell(block: dict, key: str, value_key: str) -> str:
    v = block.get(key)
    if not isinstance(v, dict):
        return "<td>-</td>"
    lo, hi = v["ci95"]
    return f'<td>{_fmt(v[value_key])} <span class="ci">[{_fmt(lo)}, {_fmt(hi)}]</span></td>'


def _table(results: dict, task: str, keys, value_key: str, units: dict) -> str:
    rows = []
    for model, per in results["results"].items():
        for dom, r in per.items():
            block = r.get(task)
            if not block:
                continue
            cells = "".join(_cell(block, k, value_key) for k in keys)
            refused = block.get("refused") or 0
            rows.append(
                f"<tr><td>{html.escape(model)}</td><td>{html.escape(dom)}</td><td>{block['n']}</td>"
                f"<td>{refused}</td>{cells}</tr>"
            )
    if not rows:
        return ""
    head = "".join(
        f"<th>{html.escape(k)}{' (' + units.get(k, '') + ')' if units.get(k) else ''}"
        f"{' ↓' if k in LOWER_IS_BETTER else ''}</th>"
        for k in keys
    )
    return (
        f"<table><tr><th>model</th><th>domain</th><th>n</th><th>refused (image gate)</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def _calibration(model: dict) -> str:
    c = model.get("calibration")
    if c:
        return f"temperature {c['temperature']:.4g}, threshold {c['threshold']:.4g}"
    if model.get("kind") == "triton":
        return "its export's, applied by the server"
    return "none (argmax)"


def write_html(path: Path, results: dict, figures: list[tuple[str, Path]]) -> Path:
    units_all = {d["distance_unit"] for d in results["domains"].values()}
    unit = units_all.pop() if len(units_all) == 1 else "mm or px, see domains"
    seg_units = {k: unit for k in SEG_LOWER_IS_BETTER}
    seg_keys = [*SEG_KEYS, "ssim"]
    models = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(str(d.get('kind')))}</td>"
        f"<td><code>{html.escape(str(d.get('source')))}</code></td><td>{_calibration(d)}</td></tr>"
        for n, d in results["models"].items()
    )
    domains = "".join(
        f"<tr><td>{html.escape(n)}</td><td><code>{html.escape(str(d['cls_root']))}</code> ({d['n_cls']})</td>"
        f"<td><code>{html.escape(str(d['seg_root']))}</code> ({d['n_seg']})</td>"
        f"<td>{html.escape(str(d['seg_native_spacing_mm']))} ({html.escape(str(d['seg_spacing_source']))})</td></tr>"
        for n, d in results["domains"].items()
    )
    figs = []
    for title, p in figures:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        figs.append(
            f"<figure><figcaption><h3>{html.escape(title)}</h3></figcaption>"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>'
        )
    b = results["bootstrap"]
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mmtrt evaluate</title>
<style>{CSS}</style></head><body>
<h1>MultiMix evaluation</h1>
<p>{html.escape(results["date"])}; split <code>{html.escape(str(results["split"]))}</code>; mask threshold
{results["mask_threshold"]}; intervals: {b["level"]:.0%} percentile bootstrap over {b["over"]},
{b["resamples"]} resamples, seed {b["seed"]}. Metric definitions: <code>mmtrt/metrics.py</code>
(hd95 / assd: MONAI surface distances; avg_hausdorff: the region-based average; ↓ lower is better).</p>
<h2>Models</h2><table><tr><th>name</th><th>kind</th><th>source</th><th>calibration</th></tr>{models}</table>
<h2>Data</h2><table><tr><th>domain</th><th>classification</th><th>segmentation</th><th>native spacing (mm)</th></tr>{domains}</table>
<h2>Classification</h2>{_table(results, "classification", CLS_KEYS, "value", {})}
<h2>Calibration and operating point</h2><p>Sensitivity, specificity and the confusion matrices:
of the label the model answers, at its operating point (the more probable class for a model
without a calibration). ECE: expected calibration error of P(PNEUMONIA) over {ECE_BINS}
equal-width bins; Brier score: mean squared error of P(PNEUMONIA) (↓ lower is better for both);
<code>_uncalibrated</code>: the same before the temperature of <code>--calibration</code>.</p>
{_table(results, "classification", CALIBRATION_KEYS + CALIBRATED_EXTRA, "value", {})}
<h2>Segmentation (mean per image)</h2>{_table(results, "segmentation", seg_keys, "mean", seg_units)}
<h2>Figures</h2>{"".join(figs)}
</body></html>
"""
    return atomic_write_text(Path(path), doc)
