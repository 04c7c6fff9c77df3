"""Where the time of an exported graph goes in OpenVINO's CPU plugin: per-layer execution times
(PERF_COUNT) of one batch, summed by layer type and precision.

    .venv/bin/python benchmarks/openvino_profile.py EXPORT_DIR [--graphs saliency,encoder] \\
        [--precision fp32|bf16] [--batch 8] [--threads 0] [--out benchmarks/results/openvino_profile]

Each graph (``<graph>.onnx``, or its ``<graph>.<precision>.onnx`` copy) is compiled as
mmtrt.runtimes.openvino compiles it (precision hint f32, one stream) plus PERF_COUNT, run twice
to warm up, then ``--calls`` times on a batch of synthetic X-rays; the per-layer real times of the
last call are grouped. Writes OUT.json and OUT.md with the date, machine (lscpu) and command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--graphs", default="encoder,saliency,decoder,multimix")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_profile")
    args = ap.parse_args(argv)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = {
        k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    }
    results = []
    for graph in args.graphs.split(","):
        path = args.export_dir / f"{graph}.{args.precision}.onnx"
        if args.precision == "fp32" or not path.is_file():
            path = args.export_dir / f"{graph}.onnx"
        results.append(profile(path, args.batch, args.threads, args.calls))
        print(f"{path.name}: {results[-1]['median_call_ms']:.0f} ms a call", flush=True)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/openvino_profile.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu.get("Model name"),
        "flags": " ".join(f for f in cpu.get("Flags", "").split() if f.startswith(("avx", "amx"))),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Where the time goes: OpenVINO CPU plugin, per-layer times (PERF_COUNT)",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- CPU: {report['cpu']}; vector flags: {report['flags']}",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['file']}, batch {r['batch']}: {r['median_call_ms']:.0f} ms a call (layers sum {r['layers_ms']:.0f} ms)",
            "",
            "| layer type (precision) | layers | ms | share |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['layer']} | {x['layers']} | {x['ms']:.1f} | {100 * x['share']:.1f}% |"
            for x in r["rows"][:12]
        ]
        lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
