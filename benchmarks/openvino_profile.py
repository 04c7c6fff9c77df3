"""Where the time of an exported graph goes in OpenVINO's CPU plugin: per-layer execution times
(PERF_COUNT) of one batch, summed by layer type and precision.

    python -m benchmarks.openvino_profile EXPORT_DIR [--graphs saliency,encoder] \\
        [--precision fp32|bf16] [--batch-size 8] [--threads 0] [--out benchmarks/results/openvino_profile]

Each graph (``<graph>.onnx``, or its ``<graph>.<precision>.onnx`` copy) is compiled as
mmtrt.runtimes.openvino compiles it (precision hint f32, one stream) plus PERF_COUNT, run twice
to warm up, then ``--calls`` times on a batch of synthetic X-rays; the per-layer real times of the
last call are grouped. Writes OUT.json and OUT.md with the date, CPU and command.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from benchmarks import command_line, report_option, script
from mmtrt.bench.report import cpu_model, markdown_table
from mmtrt.cli_options import batch_size_option
from mmtrt.runtimes.openvino import cpu_flags


def profile(path: Path, batch: int, threads: int, calls: int) -> dict:
    import openvino as ov

    from mmtrt.bench.runner import xray_pool
    from mmtrt.runtimes import openvino

    core = ov.Core()
    compiled = core.compile_model(
        str(path), "CPU", {**openvino.properties(threads=threads), "PERF_COUNT": "YES"}
    )
    request = compiled.create_infer_request()
    images = xray_pool(batch)
    feed = {}
    rng = np.random.default_rng(0)
    for port in compiled.inputs:
        shape = [batch if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
        name = port.get_any_name()
        feed[name] = images if name == "image" else rng.random(shape, dtype=np.float32)
    for _ in range(2):
        request.infer(feed)
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        request.infer(feed)
        walls.append(time.perf_counter() - t0)
    groups: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for info in request.profiling_info:
        if info.status != info.Status.EXECUTED:
            continue
        key = (
            f"{info.node_type} ({info.exec_type.split('_')[-1] if '_' in info.exec_type else info.exec_type})"
        )
        groups[key] += info.real_time.total_seconds() * 1e3
        counts[key] += 1
    total = sum(groups.values())
    rows = sorted(
        ({"layer": k, "layers": counts[k], "ms": v, "share": v / total} for k, v in groups.items()),
        key=lambda r: -r["ms"],
    )
    return {
        "file": path.name,
        "batch": batch,
        "median_call_ms": 1e3 * float(np.median(walls)),
        "layers_ms": total,
        "rows": rows,
    }


@script(__doc__)
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--graphs", default="encoder,saliency,decoder,multimix")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32")
@batch_size_option("Images per call.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="0: OpenVINO's default.")
@click.option("--calls", type=click.IntRange(min=1), default=5)
@report_option("openvino_profile")
def main(
    export_dir: Path, graphs: str, precision: str, batch_size: int, threads: int, calls: int, out: Path
) -> None:
    results = []
    for graph in graphs.split(","):
        path = export_dir / f"{graph}.{precision}.onnx"
        if precision == "fp32" or not path.is_file():
            path = export_dir / f"{graph}.onnx"
        results.append(profile(path, batch_size, threads, calls))
        click.echo(f"{path.name}: {results[-1]['median_call_ms']:.0f} ms a call")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "cpu": cpu_model(),
        "flags": " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Where the time goes: OpenVINO CPU plugin, per-layer times (PERF_COUNT)",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- CPU: {report['cpu']}; vector flags: {report['flags']}",
        "",
    ]
    for r in results:
        rows = [
            {
                "layer type (precision)": x["layer"],
                "layers": x["layers"],
                "ms": f"{x['ms']:.1f}",
                "share": f"{100 * x['share']:.1f}%",
            }
            for x in r["rows"][:12]
        ]
        lines += [
            f"## {r['file']}, batch {r['batch']}: {r['median_call_ms']:.0f} ms a call (layers sum {r['layers_ms']:.0f} ms)",
            "",
            markdown_table(rows),
            "",
        ]
    out.with_suffix(".md").write_text("\n".join(lines))
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
