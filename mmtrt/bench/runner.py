"""The body of `mmtrt bench`: build the targets, measure them on the same images, report."""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from mmtrt.bench.measure import Measurement, measure
from mmtrt.bench.report import environment, ratio_table, write_report
from mmtrt.bench.targets import TARGETS, Target
from mmtrt.files import atomic_write
from mmtrt.graphs import JOINT_OUTPUTS, PIPELINES, run_pipeline
from mmtrt.runtimes import ort as ort_runtime

POOL_SIZE = 32  # distinct synthetic X-rays rotated across calls (more when a batch is larger)
FILE_SIZE = 1024  # triton-bytes sends 8-bit PNGs of 1024 x 1024 (the NIH ChestX-ray14 format)


def _wanted(names: list[str], runtime: str) -> list[Target]:
    """The in-process targets of ``runtime`` among ``names``."""
    return [
        TARGETS[n] for n in names if n in TARGETS and TARGETS[n].runtime == runtime and not TARGETS[n].served
    ]


def _graphs_of(target: Target) -> tuple[str, ...]:
    return PIPELINES.get(target.pipeline, (target.pipeline,))


def _pipeline_target(runners: dict, pipeline: str):
    """A callable(images) running `pipeline` (a pipeline of mmtrt.graphs, or "saliency": that graph
    alone) over `runners`."""
    if pipeline == "saliency":
        return lambda images: runners["saliency"]({"image": images})
    if pipeline == "classify":
        return lambda images: run_pipeline(runners, images, pipeline)

    def joint(images):
        tensors = run_pipeline(runners, images, pipeline)
        return tuple(tensors[name] for name in JOINT_OUTPUTS)

    return joint


def openvino_targets(export_dir: Path, names: list[str], device: torch.device) -> tuple[dict, list[str]]:
    """name -> callable(images: torch.Tensor) over OpenVINO runners of the exported graphs for the
    OpenVINO targets among `names` (CPU, precision hint f32, OpenVINO's default threads, one stream;
    the bf16 targets over the export's bf16 copies), and notes on those that cannot run."""
    from mmtrt.export.manifest import read_manifest
    from mmtrt.runtimes import openvino

    wanted = _wanted(names, "openvino")
    if not wanted:
        return {}, []
    listed = ", ".join(t.name for t in wanted)
    if device.type != "cpu":
        return {}, [f"{listed} not measured: OpenVINO targets run on the CPU (--device cpu)"]
    if not openvino.available():
        return {}, [f"{listed} not measured: OpenVINO is not installed here"]
    targets, notes = {}, []
    for precision in dict.fromkeys(t.precision for t in wanted):
        group = [t for t in wanted if t.precision == precision]
        if precision != "fp32":
            manifest = Path(export_dir) / "manifest.json"
            exported = (
                read_manifest(export_dir, check_files=False).get("precision") if manifest.is_file() else None
            )
            exported = exported or "fp32"
            native, why_not = openvino.reduced_precision_native(precision)
            if exported != precision or not native:
                why_not = (
                    why_not
                    or f"the export is {exported} (mmtrt export --precision {precision} makes the copies)"
                )
                notes.append(f"{', '.join(t.name for t in group)} not measured: {why_not}")
                continue
        runners = openvino.runners(
            export_dir, sorted({g for t in group for g in _graphs_of(t)}), precision=precision
        )
        # the pool is a CPU tensor: its numpy view is handed on without a copy
        as_arrays = {graph: _on_arrays(run) for graph, run in runners.items()}
        targets.update({t.name: _pipeline_target(as_arrays, t.pipeline) for t in group})
    return targets, notes


def _on_arrays(run):
    return lambda inputs: run({k: _numpy(v) for k, v in inputs.items()})


def _numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


def xray_pool(n: int = POOL_SIZE, seed: int = 0) -> np.ndarray:
    from mmtrt.data import synth_xray

    return (
        np.stack([synth_xray(seed + i, label=i % 2)[0] for i in range(n)]).astype(np.float32)[:, None] / 255.0
    )


def file_pool(n: int = POOL_SIZE, size: int = FILE_SIZE, seed: int = 0) -> np.ndarray:
    """``n`` synthetic X-rays of ``size`` x ``size`` as 8-bit PNG files: an object array of their
    bytes, what triton-bytes sends."""
    import io

    from PIL import Image

    from mmtrt.data import synth_xray

    files = np.empty(n, dtype=np.object_)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(synth_xray(seed + i, label=i % 2, size=size)[0]).save(buf, format="PNG")
        files[i] = buf.getvalue()
    return files


