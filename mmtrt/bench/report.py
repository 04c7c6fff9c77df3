"""Benchmark reports: the environment, a JSON file, a Markdown table and a PNG plot."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path

from mmtrt.bench.measure import Measurement
from mmtrt.files import atomic_write, atomic_write_text


def environment() -> dict:
    import torch

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for module in ("onnxruntime", "openvino", "tensorrt"):
        try:
            env[module] = __import__(module).__version__
        except Exception:  # absent or broken: the report says so rather than failing
            env[module] = None
    try:  # its version from the installed metadata: only mmtrt.serving.client imports it
        env["tritonclient"] = importlib.metadata.version("tritonclient")
    except importlib.metadata.PackageNotFoundError:
        env["tritonclient"] = None
    return env


def cpu_model() -> str:
    """The CPU's model name and its vector extensions as lscpu names them (the same model name
    comes with or without AVX-512 / AMX, and the figures depend on which)."""
    from mmtrt.runtimes.openvino import cpu_flags

    name = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vector = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return f"{name} ({' '.join(vector) if vector else 'no AVX'})"


def ratio_table(measurements: list[Measurement], baseline: str) -> list[dict]:
    """One row per measurement with its speed-up over `baseline` at the same batch size."""
    base = {m.batch: m.images_per_s for m in measurements if m.target == baseline}
    rows = []
    for m in measurements:
        rows.append(
            {
                "target": m.target,
                "batch": m.batch,
                "images_per_s": m.images_per_s,
                **{f"{k}_ms": v for k, v in m.latency_ms.items()},
                "peak_memory_mb": m.peak_memory_mb,
                f"x_{baseline}": m.images_per_s / base[m.batch] if m.batch in base else None,
                **m.extra,
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def plot_throughput(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in dict.fromkeys(r["target"] for r in rows):
        points = sorted((r["batch"], r["images_per_s"]) for r in rows if r["target"] == target)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def write_report(
    stem: Path,
    *,
    title: str,
    command: str,
    env: dict,
    sections: dict[str, list[dict]],
    notes: list[str] = (),
    plot_rows: list[dict] | None = None,
) -> None:
    """stem.json, stem.md and (with plot_rows) stem.png."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        stem.with_suffix(".json"),
        json.dumps(
            {"title": title, "command": command, "environment": env, "notes": list(notes), **sections},
            indent=2,
        ),
    )
    md = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None),
        "",
    ]
    md += [f"- {note}" for note in notes]
    for name, rows in sections.items():
        if rows:
            md += ["", f"## {name}", "", markdown_table(rows)]
    if plot_rows:
        plot_throughput(plot_rows, stem.with_suffix(".png"), title)
        md += ["", f"![throughput]({stem.with_suffix('.png').name})"]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
