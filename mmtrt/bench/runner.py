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
from mmtrt.graphs import JOINT_OUTPUTS, PIPELINES, run_pipeline
from mmtrt.runtimes import ort as ort_runtime

POOL_SIZE = 32  # distinct synthetic X-rays rotated across calls (more when a batch is larger)
# target -> the pipeline of mmtrt.graphs it runs (ort-saliency: the saliency graph alone)
ORT_PIPELINES = {"ort-fused": "fused", "ort-split": "joint", "ort-encoder": "classify", "ort-saliency": None}


# the same for OpenVINO (CPU plugin, precision hint f32; mmtrt.runtimes.openvino); "-bf16": over
# the export's bf16 copies (forward of the saliency float32, its backward half and the decoder bf16)
OV_PIPELINES = {
    f"ov-{name}{suffix}": pipeline
    for name, pipeline in (
        ("fused", "fused"),
        ("split", "joint"),
        ("encoder", "classify"),
        ("saliency", None),
    )
    for suffix in ("", "-bf16")
}
#: the Triton targets: the cpu repository flavour served with each (runtime, precision);
#: triton-bytes is the server of triton sent image files (multimix_image: decoded in the server)
#: instead of tensors
TRITON_RUNTIMES = {
    "triton": ("onnxruntime", "fp32"),
    "triton-bytes": ("onnxruntime", "fp32"),
    "triton-ov": ("openvino", "fp32"),
    "triton-ov-bf16": ("openvino", "bf16"),
}
TRITON_MODELS = {name: "multimix_image" if name == "triton-bytes" else "multimix" for name in TRITON_RUNTIMES}
#: a Triton target -> the in-process target running the same graphs in the same runtime
TRITON_IN_PROCESS = {"triton": "ort-fused", "triton-ov": "ov-fused", "triton-ov-bf16": "ov-fused-bf16"}
FILE_SIZE = 1024  # triton-bytes sends 8-bit PNGs of 1024 x 1024 (the NIH ChestX-ray14 format)


def _precision_of(target: str) -> str:
    return "bf16" if target.endswith("-bf16") else "fp32"


def _graphs_of(target: str) -> tuple[str, ...]:
    pipeline = {**ORT_PIPELINES, **OV_PIPELINES}[target]
    return PIPELINES[pipeline] if pipeline else ("saliency",)


def _pipeline_target(runners: dict, pipeline: str | None):
    """A callable(images) running `pipeline` (None: the saliency graph alone) over `runners`."""
    if pipeline is None:
        return lambda images: runners["saliency"]({"image": images})
    if pipeline == "classify":
        return lambda images: run_pipeline(runners, images, pipeline)

    def joint(images):
        tensors = run_pipeline(runners, images, pipeline)
        return tuple(tensors[name] for name in JOINT_OUTPUTS)

    return joint