def rotating_batches(pool, batch: int, count: int = 4) -> list:
    """`count` different batches of `batch` images from `pool` (a tensor or array), so that no
    measured call sees the buffer of the call before it."""
    return [pool[(i * batch) % (len(pool) - batch + 1) :][:batch] for i in range(count)]


def onnx_targets(export_dir: Path, names: list[str], device: torch.device) -> tuple[dict, list[str]]:
    """name -> callable(images: torch.Tensor) over onnxruntime sessions of the exported graphs for
    the onnxruntime targets among `names`, and notes on those that cannot run here. Each call reads the images where they lie and leaves its
    outputs on the same device (I/O binding): on the GPU no call copies to or from the host."""
    import onnxruntime as ort

    wanted = _wanted(names, "onnxruntime")
    if not wanted:
        return {}, []
    listed = ", ".join(t.name for t in wanted)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return {}, [
                f"{listed} not measured: onnxruntime {ort.__version__} here has no "
                "CUDAExecutionProvider (the onnxruntime-gpu package has it)"
            ]
        # TF32 off, as for the PyTorch targets and the TensorRT engines: float32 means float32
        providers = [
            ("CUDAExecutionProvider", {"device_id": device.index, "use_tf32": "0"}),
            "CPUExecutionProvider",
        ]
    sessions = {
        graph: ort_runtime.session(export_dir / f"{graph}.onnx", providers=providers, log_severity=2)
        for graph in sorted({g for t in wanted for g in _graphs_of(t)})
    }
    if device.type == "cuda" and any(
        s.get_providers()[0] != "CUDAExecutionProvider" for s in sessions.values()
    ):
        return {}, [
            f"{listed} not measured: onnxruntime could not start its CUDAExecutionProvider "
            "(its log above says why; usually a CUDA or cuDNN library it needs is missing)"
        ]

    def runner(graph: str):
        session = sessions[graph]
        outputs = [o.name for o in session.get_outputs()]

        def run(inputs) -> dict:
            binding = session.io_binding()
            for name, value in inputs.items():
                if isinstance(value, torch.Tensor):  # contiguous float32 (slices of the image pool)
                    binding.bind_input(
                        name,
                        value.device.type,
                        value.device.index or 0,
                        np.float32,
                        tuple(value.shape),
                        value.data_ptr(),
                    )
                else:  # an OrtValue the previous graph left where it ran
                    binding.bind_ortvalue_input(name, value)
            for name in outputs:
                binding.bind_output(name, device.type, device.index or 0)
            session.run_with_iobinding(binding)
            return dict(zip(outputs, binding.get_outputs()))

        return run

    runners = {graph: runner(graph) for graph in sessions}
    return {t.name: _pipeline_target(runners, t.pipeline) for t in wanted}, []


