"""The body of `mmtrt bench`: build the targets, measure them on the same images, report."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from mmtrt.bench.measure import Measurement, measure
from mmtrt.bench.report import environment, ratio_table, write_report

POOL_SIZE = 32  # distinct synthetic X-rays rotated across calls


def xray_pool(n: int = POOL_SIZE, seed: int = 0) -> np.ndarray:
    from mmtrt.data import synth_xray

    return np.stack([synth_xray(seed + i, label=i % 2)[0] for i in range(n)]).astype(np.float32)[:, None] / 255.0


def onnx_targets(export_dir: Path, names: list[str]) -> dict:
    """name -> callable(images: torch.Tensor) over onnxruntime sessions of the exported graphs."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}

    def session(graph: str) -> ort.InferenceSession:
        if graph not in sessions:
            sessions[graph] = ort.InferenceSession(str(export_dir / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        return sessions[graph]

    def split(images):
        feed = images.numpy()
        outs = session("saliency").run(None, {"image": feed})
        names_out = [o.name for o in session("saliency").get_outputs()]
        values = dict(zip(names_out, outs))
        decoder_inputs = {i.name: (feed if i.name == "image" else values[i.name]) for i in session("decoder").get_inputs()}
        mask = session("decoder").run(["mask"], decoder_inputs)[0]
        return values["probs"], mask, values["saliency"]

    makers = {
        "ort-fused": lambda: (lambda images: session("multimix").run(None, {"image": images.numpy()})),
        "ort-split": lambda: split,
        "ort-encoder": lambda: (lambda images: session("encoder").run(None, {"image": images.numpy()})),
        "ort-saliency": lambda: (lambda images: session("saliency").run(None, {"image": images.numpy()})),
    }
    return {name: makers[name]() for name in names if name in makers}


def run_bench(checkpoint: Path, export_dir: Path, out: Path, *, targets: list[str], batch_sizes: list[int],
              concurrency: list[int], triton_batch: int, seconds: float, use_perf_analyzer: bool,
              progress, command: str) -> dict:
    from mmtrt.bench.torch_targets import torch_targets
    from mmtrt.checkpoint import load_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_checkpoint(checkpoint)
    pool = xray_pool()
    in_process = {}
    torch_names = [t for t in targets if t in ("reference", "eager", "compiled")]
    if torch_names:
        in_process.update(torch_targets(model, torch.device("cpu"), torch_names))
    in_process.update(onnx_targets(export_dir, targets))

    measurements: list[Measurement] = []
    for batch in batch_sizes:
        batches = [torch.from_numpy(pool[(i * batch) % (POOL_SIZE - batch + 1):][:batch]) for i in range(4)]
        for name in [t for t in targets if t in in_process]:
            progress.set_postfix_str(f"{name} b{batch}")
            # (a CPU call of the reference path takes seconds: the timed duration, not a call
            # count, bounds each measurement)
            measurements.append(measure(name, in_process[name], batches, warmup=1, min_calls=3, min_seconds=seconds))
            progress.update(1)

    triton_rows: list[Measurement] = []
    notes = []
    if "triton" in targets:
        triton_rows, triton_notes = _triton_sweep(export_dir, pool, triton_batch, concurrency, seconds,
                                                  use_perf_analyzer, progress)
        notes += triton_notes

    rows = ratio_table(measurements, baseline="reference")
    reference_at = {m.batch: m.images_per_s for m in measurements if m.target == "reference"}
    triton_table = [{"target": m.target, "batch": m.batch, "concurrency": m.extra.get("concurrency"),
                     "images_per_s": m.images_per_s, **{f"{k}_ms": v for k, v in m.latency_ms.items()},
                     "x_reference": m.images_per_s / reference_at[m.batch] if m.batch in reference_at else None,
                     **{k: v for k, v in m.extra.items() if k != "concurrency"}} for m in triton_rows]
    goals = _goals(measurements, triton_rows, triton_batch)
    env = environment()
    notes += ["Every ratio is measured in this run against the reference path (autograd saliency + a second encoder pass, PyTorch eager fp32) at the same batch size.",
              "In-process targets run one call at a time; Triton targets run `concurrency` clients at once."]
    write_report(out / "bench", title="mmtrt bench", command=command, env=env,
                 sections={"goals": goals, "in_process": rows, "triton": triton_table}, notes=notes, plot_rows=rows)
    if triton_table:
        _plot_concurrency(triton_table, out / "bench_concurrency.png")
    _plot_latency(rows + triton_table, out / "bench_latency.png")
    return {"goals": goals, "in_process": rows, "triton": triton_table}


def _triton_sweep(export_dir, pool, batch, concurrency, seconds, use_perf_analyzer, progress):
    from mmtrt.bench import load
    from mmtrt.serving import TritonServer, build_repository

    notes = []
    rows: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="mmtrt-bench-") as tmp:
        repo = build_repository(export_dir, Path(tmp) / "repo", flavour="cpu")
        with TritonServer(repo) as server:
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                for clients in concurrency:
                    progress.set_postfix_str(f"triton-{protocol} c{clients}")
                    rows.append(load.run_load(protocol, url, "multimix", pool, batch, clients, seconds,
                                              stats_url=server.http_url))
                    progress.update(1)
            if use_perf_analyzer:
                try:
                    rows += load.run_perf_analyzer(server.grpc_url, "multimix", pool, batch, concurrency, seconds, Path(tmp))
                except Exception as exc:  # reported, not fatal: the built-in generator measured the same
                    notes.append(f"perf_analyzer not used: {exc}")
    return rows, notes


def _goals(measurements: list[Measurement], triton_rows: list[Measurement], batch: int) -> list[dict]:
    def ips(target, b=batch):
        return next((m.images_per_s for m in measurements if m.target == target and m.batch == b), None)

    def p50(target, b=batch):
        return next((m.latency_ms["p50"] for m in measurements if m.target == target and m.batch == b), None)

    served = [m for m in triton_rows if m.target.startswith("triton") and m.batch == batch]
    best_served = max(served, key=lambda m: m.images_per_s, default=None)
    at_8 = next((m for m in served if m.extra.get("concurrency") == 8 and m.target == "triton-grpc"), None)
    goals = []

    def goal(name, value, target, op):
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        goals.append({"goal": name, "measured": value, "target": f"{op} {target}", "met": met})

    goal(f"Triton joint pipeline vs reference, batch {batch} (best concurrency)",
         best_served.images_per_s / ips("reference") if best_served and ips("reference") else None, 3.0, ">=")
    goal(f"onnxruntime saliency graph time / encoder time, batch {batch}",
         p50("ort-saliency") / p50("ort-encoder") if p50("ort-saliency") and p50("ort-encoder") else None, 2.2, "<=")
    goal(f"Triton gRPC (concurrency 8) vs in-process onnxruntime fused, batch {batch}",
         at_8.images_per_s / ips("ort-fused") if at_8 and ips("ort-fused") else None, 0.9, ">=")
    return goals


def _plot_concurrency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in dict.fromkeys(r["target"] for r in rows):
        points = sorted((r["concurrency"], r["images_per_s"]) for r in rows if r["target"] == target)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images / s")
    ax.set_title(f"Triton, batch {rows[0]['batch']} per request")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['target']} b{r['batch']}" + (f" c{r['concurrency']}" if r.get("concurrency") else "") for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for offset, q in zip((-0.3, -0.1, 0.1, 0.3), ("p50", "p90", "p95", "p99")):
        ax.barh(y + offset, [r[f"{q}_ms"] for r in rows], height=0.2, label=q)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