def openvino_targets(export_dir: Path, names: list[str], device: torch.device) -> tuple[dict, list[str]]:
    """name -> callable(images: torch.Tensor) over OpenVINO runners of the exported graphs (CPU,
    precision hint f32, OpenVINO's default threads, one stream; the -bf16 targets over the
    export's bf16 copies), and notes on those that cannot run."""
    from mmtrt.export.manifest import read_manifest
    from mmtrt.runtimes import openvino

    wanted = [name for name in names if name in OV_PIPELINES]
    if not wanted:
        return {}, []
    if device.type != "cpu":
        return {}, [f"{', '.join(wanted)} not measured: OpenVINO targets run on the CPU (--device cpu)"]
    if not openvino.available():
        return {}, [f"{', '.join(wanted)} not measured: OpenVINO is not installed here"]
    targets, notes = {}, []
    for precision in dict.fromkeys(_precision_of(name) for name in wanted):
        group = [name for name in wanted if _precision_of(name) == precision]
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
                notes.append(f"{', '.join(group)} not measured: {why_not}")
                continue
        runners = openvino.runners(
            export_dir, sorted({g for name in group for g in _graphs_of(name)}), precision=precision
        )
        # the pool is a CPU tensor: its numpy view is handed on without a copy
        as_arrays = {graph: _on_arrays(run) for graph, run in runners.items()}
        targets.update({name: _pipeline_target(as_arrays, OV_PIPELINES[name]) for name in group})
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
    """name -> callable(images: torch.Tensor) over onnxruntime sessions of the exported graphs, and
    notes on those that cannot run here. Each call reads the images where they lie and leaves its
    outputs on the same device (I/O binding): on the GPU no call copies to or from the host."""
    import onnxruntime as ort

    wanted = [name for name in names if name in ORT_PIPELINES]
    if not wanted:
        return {}, []
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return {}, [
                f"{', '.join(wanted)} not measured: onnxruntime {ort.__version__} here has no "
                "CUDAExecutionProvider (the onnxruntime-gpu package has it)"
            ]
        # TF32 off, as for the PyTorch targets and the TensorRT engines: float32 means float32
        providers = [
            ("CUDAExecutionProvider", {"device_id": device.index, "use_tf32": "0"}),
            "CPUExecutionProvider",
        ]
    sessions = {
        graph: ort_runtime.session(export_dir / f"{graph}.onnx", providers=providers, log_severity=2)
        for graph in sorted({g for name in wanted for g in _graphs_of(name)})
    }
    if device.type == "cuda" and any(
        s.get_providers()[0] != "CUDAExecutionProvider" for s in sessions.values()
    ):
        return {}, [
            f"{', '.join(wanted)} not measured: onnxruntime could not start its CUDAExecutionProvider "
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
    return {name: _pipeline_target(runners, ORT_PIPELINES[name]) for name in wanted}, []


def run_bench(
    checkpoint: Path,
    export_dir: Path,
    out: Path,
    *,
    device: str,
    targets: list[str],
    batch_sizes: list[int],
    concurrency: list[int],
    triton_batch: int,
    seconds: float,
    use_perf_analyzer: bool,
    tensorrt_required: bool,
    progress,
    command: str,
    file_size: int = FILE_SIZE,
) -> dict:
    """Measure `targets` on `device`. A tensorrt target that cannot run (no TensorRT, no engines)
    raises when `tensorrt_required`, else it is left out with a note in the report, as are
    onnxruntime targets on a GPU that onnxruntime cannot use."""
    from mmtrt.bench.torch_targets import torch_targets
    from mmtrt.checkpoint import load_checkpoint
    from mmtrt.export.manifest import ExportError
    from mmtrt.export.tensorrt import EngineBuildError, TensorRTUnavailable, engine_pipeline, require_tensorrt

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
    torch_names = [
        t
        for t in targets
        if t not in ORT_PIPELINES and t not in OV_PIPELINES and t != "tensorrt" and t not in TRITON_RUNTIMES
    ]
    if torch_names:
        in_process.update(torch_targets(model, device, torch_names))
    ort_targets, ort_notes = onnx_targets(export_dir, targets, device)
    in_process.update(ort_targets)
    notes += ort_notes
    ov_targets, ov_notes = openvino_targets(export_dir, targets, device)
    in_process.update(ov_targets)
    notes += ov_notes
    if "tensorrt" in targets:
        try:
            require_tensorrt()
            in_process["tensorrt"], largest_batch["tensorrt"] = engine_pipeline(export_dir)
        except (TensorRTUnavailable, EngineBuildError, ExportError) as exc:
            if tensorrt_required:
                raise
            notes.append(f"tensorrt not measured: {exc}")
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
        report = _write_report(out, command, notes, measurements, triton_rows, triton_batch)

    served = [t for t in targets if t in TRITON_RUNTIMES]
    for flavour in dict.fromkeys(TRITON_RUNTIMES[t] for t in served):  # one server each
        names = [t for t in served if TRITON_RUNTIMES[t] == flavour]
        pools = {
            name: file_pool(POOL_SIZE, file_size) if name == "triton-bytes" else pool.cpu().numpy()
            for name in names
        }
        if "triton-bytes" in names:
            notes.append(
                f"triton-bytes: {POOL_SIZE} synthetic X-rays as 8-bit PNG files of {file_size} x "
                f"{file_size} ({np.mean([len(f) for f in pools['triton-bytes']]) / 1e3:.0f} kB on "
                "average) sent to multimix_image, which decodes them in the server (file_decoder, "
                "mmtrt.data.load_image) before multimix; triton sends the same server 256 x 256 tensors"
            )
        rows, triton_notes = _triton_sweep(
            export_dir,
            pools,
            triton_batch,
            concurrency,
            seconds,
            use_perf_analyzer,
            progress,
            flavour=flavour,
        )
        triton_rows += rows
        notes += triton_notes
        report = _write_report(out, command, notes, measurements, triton_rows, triton_batch)
    return report


def _write_report(
    out: Path,
    command: str,
    notes: list[str],
    measurements: list[Measurement],
    triton_rows: list[Measurement],
    triton_batch: int,
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
    goals = _goals(measurements, triton_rows, triton_batch)
    notes = notes + [
        f"Decoding in the server ({protocol}, batch {triton_batch}): {ms:+.1f} ms per image, "
        f"{ratio:.3f}x the time per image of sending tensors"
        for protocol, (ratio, ms) in decoding_cost(triton_rows, triton_batch).items()
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
        sections={"goals": goals, "in_process": rows, "triton": triton_table},
        notes=notes,
        plot_rows=rows,
    )
    if triton_table:
        _plot_concurrency(triton_table, out / "bench_concurrency.png")
    if rows or triton_table:
        _plot_latency(rows + triton_table, out / "bench_latency.png")
    return {"goals": goals, "in_process": rows, "triton": triton_table, "notes": notes}


def _triton_sweep(
    export_dir,
    pools,
    batch,
    concurrency,
    seconds,
    use_perf_analyzer,
    progress,
    flavour=("onnxruntime", "fp32"),
):
    """The Triton sweep over a cpu repository served with `flavour` (runtime, precision), for each
    target of `pools` (target -> what its clients send: images, or image files for triton-bytes);
    the rows are named <target>-<protocol> (triton-grpc, triton-bytes-http, triton-ov-bf16-grpc ...)."""
    from dataclasses import replace

    from mmtrt.bench import load
    from mmtrt.serving import TritonServer, build_repository

    runtime, precision = flavour
    notes = []
    rows: list[Measurement] = []
    names = ", ".join(pools)
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
            for name, pool in pools.items():
                model = TRITON_MODELS[name]
                for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                    for clients in concurrency:
                        progress.set_postfix_str(f"{name}-{protocol} c{clients}")
                        measured = load.run_load(
                            protocol, url, model, pool, batch, clients, seconds, stats_url=server.http_url
                        )
                        rows.append(replace(measured, target=f"{name}-{protocol}"))
                        progress.update(1)
            tensor_target = next((name for name in pools if TRITON_MODELS[name] == "multimix"), None)
            if use_perf_analyzer and tensor_target is not None:  # the tensor model
                pool = pools[tensor_target]
                try:
                    measured = load.run_perf_analyzer(
                        server.grpc_url, "multimix", pool, batch, concurrency, seconds, Path(tmp)
                    )
                    suffix = tensor_target[len("triton") :]  # perf_analyzer-grpc -> perf_analyzer-ov-grpc
                    measured = [replace(m, target=m.target.replace("-", f"{suffix}-", 1)) for m in measured]
                    rows += measured
                except Exception as exc:  # reported, not fatal: the built-in generator measured the same
                    notes.append(f"perf_analyzer not used: {exc}")
    return rows, notes


def _goals(measurements: list[Measurement], triton_rows: list[Measurement], batch: int) -> list[dict]:
    """The speed goals, each measured in this run: the served joint pipeline vs the reference
    path (>= 4x on a CPU with bf16 hardware, >= 2.6x on one without; 3x on a GPU), the saliency
    graph vs the encoder in each runtime (<= 2x, the encoder at its fastest there), and each
    Triton flavour vs the same runtime in-process (>= 0.9x, both at their best)."""
    from mmtrt.runtimes import openvino

    def ips(target, b=batch):
        return next((m.images_per_s for m in measurements if m.target == target and m.batch == b), None)

    def p50(target, b=batch):
        return next((m.latency_ms["p50"] for m in measurements if m.target == target and m.batch == b), None)

    def fastest(*targets):
        times = [t for t in map(p50, targets) if t]
        return min(times) if times else None

    served = [
        m
        for m in triton_rows
        if m.target.startswith("triton") and "-bytes-" not in m.target and m.batch == batch
    ]
    best_served = max(served, key=lambda m: m.images_per_s, default=None)
    goals = []

    def goal(name, value, target, op):
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        goals.append({"goal": name, "measured": value, "target": f"{op} {target}", "met": met})

    on_cpu = not any(m.target in ("tensorrt", "cuda-graphs") for m in measurements)
    bf16 = openvino.host_has("bf16")
    floor = (4.0 if bf16 else 2.6) if on_cpu else 3.0
    host = ("CPU with bf16 hardware" if bf16 else "CPU without bf16 hardware") if on_cpu else "GPU"
    goal(
        f"Triton joint pipeline vs reference, batch {batch}, best concurrency ({host}"
        + (f": {best_served.target} c{best_served.extra.get('concurrency')})" if best_served else ")"),
        best_served.images_per_s / ips("reference") if best_served and ips("reference") else None,
        floor,
        ">=",
    )
    for runtime, saliency, encoders in (
        ("onnxruntime", ("ort-saliency",), ("ort-encoder",)),
        ("OpenVINO", ("ov-saliency", "ov-saliency-bf16"), ("ov-encoder", "ov-encoder-bf16")),
    ):
        slowest_part, encoder = fastest(*saliency), fastest(*encoders)
        if slowest_part is None and encoder is None:
            continue
        goal(
            f"{runtime} saliency graph time / encoder time (its fastest), batch {batch}",
            slowest_part / encoder if slowest_part and encoder else None,
            2.0,
            "<=",
        )
    for prefix, in_process in TRITON_IN_PROCESS.items():
        rows = [m for m in served if m.target.rsplit("-", 1)[0] == prefix]
        if not rows:
            continue
        best = max(rows, key=lambda m: m.images_per_s)
        goal(
            f"{prefix} (best: {best.target} c{best.extra.get('concurrency')}) vs in-process {in_process}, batch {batch}",
            best.images_per_s / ips(in_process) if ips(in_process) else None,
            0.9,
            ">=",
        )
    cost = decoding_cost(triton_rows, batch)
    for protocol in ("grpc", "http"):
        goal(
            f"Triton {protocol}, time per image sending PNG files (decoded in the server) / sending "
            f"tensors, batch {batch} (best concurrency of each)",
            cost[protocol][0] if protocol in cost else None,
            1.1,
            "<=",
        )
    return goals


def decoding_cost(triton_rows: list[Measurement], batch: int) -> dict[str, tuple[float, float]]:
    """protocol -> (time per image of triton-bytes / of triton, the milliseconds per image that
    sending files and decoding them in the server add), at ``batch``, each target at its best
    concurrency; for the protocols both targets were measured with."""
    cost = {}
    for protocol in ("grpc", "http"):
        tensors, files = (
            max(
                (m for m in triton_rows if m.target == f"{name}-{protocol}" and m.batch == batch),
                key=lambda m: m.images_per_s,
                default=None,
            )
            for name in ("triton", "triton-bytes")
        )
        if tensors and files:
            cost[protocol] = (
                tensors.images_per_s / files.images_per_s,
                1e3 / files.images_per_s - 1e3 / tensors.images_per_s,
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
    fig.savefig(path, dpi=110)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
