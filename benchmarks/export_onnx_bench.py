"""Benchmark of the exported ONNX graphs in onnxruntime on this CPU, against PyTorch eager.

    python -m benchmarks.export_onnx_bench [--export DIR --checkpoint CKPT] [--batch-size 1,8] [--repeats 7]

Without --export, a random-initialised checkpoint (`mmtrt init`, the real architecture) is
exported first (fp32, no engines). Every case runs in the same process, interleaved: each round
times every case once, in a rotated order, so that load from other work on a shared machine
spreads over all cases instead of landing on one; the figures are medians over the rounds.

Cases per batch size, on synthetic chest X-rays:
  onnxruntime: encoder, saliency, decoder, split (saliency then decoder), multimix (fused)
  PyTorch eager (no_grad, float32): the same graphs (mmtrt.graphs)
Ratios: saliency / encoder (the goal of benchmarks/goals.py), fused / split, onnxruntime / eager
per graph.

Writes benchmarks/results/export_onnx_cpu.md and .json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import torch

from benchmarks import command_line, export_options, exported_pair, report_option, script
from benchmarks.goals import SALIENCY_OVER_ENCODER
from mmtrt.bench.report import cpu_model, markdown_table
from mmtrt.checkpoint import load_checkpoint, save_checkpoint
from mmtrt.cli_options import batch_sizes_option
from mmtrt.export.manifest import read_manifest, versions
from mmtrt.graphs import GRAPHS
from mmtrt.model import MultiMix
from mmtrt.parity import make_image
from mmtrt.runtimes import ort as ort_runtime


def prepare_export(export: Path | None, checkpoint: Path | None) -> tuple[Path, MultiMix]:
    if exported_pair(checkpoint, export):
        read_manifest(export)  # (a clear error for a folder that is no export)
        return export, load_checkpoint(checkpoint)[0]
    from mmtrt.export.exporter import export_model

    work = Path(tempfile.mkdtemp(prefix="mmtrt-bench-"))
    torch.manual_seed(0)
    model = MultiMix().eval()
    save_checkpoint(work / "ckpt.pt", model, meta={"origin": "random initialisation", "seed": 0})
    print(f"exporting a random-initialised checkpoint into {work / 'export'} (takes a few minutes)")
    from mmtrt.data import write_synthetic_datasets

    write_synthetic_datasets(
        work / "data", n_cls={"train": 16, "val": 16, "test": 0}, n_seg=0
    )  # the image gate's
    export_model(
        work / "ckpt.pt",
        work / "export",
        engines=False,
        ood_data=work / "data" / "cls",
        echo=lambda *a, **k: None,
    )
    return work / "export", load_checkpoint(work / "ckpt.pt")[0]


def build_cases(folder: Path, model: MultiMix, batch: int) -> dict:
    images = torch.stack([make_image("xray", 9_000 + i) for i in range(batch)])
    ort = {name: ort_runtime.runner(folder / f"{name}.onnx") for name in GRAPHS}
    eager = {name: spec.build(model) for name, spec in GRAPHS.items()}
    with torch.no_grad():
        features = dict(zip(GRAPHS["saliency"].outputs, eager["saliency"](images)))
    decoder_inputs = {n: (images if n == "image" else features[n]) for n in GRAPHS["decoder"].inputs}
    np_image = {"image": images.numpy()}
    np_decoder = {n: t.numpy() for n, t in decoder_inputs.items()}

    def split():
        out = ort["saliency"](np_image)
        ort["decoder"]({n: (np_image["image"] if n == "image" else out[n]) for n in GRAPHS["decoder"].inputs})

    def eager_run(name, inputs):
        def run():
            with torch.no_grad():
                eager[name](*inputs)

        return run

    return {
        "ort encoder": lambda: ort["encoder"](np_image),
        "ort saliency": lambda: ort["saliency"](np_image),
        "ort decoder": lambda: ort["decoder"](np_decoder),
        "ort split": split,
        "ort multimix": lambda: ort["multimix"](np_image),
        "eager encoder": eager_run("encoder", [images]),
        "eager saliency": eager_run("saliency", [images]),
        "eager decoder": eager_run("decoder", [decoder_inputs[n] for n in GRAPHS["decoder"].inputs]),
        "eager multimix": eager_run("multimix", [images]),
    }


def measure(cases: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    for run in cases.values():
        for _ in range(warmup):
            run()
    names = list(cases)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate the order every round
        for name in order:
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
    return times


@script(__doc__)
@export_options("a random-initialised checkpoint, exported (a few minutes)")
@batch_sizes_option("1,8")
@click.option("--repeats", type=click.IntRange(min=1), default=7, help="Timed rounds per batch size.")
@report_option("export_onnx_cpu")
def main(
    export: Path | None, checkpoint: Path | None, batch_sizes: list[int], repeats: int, out: Path
) -> None:
    load_before = os.getloadavg()
    folder, model = prepare_export(export, checkpoint)
    results = {}
    for batch in batch_sizes:
        click.echo(f"batch {batch}: {repeats} interleaved rounds")
        times = measure(build_cases(folder, model, batch), repeats)
        med = {name: statistics.median(t) for name, t in times.items()}
        results[batch] = {
            "median_s": med,
            "min_s": {name: min(t) for name, t in times.items()},
            "max_s": {name: max(t) for name, t in times.items()},
            "ratios": {
                "ort saliency / ort encoder": med["ort saliency"] / med["ort encoder"],
                "ort multimix (fused) / ort split": med["ort multimix"] / med["ort split"],
                "eager saliency / eager encoder": med["eager saliency"] / med["eager encoder"],
                **{f"ort {g} / eager {g}": med[f"ort {g}"] / med[f"eager {g}"] for g in GRAPHS},
            },
        }
    record = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "command": command_line(),
        "versions": versions(),
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": "default (one per core)"},
        "export": str(folder),
        "repeats": repeats,
        "images": "synthetic chest X-rays, 1x256x256",
        "goal": {"ort saliency / ort encoder": SALIENCY_OVER_ENCODER},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    click.echo(markdown(record))


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "# Exported ONNX graphs on CPU: onnxruntime vs PyTorch eager",
        "",
        f"- date: {record['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['platform']}); load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_after'])} (shared machine)",
        f"- command: `{record['command']}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
        f"- method: {record['repeats']} interleaved rounds per batch size (every case once per round, "
        "order rotated), medians; 2 warm-up calls per case; " + record["images"],
        "",
    ]
    for batch, r in record["results"].items():
        cases = [
            {
                "case": name,
                "median ms": f"{t * 1e3:.1f}",
                "min ms": f"{r['min_s'][name] * 1e3:.1f}",
                "max ms": f"{r['max_s'][name] * 1e3:.1f}",
            }
            for name, t in r["median_s"].items()
        ]
        goals = record["goal"]
        ratios = [
            {"ratio": name + (f" (goal <= {goals[name]})" if name in goals else ""), "value": f"{v:.2f}"}
            for name, v in r["ratios"].items()
        ]
        lines += [f"## batch {batch}", "", markdown_table(cases), "", markdown_table(ratios), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