def run_bench(
    checkpoint: Path,
    export_dir: Path,
    out: Path,
    *,
    device: str,
    targets: list[str],
    batch_sizes: list[int],
    concurrency: list[int],
    triton_batch_size: int,
    seconds: float,
    use_perf_analyzer: bool,
    tensorrt_required: bool,
    progress,
    command: str,
    file_size: int = FILE_SIZE,
) -> dict:
    """Measure `targets` (names of mmtrt.bench.targets.TARGETS) on `device`. A tensorrt target that
    cannot run (no TensorRT, no engines) raises when `tensorrt_required`, else it is left out with a
    note in the report, as are onnxruntime targets on a GPU that onnxruntime cannot use."""
    from mmtrt.bench.torch_targets import torch_targets
    from mmtrt.checkpoint import load_checkpoint
    from mmtrt.export.manifest import ExportError
    from mmtrt.export.tensorrt import EngineBuildError, TensorRTUnavailable, engine_pipeline, require_tensorrt

    unknown = [name for name in targets if name not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    chosen = [TARGETS[name] for name in targets]
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    cuda = device.type == "cuda"
    notes = []
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device())
        # float32 means float32, as in the TensorRT engines (built without TF32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        notes.append(
            f"Device {torch.cuda.get_device_name(device)}: the images are copied to the GPU once, "
            "each call is timed with CUDA events; TF32 off."
        )
    model, _ = load_checkpoint(checkpoint)
    in_process, largest_batch = {}, {}
    torch_names = [t.name for t in chosen if t.runtime == "pytorch"]
    if torch_names:
        in_process.update(torch_targets(model, device, torch_names))
    ort_targets, ort_notes = onnx_targets(export_dir, targets, device)
    in_process.update(ort_targets)
    notes += ort_notes
    ov_targets, ov_notes = openvino_targets(export_dir, targets, device)
    in_process.update(ov_targets)
    notes += ov_notes
    for target in [t for t in chosen if t.runtime == "tensorrt"]:
        try:
            require_tensorrt()
            in_process[target.name], largest_batch[target.name] = engine_pipeline(export_dir)
        except (TensorRTUnavailable, EngineBuildError, ExportError) as exc:
            if tensorrt_required:
                raise
            notes.append(f"{target.name} not measured: {exc}")
    for name, largest in largest_batch.items():
        if max(batch_sizes) > largest:
            notes.append(
                f"{name}: batches above {largest} not measured (the engines' optimization profile "
                f"ends there; export with --max-batch {max(batch_sizes)} to measure them)"
            )

    pool = torch.from_numpy(xray_pool(max(POOL_SIZE, *batch_sizes))).to(device)
    if cuda:  # onnxruntime reads the images on a stream of its own
        torch.cuda.synchronize(device)
    # A CPU call of the reference path takes seconds: the timed duration, not a call count, bounds
    # each measurement. A GPU call takes milliseconds, and CUDA graphs are recorded in the first calls.
    warmup, min_calls = (3, 10) if cuda else (1, 3)
    measurements: list[Measurement] = []
    triton_rows: list[Measurement] = []
    for batch in batch_sizes:
        batches = rotating_batches(pool, batch)
        for name in [t for t in targets if t in in_process]:
            progress.set_postfix_str(f"{name} b{batch}")
            if batch <= largest_batch.get(name, batch):
                measurements.append(
                    measure(
                        name,
                        in_process[name],
                        batches,
                        warmup=warmup,
                        min_calls=min_calls,
                        min_seconds=seconds,
                    )
                )
            progress.update(1)
        # written after every batch size, so a run cut short still leaves its figures
        report = _write_report(out, command, notes, measurements, triton_rows, triton_batch_size)

    served = [t for t in chosen if t.served]
    for flavour in dict.fromkeys((t.runtime, t.precision) for t in served):  # one server each
        group = [t for t in served if (t.runtime, t.precision) == flavour]
        pools = {
            t: file_pool(POOL_SIZE, file_size) if t.transport == "triton-files" else pool.cpu().numpy()
            for t in group
        }
        tensors = next((t.name for t in group if t.transport == "triton-tensors"), None)
        for target in [t for t in group if t.transport == "triton-files"]:
            notes.append(
                f"{target.name}: {POOL_SIZE} synthetic X-rays as 8-bit PNG files of {file_size} x "
                f"{file_size} ({np.mean([len(f) for f in pools[target]]) / 1e3:.0f} kB on "
                f"average) sent to {target.served_model}, which decodes them in the server (file_decoder, "
                "mmtrt.data.load_image) before multimix"
                + (f"; {tensors} sends the same server 256 x 256 tensors" if tensors else "")
            )
        rows, triton_notes = _triton_sweep(
            export_dir, pools, triton_batch_size, concurrency, seconds, use_perf_analyzer, progress
        )
        triton_rows += rows
        notes += triton_notes
        report = _write_report(out, command, notes, measurements, triton_rows, triton_batch_size)
    return report


def _write_report(
    out: Path,
    command: str,
    notes: list[str],
    measurements: list[Measurement],
    triton_rows: list[Measurement],
    triton_batch_size: int,
) -> dict:
    rows = ratio_table(measurements, baseline="reference")
    reference_at = {m.batch: m.images_per_s for m in measurements if m.target == "reference"}
    triton_table = [
        {
            "target": m.target,
            "batch": m.batch,
            "concurrency": m.extra.get("concurrency"),
            "images_per_s": m.images_per_s,
            **{f"{k}_ms": v for k, v in m.latency_ms.items()},
            "x_reference": m.images_per_s / reference_at[m.batch] if m.batch in reference_at else None,
            **{k: v for k, v in m.extra.items() if k != "concurrency"},
        }
        for m in triton_rows
    ]
    notes = notes + [
        f"Decoding in the server ({protocol}, batch {triton_batch_size}): {ms:+.1f} ms per image, "
        f"{ratio:.3f}x the time per image of sending tensors"
        for protocol, (ratio, ms) in decoding_cost(triton_table, triton_batch_size).items()
    ]
    notes = notes + [
        "Every ratio is measured in this run against the reference path (autograd saliency + a second encoder pass, PyTorch eager fp32) at the same batch size.",
        "In-process targets run one call at a time; Triton targets run `concurrency` clients at once.",
    ]
    write_report(
        out / "bench",
        title="mmtrt bench",
        command=command,
        env=environment(),
        sections={"in_process": rows, "triton": triton_table},
        notes=notes,
        plot_rows=rows,
    )
    if triton_table:
        _plot_concurrency(triton_table, out / "bench_concurrency.png")
    if rows or triton_table:
        _plot_latency(rows + triton_table, out / "bench_latency.png")
    return {"in_process": rows, "triton": triton_table, "notes": notes}


