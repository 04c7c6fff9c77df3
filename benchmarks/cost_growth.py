"""Cost growth on this CPU: how time and memory grow with batch size and with the number of images.

    python -m benchmarks.cost_growth [--checkpoint CKPT --export DIR] [--batch-size 1,2,4,8,16,32]
        [--images 8,32,128,256] [--stream-batch 8] [--seconds 2] [--out benchmarks/results/cost_growth_cpu]

Targets (2 threads each: torch.set_num_threads(2); onnxruntime intra_op_num_threads=2):
  reference  PyTorch eager, autograd saliency + a second encoder pass (as published)
  eager      PyTorch eager, one shared encoder pass with the explicit saliency graph
  ort-fused  onnxruntime, the fused multimix graph of the export
Every measurement runs in a fresh worker process (this script with --worker), so one peak does
not mask the next. A worker loads the model or session and its input batches, reads its
resident size ("loaded"), then:
  (a) batch sweep, per (target, batch): mmtrt.bench.measure (1 warm-up call, then calls until
      both --min-calls and --seconds are reached) on rotating synthetic X-rays; time per call
      (p50), images/s, the process's peak resident memory of the timed calls, the cores it kept
      busy (process CPU time / wall time, warm-up call included);
  (b) stream, per target: one warm-up call (timed, reported as "cold"), then max(--images)
      images at --stream-batch in one stream; the total time and peak memory at each N of --images.
Least-squares lines: time per call and memory vs batch, total time and memory vs N.

Without --checkpoint/--export, a random-initialised checkpoint (`mmtrt init`: seed 0) and its
multimix ONNX graph (mmtrt.export.onnx_graphs.export_onnx) are made in a temporary folder.
Writes <out>.json, <out>.md and <out>.png; --rebuild rewrites them from <out>.json without measuring.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import ROOT, command_line, export_options, exported_pair, report_option, script
from mmtrt.bench.measure import measure, peak_rss_mb, reset_peak_rss, resident_mb
from mmtrt.bench.report import environment, markdown_table
from mmtrt.bench.runner import POOL_SIZE, rotating_batches, xray_pool
from mmtrt.cli_options import IntList, NameList, batch_sizes_option

TARGETS = ("reference", "eager", "ort-fused")
THREADS = 2
LINEAR_R2 = 0.99  # a fit at or above this is called linear
FLAT_MB = 20  # stream peaks within this (or 5 %) of each other are called flat
STARVED_CORES = 0.75 * THREADS  # a row below this many busy cores ran short of cores


# ----------------------------------------------------------------------------- worker side


def load_target(name: str, checkpoint: Path, export: Path):
    """callable(images: torch.Tensor) for one target, at THREADS threads."""
    import torch

    torch.set_num_threads(THREADS)
    if name == "ort-fused":
        from mmtrt.runtimes import ort

        # (runner.onnx_targets uses onnxruntime's default thread count; this study sets it)
        session = ort.session(export / "multimix.onnx", threads=THREADS)
        return lambda images: session.run(None, {"image": images.numpy()})
    from mmtrt.bench.torch_targets import torch_targets
    from mmtrt.checkpoint import load_checkpoint

    return torch_targets(load_checkpoint(checkpoint)[0], torch.device("cpu"), [name])[name]


def xray_batches(batch: int) -> list:
    """Distinct batches of synthetic X-rays (runner.rotating_batches over a pool at least twice
    the batch, so that large batches differ too)."""
    import torch

    return rotating_batches(torch.from_numpy(xray_pool(max(POOL_SIZE, 2 * batch))), batch)


def measure_one(job: dict) -> dict:
    run = load_target(job["target"], Path(job["checkpoint"]), Path(job["export"]))
    batches = xray_batches(job["batch"])
    loaded = resident_mb()
    if job["mode"] == "batch":
        cpu0, wall0 = time.process_time(), time.perf_counter()
        m = measure(
            job["target"],
            run,
            batches,
            warmup=1,
            min_calls=job["min_calls"],
            min_seconds=job["seconds"],
            max_seconds=job["max_seconds"],
        )
        cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        return {
            "target": m.target,
            "batch": m.batch,
            "calls": m.calls,
            "ms_per_image": m.latency_ms["p50"] / m.batch,
            "images_per_s": m.images_per_s,
            **{f"{k}_ms": v for k, v in m.latency_ms.items()},
            "cores_busy": cores,
            "loaded_mb": loaded,
            "peak_mb": m.peak_memory_mb,
            "peak_above_loaded_mb": None if m.peak_memory_mb is None else m.peak_memory_mb - loaded,
            "resident_after_mb": resident_mb(),
            "load_1min": os.getloadavg()[0],
        }
    # Stream: a plain loop rather than measure(), because the figures wanted are the running
    # total and the running peak at each N, not per-call percentiles.
    t0 = time.perf_counter()
    run(batches[0])
    cold_ms = (time.perf_counter() - t0) * 1e3
    have_peak = reset_peak_rss()
    rows, total, cpu0 = [], 0.0, time.process_time()
    for i in range(max(job["images"]) // job["batch"]):
        t0 = time.perf_counter()
        run(batches[(i + 1) % len(batches)])  # batches[0] was the warm-up call's
        total += time.perf_counter() - t0
        n = (i + 1) * job["batch"]
        if n in job["images"]:
            peak = peak_rss_mb() if have_peak else None
            rows.append(
                {
                    "target": job["target"],
                    "images": n,
                    "calls": i + 1,
                    "total_s": total,
                    "ms_per_image": total * 1e3 / n,
                    "cores_busy": (time.process_time() - cpu0) / total,
                    "loaded_mb": loaded,
                    "peak_mb": peak,
                    "peak_above_loaded_mb": None if peak is None else peak - loaded,
                    "resident_mb": resident_mb(),
                    "load_1min": os.getloadavg()[0],
                }
            )
    return {"target": job["target"], "cold_call_ms": cold_ms, "rows": rows}


# ----------------------------------------------------------------------------- study side


def prepare(checkpoint: Path | None, export: Path | None) -> tuple[Path, Path, str]:
    """checkpoint, export folder, and a line saying where they came from."""
    if exported_pair(checkpoint, export):
        if not (export / "multimix.onnx").is_file():
            raise click.UsageError(f"{export} holds no multimix.onnx")
        return checkpoint, export, f"checkpoint {checkpoint}, export {export}"
    import torch

    from mmtrt.checkpoint import save_checkpoint
    from mmtrt.export.onnx_graphs import export_onnx
    from mmtrt.graphs import GRAPHS
    from mmtrt.model import MultiMix

    work = Path(tempfile.mkdtemp(prefix="mmtrt-cost-"))
    torch.manual_seed(0)  # as `mmtrt init` (seed 0)
    model = MultiMix().eval()
    save_checkpoint(work / "ckpt.pt", model, meta={"origin": "random initialisation", "seed": 0})
    (work / "export").mkdir()
    print(
        f"exporting the multimix graph of a random-initialised checkpoint into {work / 'export'}",
        file=sys.stderr,
    )
    export_onnx(GRAPHS["multimix"], model, work / "export" / "multimix.onnx")
    return (
        work / "ckpt.pt",
        work / "export",
        "random-initialised MultiMix (seed 0), its multimix graph exported by export_onnx",
    )


def run_worker(job: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cost_growth", "--worker", json.dumps(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"worker {job['mode']} {job['target']} b{job['batch']} failed:\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit(x, y) -> dict:
    """Least-squares line y = slope * x + intercept and its R^2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x, y, 1)
    residual = ((y - (slope * x + intercept)) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return {
        "points": len(x),
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": float(1 - residual / total) if total > 0 else 1.0,
    }


def starved(row: dict) -> bool:
    """A row whose process kept fewer than STARVED_CORES of its THREADS cores busy."""
    return row["cores_busy"] < STARVED_CORES


def fits(sweep: list[dict], stream: list[dict]) -> list[dict]:
    out = []
    for target in dict.fromkeys(r["target"] for r in sweep + stream):
        a = [r for r in sweep if r["target"] == target]
        b = [r for r in stream if r["target"] == target]
        full = [r for r in a if not starved(r)]
        cases = [("batch sweep", a, "batch", "p50_ms", "time per call (p50)", "ms per image / ms")]
        if len(full) < len(a):  # the same line without the rows that ran short of cores
            cases.append(
                (
                    "batch sweep",
                    full,
                    "batch",
                    "p50_ms",
                    f"time per call (p50), rows at >= {STARVED_CORES} cores busy",
                    "ms per image / ms",
                )
            )
        cases += [
            (
                "batch sweep",
                a,
                "batch",
                "peak_above_loaded_mb",
                "peak memory above loaded",
                "MB per image / MB",
            ),
            ("stream", b, "images", "total_s", "total time", "s per image / s"),
            ("stream", b, "images", "peak_above_loaded_mb", "peak memory above loaded", "MB per image / MB"),
        ]
        for study, rows, x, y, quantity, unit in cases:
            if len(rows) >= 2 and all(r[y] is not None for r in rows):
                out.append(
                    {
                        "target": target,
                        "study": study,
                        "quantity": f"{quantity} vs {x}",
                        **fit([r[x] for r in rows], [r[y] for r in rows]),
                        "unit (slope / intercept)": unit,
                    }
                )
    return out


def findings(sweep: list[dict], stream: list[dict], cold: dict, fitted: list[dict]) -> list[str]:
    """Plain statements drawn from the measured figures only."""
    lines = []
    for f in fitted:
        verdict = "linear" if f["r2"] >= LINEAR_R2 else "NOT linear"
        if f["points"] < 3:
            verdict = "two points only, a line fits them by construction"
        elif f["study"] == "stream" and "memory" in f["quantity"]:
            verdict = _stream_memory_verdict([r for r in stream if r["target"] == f["target"]])
        elif f["study"] == "batch sweep" and "time" in f["quantity"] and f["intercept"] < 0:
            verdict += ", with a negative intercept: the time per image rises with the batch"
        lines.append(
            f"{f['target']}, {f['study']}, {f['quantity']}: {verdict} (R^2 {f['r2']:.4f}); "
            f"slope {f['slope']:.4g}, intercept {f['intercept']:.4g} ({f['unit (slope / intercept)']})"
        )
    short = {}
    for target in dict.fromkeys(r["target"] for r in sweep):
        rows = sorted((r for r in sweep if r["target"] == target), key=lambda r: r["batch"])
        full = [r for r in rows if not starved(r)]
        short[target] = [r for r in rows if starved(r)]
        if short[target] and full:
            lo, hi = (f(r["load_1min"] for r in short[target]) for f in (min, max))
            lines.append(
                f"{target}: at batch {', '.join(str(r['batch']) for r in short[target])} the process kept only "
                f"{min(r['cores_busy'] for r in short[target]):.2f}-{max(r['cores_busy'] for r in short[target]):.2f} "
                f"of its {THREADS} cores busy, while the load average (1 min) was {lo:.2f}-{hi:.2f} (its own "
                f"{THREADS} threads make about {THREADS} of that); at batch {', '.join(str(r['batch']) for r in full)} "
                f"it kept {min(r['cores_busy'] for r in full):.2f}-{max(r['cores_busy'] for r in full):.2f} busy. "
                "Those rows measure other work on this shared machine taking a core, not the cost of the batch size"
            )
        if len(full) >= 2:
            per_image = ", ".join(f"{r['ms_per_image']:.0f} ms (batch {r['batch']})" for r in full)
            rises = full[-1]["ms_per_image"] > 1.1 * min(r["ms_per_image"] for r in full)
            lines.append(
                f"{target}: time per image with the cores busy: {per_image}"
                + (
                    "; it rises with the batch while the cores stay busy, so the larger calls are not short of cores: "
                    "this run does not measure which resource (caches, memory bandwidth, page faults) sets the rise"
                    if rises
                    else ""
                )
            )
        if rows[0]["peak_above_loaded_mb"] is not None:
            kept = [
                (r["batch"], r["resident_after_mb"] - r["loaded_mb"], r["peak_above_loaded_mb"]) for r in rows
            ]
            lines.append(
                f"{target}: resident above loaded after the timed calls / peak: "
                + ", ".join(f"{k:.0f} / {p:.0f} MB (batch {b})" for b, k, p in kept)
            )
    ort_short = short.get("ort-fused")
    if ort_short and len(ort_short) < len([r for r in sweep if r["target"] == "ort-fused"]):
        lines.append(
            "ort-fused: its threads spin while they wait and count as busy whenever they are scheduled, so it "
            f"shows about {THREADS} cores busy whenever {THREADS} are free (the other batches, the stream); "
            f"its drop at batch {', '.join(str(r['batch']) for r in ort_short)} means a core was taken, not "
            "left idle by a small batch"
        )
    for target, rows in ((t, [r for r in stream if r["target"] == t]) for t in cold):
        if rows:
            warm = rows[0]["total_s"] * 1e3 / rows[0]["calls"]
            lines.append(
                f"{target}: stream's first (cold) call {cold[target]:.0f} ms against {warm:.0f} ms per warm call "
                f"over the first {rows[0]['images']} images (the cold call is not in the totals)"
            )
    return lines


def _stream_memory_verdict(rows: list[dict]) -> str:
    """At a fixed batch the expected line is flat, where R^2 says nothing: judge the running peak."""
    rows = sorted(rows, key=lambda r: r["images"])
    peaks = [r["peak_above_loaded_mb"] for r in rows]
    near = lambda a, b: abs(a - b) <= max(FLAT_MB, 0.05 * max(peaks))  # noqa: E731
    resident = (
        f"resident above loaded {rows[0]['resident_mb'] - rows[0]['loaded_mb']:.0f} MB at N {rows[0]['images']}, "
        f"{rows[-1]['resident_mb'] - rows[-1]['loaded_mb']:.0f} MB at N {rows[-1]['images']}"
    )
    if near(max(peaks), min(peaks)):
        return f"flat: peak {min(peaks):.0f} to {max(peaks):.0f} MB over N {rows[0]['images']} to {rows[-1]['images']}; {resident}"
    if len(peaks) >= 2 and near(peaks[-1], peaks[-2]):
        return (
            f"settles: peak {peaks[0]:.0f} MB at N {rows[0]['images']}, {peaks[-2]:.0f} MB at N {rows[-2]['images']}, "
            f"{peaks[-1]:.0f} MB at N {rows[-1]['images']} (a running maximum: some later call peaked higher); {resident}"
        )
    return f"GROWS: peak {peaks[0]:.0f} MB at N {rows[0]['images']} to {peaks[-1]:.0f} MB at N {rows[-1]['images']}; {resident}"


def plot(sweep: list[dict], stream: list[dict], stream_batch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    memory, stream_x = (
        "peak resident memory above loaded (MB)",
        f"images processed (batch {stream_batch} calls)",
    )
    panels = (
        (axes[0, 0], sweep, "batch", "p50_ms", "batch size", "time per call, p50 (ms)"),
        (axes[0, 1], sweep, "batch", "peak_above_loaded_mb", "batch size", memory),
        (axes[1, 0], stream, "images", "total_s", stream_x, "total time (s)"),
        (axes[1, 1], stream, "images", "peak_above_loaded_mb", stream_x, memory),
    )
    for ax, rows, x, y, xlabel, ylabel in panels:
        for target in dict.fromkeys(r["target"] for r in rows):
            mine = sorted((r for r in rows if r["target"] == target and r[y] is not None), key=lambda r: r[x])
            points = [(r[x], r[y]) for r in mine]
            if points:
                (line,) = ax.plot(*zip(*points), marker="o", label=target)
                short = [(r[x], r[y]) for r in mine if starved(r)]
                if short:
                    ax.plot(*zip(*short), ls="", marker="o", mfc="white", color=line.get_color())
                if len(points) >= 2:  # the least-squares line, dashed
                    f = fit(*zip(*points))
                    xs = np.array([0, points[-1][0]])
                    ax.plot(xs, f["slope"] * xs + f["intercept"], ls="--", lw=0.8, color=line.get_color())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(record: dict, png: str) -> str:
    m, s = record["machine"], record["settings"]
    env = record["environment"]
    load = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    lines = [
        "# Cost growth on CPU: time and memory vs batch size and vs number of images",
        "",
        f"- date: {env['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['platform']}); load average (1, 5, 15 min) at start "
        f"{load(m['load_average_start'])}, at end {load(m['load_average_end'])} (shared machine)",
        f"- command: `{record['command']}`"
        + (f" (report rebuilt from its JSON by `{record['rebuilt']}`)" if record.get("rebuilt") else ""),
        "- versions: " + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "onnxruntime") if env.get(k)),
        f"- model: {record['model']}; synthetic chest X-rays 1x256x256 (mmtrt.bench.runner.xray_pool), 4 distinct batches rotated",
        f"- threads: {record['threads']}",
        f"- batch sweep: batches {s['batches']}, each (target, batch) in a fresh process: 1 warm-up call, then at least "
        f"{s['min_calls']} calls and {s['seconds']} s (at most {s['max_seconds']} s); time per call = p50",
        f"- stream: {max(s['images'])} images at batch {s['stream_batch']} per target in a fresh process after one warm-up "
        f"call; totals and peaks read at N = {s['images']} of the same stream",
        "- memory: the process's peak resident memory (VmHWM, reset after the warm-up call) minus its resident size "
        'after loading the model/session and its input batches ("loaded"); both figures are in the tables',
        "- cores busy: process CPU time / wall time (onnxruntime's threads spin while waiting, which counts as busy); "
        f"a row below {STARVED_CORES} ran short of cores (hollow markers in the plot)",
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {f}" for f in record["findings"]]
    fits_md = [{**f, "r2": f"{f['r2']:.4f}"} for f in record["fits"]]  # 3 digits would round 0.9996 to 1
    lines += [
        "",
        "## Least-squares lines",
        "",
        markdown_table(fits_md),
        "",
        "## Batch sweep",
        "",
        markdown_table(record["batch_sweep"]),
        "",
        "## Stream",
        "",
        "cold call (not in the totals): "
        + ", ".join(f"{t} {v:.0f} ms" for t, v in record["cold_call_ms"].items()),
        "",
        markdown_table(record["stream"]),
        "",
        f"![cost growth]({png})",
        "",
    ]
    return "\n".join(lines)


@script(__doc__)
@export_options("a random-initialised checkpoint (seed 0) and its multimix graph")
@click.option("--targets", type=NameList(TARGETS), default=",".join(TARGETS))
@batch_sizes_option("1,2,4,8,16,32", "The batch sweep (comma-separated).")
@click.option(
    "--images",
    type=IntList(),
    default="8,32,128,256",
    help="N for the stream (multiples of --stream-batch).",
)
@click.option("--stream-batch", type=click.IntRange(min=1), default=8)
@click.option("--seconds", type=float, default=2.0, help="Minimum timed seconds per batch-sweep row.")
@click.option("--min-calls", type=click.IntRange(min=1), default=3, help="Minimum timed calls per row.")
@click.option("--max-seconds", type=float, default=60.0, help="Timed seconds after which a row stops.")
@report_option("cost_growth_cpu", "OUT.json, OUT.md and OUT.png")
@click.option("--worker", hidden=True, help="One measurement, as JSON (the study runs itself with it).")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Measure nothing: rewrite the report (lines, findings, plot) from <out>.json.",
)
def main(
    checkpoint: Path | None,
    export: Path | None,
    targets: list[str],
    batch_sizes: list[int],
    images: list[int],
    stream_batch: int,
    seconds: float,
    min_calls: int,
    max_seconds: float,
    out: Path,
    worker: str | None,
    rebuild: bool,
) -> None:
    if worker:
        click.echo(json.dumps(measure_one(json.loads(worker))))
        return
    if rebuild:
        record = json.loads(out.with_suffix(".json").read_text())
        record["rebuilt"] = command_line()
        write(record, out)
        return

    from tqdm import tqdm

    batches = batch_sizes
    if any(n % stream_batch for n in images):
        raise click.BadParameter(f"give multiples of --stream-batch {stream_batch}", param_hint="--images")
    load_start = os.getloadavg()
    env = environment()
    command = command_line()
    checkpoint, export, model = prepare(checkpoint, export)
    common = {"checkpoint": str(checkpoint.resolve()), "export": str(export.resolve())}  # workers run in ROOT
    # Targets interleaved within each batch size, so that load from other work drifts over all.
    jobs = [
        {
            "mode": "batch",
            "target": t,
            "batch": b,
            "seconds": seconds,
            "min_calls": min_calls,
            "max_seconds": max_seconds,
            **common,
        }
        for b in batches
        for t in targets
    ]
    jobs += [
        {"mode": "stream", "target": t, "batch": stream_batch, "images": images, **common} for t in targets
    ]
    sweep, stream, cold = [], [], {}
    with tqdm(jobs, desc="cost growth", unit="worker") as bar:
        for job in bar:
            bar.set_postfix_str(f"{job['mode']} {job['target']} b{job['batch']}")
            result = run_worker(job)
            if job["mode"] == "batch":
                sweep.append(result)
            else:
                stream += result["rows"]
                cold[result["target"]] = result["cold_call_ms"]
    record = {
        "title": "cost growth on CPU",
        "command": command,
        "environment": env,
        "machine": {
            "cpu": env["cpu"],
            "cores": env["cpu_cores"],
            "platform": platform.platform(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "model": model,
        "threads": f"torch.set_num_threads({THREADS}); onnxruntime intra_op_num_threads={THREADS}, inter_op_num_threads=1",
        "settings": {
            "targets": targets,
            "batches": batches,
            "images": images,
            "stream_batch": stream_batch,
            "seconds": seconds,
            "min_calls": min_calls,
            "max_seconds": max_seconds,
        },
        "batch_sweep": sweep,
        "stream": stream,
        "cold_call_ms": cold,
    }
    write(record, out)


def write(record: dict, out: Path) -> None:
    """<out>.json, .md and .png, with the lines fitted and the findings drawn from the record's rows."""
    sweep, stream = record["batch_sweep"], record["stream"]
    record["fits"] = fits(sweep, stream)
    record["findings"] = findings(sweep, stream, record["cold_call_ms"], record["fits"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    plot(
        sweep,
        stream,
        record["settings"]["stream_batch"],
        out.with_suffix(".png"),
        f"MultiMix cost growth, {record['machine']['cpu']}, {THREADS} threads "
        f"(hollow markers: fewer than {STARVED_CORES} cores busy)",
    )
    out.with_suffix(".md").write_text(markdown(record, out.with_suffix(".png").name))
    click.echo(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
