"""The project's own speed goals, judged on a report of `mmtrt bench`.

`mmtrt bench` reports measurements and ratios; what this project aims for lives here, for the
benchmark scripts that state it (cpu_bench.sh, bytes_cpu.sh, openvino_cpu.sh):

    python -m benchmarks.goals OUT/bench.json      (writes OUT/goals.md and prints it)

Each goal is measured in the one run the report holds, at the Triton sweep's batch size:
- the served joint pipeline vs the reference path (best concurrency): >= 4x on a CPU with bf16
  hardware, >= 2.6x on one without, >= 3x on a GPU;
- the saliency graph vs the encoder in each runtime (each at its fastest there): <= 2x;
- each Triton flavour vs the same runtime in-process (both at their best): >= 0.9x;
- sending PNG files (decoded in the server) vs sending tensors, time per image: <= 1.1x.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmtrt.bench.report import markdown_table
from mmtrt.bench.runner import decoding_cost
from mmtrt.bench.targets import TARGETS, Target
from mmtrt.cli import CONTEXT_SETTINGS

#: served joint pipeline / reference path, images per second
SERVED_OVER_REFERENCE = {"CPU with bf16 hardware": 4.0, "CPU without bf16 hardware": 2.6, "GPU": 3.0}
SALIENCY_OVER_ENCODER = 2.0  # time of the saliency graph / time of the encoder graph, one runtime
SERVED_OVER_IN_PROCESS = 0.9  # a Triton flavour / the same runtime in process, images per second
FILES_OVER_TENSORS = 1.1  # time per image sending PNG files / sending tensors, one server
#: the image gate (benchmarks/ood_gate.py): AUROC between the in-domain test split and non-chest
#: images, at no more than this share of in-domain test images rejected
OOD_GATE = {"auroc": 0.99, "in_domain_false_reject": 0.02}


def in_process_counterpart(target: Target) -> Target | None:
    """The in-process target running what the Triton target ``target`` serves: the same runtime,
    pipeline and precision (triton -> ort-fused, triton-ov-bf16 -> ov-fused-bf16)."""
    return next(
        (
            t
            for t in TARGETS.values()
            if not t.served
            and (t.runtime, t.pipeline, t.precision) == (target.runtime, target.pipeline, target.precision)
        ),
        None,
    )


def in_process_of(runtime: str, pipeline: str) -> list[str]:
    return [
        t.name for t in TARGETS.values() if (t.runtime, t.pipeline, t.served) == (runtime, pipeline, False)
    ]


def goals(report: dict, batch: int, host: str) -> list[dict]:
    """Each goal: what it compares, the measured value (None where the run lacks a figure), the
    target and whether it is met. ``report``: bench.json; ``host``: a key of SERVED_OVER_REFERENCE."""
    in_process, triton = report["in_process"], report["triton"]

    def ips(target: str) -> float | None:
        return next(
            (r["images_per_s"] for r in in_process if (r["target"], r["batch"]) == (target, batch)), None
        )

    def fastest_ms(targets: list[str]) -> float | None:
        times = [r["p50_ms"] for r in in_process if r["target"] in targets and r["batch"] == batch]
        return min(times, default=None)

    def served_rows(target: Target) -> list[dict]:
        return [
            r
            for r in triton
            if r["batch"] == batch and r["target"] in (f"{target.name}-http", f"{target.name}-grpc")
        ]

    def best(rows: list[dict]) -> dict | None:
        return max(rows, key=lambda r: r["images_per_s"], default=None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    found = []

    def goal(name: str, measured: float | None, target: float, op: str) -> None:
        met = None if measured is None else (measured >= target if op == ">=" else measured <= target)
        found.append({"goal": name, "measured": measured, "target": f"{op} {target}", "met": met})

    tensors = [t for t in TARGETS.values() if t.transport == "triton-tensors"]
    fastest_served = best([r for t in tensors for r in served_rows(t)])
    goal(
        f"Triton joint pipeline vs reference, batch {batch}, best concurrency ({host}"
        + (f": {fastest_served['target']} c{fastest_served['concurrency']})" if fastest_served else ")"),
        ratio(fastest_served and fastest_served["images_per_s"], ips("reference")),
        SERVED_OVER_REFERENCE[host],
        ">=",
    )
    for runtime, label in (("onnxruntime", "onnxruntime"), ("openvino", "OpenVINO")):
        saliency, encoder = (fastest_ms(in_process_of(runtime, p)) for p in ("saliency", "classify"))
        if saliency is None and encoder is None:
            continue
        goal(
            f"{label} saliency graph time / encoder time (its fastest), batch {batch}",
            ratio(saliency, encoder),
            SALIENCY_OVER_ENCODER,
            "<=",
        )
    for target in tensors:
        served = best(served_rows(target))
        counterpart = in_process_counterpart(target)
        if served is None or counterpart is None:
            continue
        goal(
            f"{target.name} (best: {served['target']} c{served['concurrency']}) vs in-process "
            f"{counterpart.name}, batch {batch}",
            ratio(served["images_per_s"], ips(counterpart.name)),
            SERVED_OVER_IN_PROCESS,
            ">=",
        )
    cost = decoding_cost(triton, batch)
    for protocol in ("grpc", "http"):
        goal(
            f"Triton {protocol}, time per image sending PNG files (decoded in the server) / sending "
            f"tensors, batch {batch} (best concurrency of each)",
            cost[protocol][0] if protocol in cost else None,
            FILES_OVER_TENSORS,
            "<=",
        )
    return found


def host_of(report: dict) -> str:
    """The kind of host the report was measured on: a GPU run has rows of CUDA-only targets; a CPU
    is judged by this host's bf16 hardware (run this where the bench ran)."""
    from mmtrt.runtimes import openvino

    if any(TARGETS[r["target"]].devices == ("cuda",) for r in report["in_process"] if r["target"] in TARGETS):
        return "GPU"
    return "CPU with bf16 hardware" if openvino.host_has("bf16") else "CPU without bf16 hardware"


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("bench_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="The batch size the goals are judged at [default: the Triton sweep's, else 8].",
)
def main(bench_json: Path, batch_size: int | None) -> None:
    """Judge the report BENCH_JSON of `mmtrt bench` against the project's speed goals; writes
    goals.md beside it."""
    report = json.loads(bench_json.read_text())
    batch = batch_size or next((r["batch"] for r in report["triton"]), 8)
    rows = goals(report, batch, host_of(report))
    missed = sum(r["met"] is False for r in rows)
    text = f"# Speed goals\n\nReport: `{bench_json}`\n\n{markdown_table(rows)}\n\n{missed} goal(s) missed.\n"
    (bench_json.parent / "goals.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