def _triton_sweep(
    export_dir: Path,
    pools: dict[Target, np.ndarray],
    batch: int,
    concurrency: list[int],
    seconds: float,
    use_perf_analyzer: bool,
    progress,
) -> tuple[list[Measurement], list[str]]:
    """The Triton sweep of the targets of `pools` (target -> what its clients send: images, or
    image files), all served with one runtime and precision: one server of the cpu repository
    flavour. The rows are named <target>-<protocol> (triton-grpc, triton-bytes-http,
    triton-ov-bf16-grpc ...)."""
    from dataclasses import replace

    from mmtrt.bench import load
    from mmtrt.serving import TritonServer, build_repository

    first = next(iter(pools))
    runtime, precision = first.runtime, first.precision
    notes = []
    rows: list[Measurement] = []
    names = ", ".join(t.name for t in pools)
    with tempfile.TemporaryDirectory(prefix="mmtrt-bench-") as tmp:
        try:
            repo = build_repository(
                export_dir, Path(tmp) / "repo", flavour="cpu", runtime=runtime, precision=precision
            )
        except Exception as exc:  # e.g. OpenVINO not installed, or the export not validated in it
            return [], [f"{names} not measured: {exc}"]
        with TritonServer(repo) as server:
            with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as answer:
                notes.append(
                    f"{names}: Triton server {json.load(answer).get('version')} ({server.command[0]}), "
                    f"the cpu repository flavour (python backend + {runtime} on the CPU, {precision}), "
                    "whatever --device says"
                )
            for target, pool in pools.items():
                for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                    for clients in concurrency:
                        progress.set_postfix_str(f"{target.name}-{protocol} c{clients}")
                        measured = load.run_load(
                            protocol,
                            url,
                            target.served_model,
                            pool,
                            batch,
                            clients,
                            seconds,
                            stats_url=server.http_url,
                        )
                        rows.append(replace(measured, target=f"{target.name}-{protocol}"))
                        progress.update(1)
            tensors = next((t for t in pools if t.transport == "triton-tensors"), None)
            if use_perf_analyzer and tensors is not None:
                try:
                    measured = load.run_perf_analyzer(
                        server.grpc_url,
                        tensors.served_model,
                        pools[tensors],
                        batch,
                        concurrency,
                        seconds,
                        Path(tmp),
                    )
                    # perf_analyzer-grpc for triton, perf_analyzer-ov-grpc for triton-ov ...
                    named = f"perf_analyzer{tensors.name.removeprefix('triton')}-grpc"
                    rows += [replace(m, target=named) for m in measured]
                except Exception as exc:  # reported, not fatal: the built-in generator measured the same
                    notes.append(f"perf_analyzer not used: {exc}")
    return rows, notes


def decoding_cost(triton_rows: list[dict], batch: int) -> dict[str, tuple[float, float]]:
    """protocol -> (time per image of triton-bytes / of triton, the milliseconds per image that
    sending files and decoding them in the server add), at ``batch``, each target at its best
    concurrency; for the protocols both targets were measured with. ``triton_rows``: the rows of
    the report's Triton table."""
    cost = {}
    for protocol in ("grpc", "http"):
        tensors, files = (
            max(
                (r for r in triton_rows if r["target"] == f"{name}-{protocol}" and r["batch"] == batch),
                key=lambda r: r["images_per_s"],
                default=None,
            )
            for name in ("triton", "triton-bytes")
        )
        if tensors and files:
            cost[protocol] = (
                tensors["images_per_s"] / files["images_per_s"],
                1e3 / files["images_per_s"] - 1e3 / tensors["images_per_s"],
            )
    return cost


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
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def _plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['target']} b{r['batch']}" + (f" c{r['concurrency']}" if r.get("concurrency") else "")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for offset, q in zip((-0.3, -0.1, 0.1, 0.3), ("p50", "p90", "p95", "p99")):
        ax.barh(y + offset, [r[f"{q}_ms"] for r in rows], height=0.2, label=q)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
