"""Exporting a checkpoint and building its TensorRT engines (the library behind `mmtrt export`
and `mmtrt build-engines`, which are in :mod:`mmtrt.export.command`).

export: checkpoint -> the image gate's statistics fitted on in-distribution images (mmtrt.ood) ->
the four ONNX graphs (+ mixed-precision copies for fp16/bf16) -> parity
against PyTorch on fresh inputs -> parity.json + manifest.json -> TensorRT engines where TensorRT
and a CUDA GPU exist (otherwise it says which were not built and the command that builds them).
Everything is written into a temporary folder beside --out and renamed into place only once it
is complete and validated; a failed parity check leaves `<out>.failed` (no manifest) to inspect.

build-engines: the engine step alone, on an export folder (what the serving host runs).

Progress goes to the ``echo(message, nl=True)`` callback (default: standard output).
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mmtrt.export.manifest import (
    ENGINE_PARITY,
    MANIFEST,
    PARITY,
    TIMING_CACHE,
    ExportError,
    file_entry,
    graph_record,
    now,
    read_manifest,
    versions,
    write_file,
    write_json,
    write_manifest,
)
from mmtrt.files import NotOurFolder, check_replaceable, move_folder_into_place

DEFAULT_MAX_BATCH = 8
# the image gate's threshold: this quantile of held-out in-distribution scores (1% rejected)
DEFAULT_OOD_QUANTILE = 0.99


def _print(message: str = "", nl: bool = True) -> None:
    print(message, end="\n" if nl else "", flush=True)


def export_model(
    checkpoint: Path,
    out: Path,
    *,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opset: int | None = None,
    overwrite: bool = False,
    engines: bool = True,
    ood_data: Path | None = None,
    ood_quantile: float = DEFAULT_OOD_QUANTILE,
    echo=_print,
    progress=None,
) -> dict:
    """Export, validate and (where possible) build engines; returns the manifest.

    ``ood_data``: the classification root (Kermany layout, train/ and val/) the image gate is
    fitted on (train) and its threshold chosen on (val, at ``ood_quantile``); by default the
    classification data the checkpoint was trained on, where its training config names a folder
    that exists. Raises ExportError / CheckpointError with a message for the user."""
    import onnx

    from mmtrt.checkpoint import file_sha256, load_checkpoint
    from mmtrt.export.onnx_graphs import export_onnx
    from mmtrt.export.precision import MIN_OPSET, PRECISIONS, mixed_precision, policy, reduced_convolutions
    from mmtrt.export.validate import format_table, installed_runtimes, serving_runners, validate
    from mmtrt.graphs import GRAPHS
    from mmtrt.ood import MANIFEST_KEY as OOD_KEY
    from mmtrt.ood import STATS_FILE, OODError, fit_gate, stats_bytes
    from mmtrt.runtimes import openvino, ort

    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    opset = MIN_OPSET[precision] if opset is None else int(opset)
    if not MIN_OPSET[precision] <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(
            f"opset {opset} is not supported for {precision}: use {MIN_OPSET[precision]}.."
            f"{onnx.defs.onnx_opset_version()}"
            + (" (ONNX Conv has no bfloat16 before opset 22)" if precision == "bf16" else "")
        )
    if not 1 <= max_batch:
        raise ExportError(f"--max-batch must be at least 1, got {max_batch}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} already exists and is not empty (pass --overwrite to replace it)")
    try:
        check_replaceable(out)
    except NotOurFolder as exc:
        raise ExportError(f"--out: {exc}") from None

    model, meta = load_checkpoint(checkpoint)  # CheckpointError names the file and the problem
    checkpoint_sha = file_sha256(checkpoint)
    ood_data = _ood_data(ood_data, meta, checkpoint)
    echo(f"mmtrt export: {checkpoint} (sha256 {checkpoint_sha[:12]}...) -> {out}")
    echo(f"  precision {precision}, max batch {max_batch}, opset {opset}")
    for line in _policy_lines(policy(precision)):
        echo("  " + line)
    try:
        ood = fit_gate(model, ood_data, quantile=ood_quantile, echo=echo)
    except OODError as exc:
        raise ExportError(f"--ood-data: {exc}") from None

    # OpenVINO runs a mixed copy's reduced convolutions natively where the CPU has the hardware
    native_reduced, note = openvino.reduced_precision_native(precision)
    if note:
        echo(f"  {note}")
    staging = _staging_folder(out)
    try:
        protos, files, runners, graphs, fp32_files = {}, {}, {}, {}, {}
        write_file(staging / STATS_FILE, stats_bytes(model.ood))
        files[STATS_FILE] = {"kind": "out-of-distribution statistics"}
        for i, (name, spec) in enumerate(GRAPHS.items(), 1):
            t0 = time.perf_counter()
            echo(
                f"[{i}/{len(GRAPHS)}] exporting the {name} graph ({', '.join(spec.inputs)} -> "
                f"{', '.join(spec.outputs)})",
                nl=False,
            )
            path = staging / f"{name}.onnx"
            try:
                protos[name] = export_onnx(spec, model, path, opset=opset, max_batch=max_batch)
            except Exception as exc:  # the exporter's own errors, or the checks of export_onnx
                raise ExportError(f"exporting the {name} graph failed: {type(exc).__name__}: {exc}") from exc
            files[path.name] = {"graph": name, "precision": "fp32", "kind": "onnx"}
            fp32_files[name] = path
            graphs[name] = graph_record(path, protos[name])
            reduced = reduced_convolutions(protos[name]) if precision != "fp32" else []
            graphs[name]["convolutions"] = sum(n.op_type == "Conv" for n in protos[name].graph.node)
            graphs[name]["reduced_convolutions"] = len(reduced)
            if reduced:
                mixed_path = staging / f"{name}.{precision}.onnx"
                mixed = mixed_precision(protos[name], precision)
                onnx.checker.check_model(mixed, full_check=True)
                onnx.save(mixed, str(mixed_path))
                files[mixed_path.name] = {
                    "graph": name,
                    "precision": precision,
                    "kind": "onnx",
                    "reduced_convolutions": len(reduced),
                    # the runtimes its parity check ran it in (`mmtrt repo --precision` needs openvino)
                    "checked_in": ["onnxruntime", *(["openvino"] if native_reduced else [])],
                }
                graphs[name]["reduced_precision_file"] = mixed_path.name
                # onnxruntime's CPU provider has fp16 convolutions but no bf16 ones: a bf16 graph is
                # measured through its emulation (same rounding, float32 arithmetic).
                source = (
                    mixed_path
                    if precision == "fp16"
                    else mixed_precision(protos[name], precision, emulate=True).SerializeToString()
                )
                runners[(f"{name}.{precision}", name, precision)] = ort.runner(source)
                if native_reduced:  # what `mmtrt repo --precision` serves on CPU
                    runners[(f"{name}.{precision}.openvino", name, precision)] = openvino.runner(mixed_path)
            echo(f"  {time.perf_counter() - t0:.1f} s")

        # every CPU runtime the graphs may be served with (mmtrt repo --runtime) is validated
        runtimes = installed_runtimes()
        runners.update(serving_runners(fp32_files, runtimes))
        t0 = time.perf_counter()
        echo(
            f"validating {len(runners)} graphs in {', '.join(runtimes)} against PyTorch (batch sizes "
            f"{', '.join(map(str, _batch_sizes(max_batch)))}; random, flat-border and synthetic X-ray images)"
        )
        parity = validate(runners, model, max_batch, progress=progress or _progress(echo))
        parity = {"checkpoint_sha256": checkpoint_sha, "created": now(), **parity}
        write_json(staging / PARITY, parity)
        echo(format_table(parity["rows"]))
        echo(f"validation: {time.perf_counter() - t0:.1f} s")
        if not parity["passed"]:
            failed = _keep_failed(staging, out)
            raise ExportError(
                "parity check failed:\n  "
                + "\n  ".join(parity["failures"])
                + f"\nThe graphs and {PARITY} are kept in {failed} for inspection "
                f"(no {MANIFEST}: not a usable export)."
            )
        echo(f"parity: all {len(parity['rows'])} checks within tolerance")

        files[PARITY] = {"kind": "parity", "passed": True}
        engine_status = _engine_status(engines, out)
        manifest = {
            "created": now(),
            "checkpoint": {"file": checkpoint.name, "sha256": checkpoint_sha, "meta": _jsonable(meta)},
            "model": dict(model.config),
            "precision": precision,
            "precision_policy": policy(precision),
            "opset": opset,
            "max_batch": max_batch,
            "graphs": graphs,
            "files": {name: file_entry(staging / name, **info) for name, info in sorted(files.items())},
            "parity": {
                "file": PARITY,
                "passed": True,
                "batch_sizes": parity["batch_sizes"],
                "runtimes": runtimes,
                "tolerances": parity["tolerances"],
                "rows": parity["rows"],
            },
            "engines": engine_status,
            "versions": versions(),
            OOD_KEY: {**ood, "sha256": file_entry(staging / STATS_FILE)["sha256"]},
        }
        manifest = write_manifest(staging, manifest)
        move_folder_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    echo(
        f"wrote {out} ({len(manifest['files'])} files + {MANIFEST}) in {time.perf_counter() - started:.0f} s"
    )

    if engine_status.get("state") == "not built":
        echo(_not_built_notice(engine_status))
        return manifest
    if engine_status.get("state") == "pending":
        try:
            return build_engines(out, echo=echo, progress=progress)
        except ExportError as exc:
            raise ExportError(
                f"{exc}\nThe validated ONNX export in {out} is complete; rerun the engine step "
                f"with: {engine_status['command']}"
            ) from exc
    echo(
        "TensorRT engines not built (--no-engines); build them on the serving host with:\n"
        f"    {engine_status['command']}"
    )
    return manifest


def build_engines(folder: Path, *, echo=_print, progress=None) -> dict:
    """Build, check against onnxruntime and record the TensorRT engines of an export folder."""
    import onnx

    from mmtrt.export.precision import reduced_convolutions
    from mmtrt.export.tensorrt import (
        EngineBuildError,
        EngineRunner,
        build_engine,
        engine_specs,
        major_version,
        require_tensorrt,
    )
    from mmtrt.export.validate import format_table, validate_against
    from mmtrt.runtimes import ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    trt = require_tensorrt()  # TensorRTUnavailable names what is missing
    import torch

    capability = torch.cuda.get_device_capability()
    specs = engine_specs(manifest, major_version(trt), capability)
    echo(
        f"building {len(specs)} TensorRT {trt.__version__} engines for {torch.cuda.get_device_name()} "
        f"(sm{capability[0]}{capability[1]}), batch profile 1 / {manifest['max_batch']} / {manifest['max_batch']}"
    )
    plans, runners = {}, {}
    cache = folder / TIMING_CACHE
    for spec in specs:
        t0 = time.perf_counter()
        reduced = (
            frozenset(reduced_convolutions(onnx.load(str(folder / spec.onnx))))
            if spec.builder_flag
            else frozenset()
        )
        mode = (
            "strongly typed"
            if spec.strongly_typed
            else (f"builder flag {spec.builder_flag}" if spec.builder_flag else "fp32")
        )
        echo(f"  {spec.plan} from {spec.onnx} ({mode})", nl=False)
        try:
            plans[spec.plan] = build_engine(
                spec,
                folder / spec.onnx,
                max_batch=manifest["max_batch"],
                timing_cache=cache,
                reduced_layers=reduced,
            )
        except EngineBuildError as exc:
            raise ExportError(f"building the {spec.graph} engine failed: {exc}") from exc
        precision = spec.precision if manifest["graphs"][spec.graph].get("reduced_precision_file") else "fp32"
        runners[(f"{spec.graph}.plan", spec.graph, precision)] = EngineRunner(plans[spec.plan])
        echo(f"  {time.perf_counter() - t0:.1f} s")

    references = {graph: ort.runner(folder / info["file"]) for graph, info in manifest["graphs"].items()}
    parity = json.loads((folder / PARITY).read_text())
    report = validate_against(
        runners,
        references,
        parity,
        manifest["model"]["in_channels"],
        progress=progress or _progress(echo),
        ood_threshold=float((manifest.get("ood") or {}).get("threshold", math.inf)),
    )
    echo(format_table(report["rows"]))
    write_json(folder / ENGINE_PARITY, {"created": now(), **report})
    if not report["passed"]:
        raise ExportError(
            "TensorRT engines differ from onnxruntime beyond tolerance (engines not written):\n  "
            + "\n  ".join(report["failures"])
            + f"\nDetails: {folder / ENGINE_PARITY}"
        )
    for name, data in plans.items():
        write_file(folder / name, data)
        manifest["files"][name] = file_entry(folder / name, kind="tensorrt", graph=name.split(".")[0])
    for name, kind in ((TIMING_CACHE, "timing cache"), (ENGINE_PARITY, "parity")):
        manifest["files"][name] = file_entry(folder / name, kind=kind)
    manifest["engines"] = {
        "state": "built",
        "tensorrt": str(trt.__version__),
        "gpu": torch.cuda.get_device_name(),
        "capability": f"sm{capability[0]}{capability[1]}",
        "profile": {"min": 1, "opt": manifest["max_batch"], "max": manifest["max_batch"]},
        "timing_cache": TIMING_CACHE,
        "parity": {"file": ENGINE_PARITY, "passed": True},
        "plans": {
            s.graph: {
                "file": s.plan,
                "onnx": s.onnx,
                "strongly_typed": s.strongly_typed,
                "builder_flag": s.builder_flag,
            }
            for s in specs
        },
    }
    manifest["versions"]["tensorrt"] = str(trt.__version__)
    write_manifest(folder, manifest)
    echo(f"TensorRT engines built and checked against onnxruntime: {', '.join(plans)}")
    return manifest


# --------------------------------------------------------------------------- helpers


def _ood_data(given: Path | None, meta: dict, checkpoint: Path) -> Path:
    """The folder the image gate is fitted on: ``given``, else the checkpoint's training data."""
    if given is not None:
        return Path(given)
    trained_on = meta.get("cls_data") or (meta.get("train_config") or {}).get("cls_data")
    if trained_on and Path(trained_on).is_dir():
        return Path(trained_on)
    raise ExportError(
        "the image gate (an out-of-distribution score inside the graphs) is fitted on "
        "in-distribution images: pass --ood-data DIR, a classification root with train/ and val/ "
        f"(Kermany layout){f'; {checkpoint} was trained on {trained_on}, which is not a folder here' if trained_on else ''}"
    )


def _staging_folder(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    except OSError as exc:
        raise ExportError(
            f"cannot write the export folder {out}: {exc.strerror or exc} ({exc.filename or out.parent})"
        ) from None


def _keep_failed(staging: Path, out: Path) -> Path:
    failed = out.with_name(out.name + ".failed")
    try:
        move_folder_into_place(staging, failed, writer="mmtrt export (failed parity check)")
    except NotOurFolder:  # a folder of that name that mmtrt did not write stays as it is
        failed = Path(tempfile.mkdtemp(prefix=f"{out.name}.failed-", dir=out.parent))
        move_folder_into_place(staging, failed, writer="mmtrt export (failed parity check)")
    return failed


def _engine_status(requested: bool, out: Path) -> dict:
    from mmtrt.export.tensorrt import TensorRTUnavailable, require_tensorrt
    from mmtrt.graphs import GRAPHS

    command = f"mmtrt build-engines {shlex.quote(str(out.resolve()))}"
    if not requested:
        return {"state": "not requested", "command": command}
    try:
        require_tensorrt()
    except TensorRTUnavailable as exc:
        return {"state": "not built", "not_built": list(GRAPHS), "reason": str(exc), "command": command}
    return {"state": "pending", "command": command}


def _not_built_notice(status: dict) -> str:
    return (
        f"TensorRT engines NOT built ({', '.join(status['not_built'])}): {status['reason']}.\n"
        "The validated ONNX graphs are written. Build the engines on the serving host "
        "(TensorRT 10 or 11 and a CUDA GPU) with:\n"
        f"    {status['command']}"
    )


def _policy_lines(p: dict) -> list[str]:
    lines = [f"precision policy: {p['rule']}"]
    for item in p.get("kept_fp32", []):
        lines.append(f"  float32: {item}")
    return lines


def _batch_sizes(max_batch: int) -> list[int]:
    from mmtrt.export.validate import batch_sizes

    return batch_sizes(max_batch)


def _progress(echo):
    """A progress bar on a terminal, one line per validation batch in a log."""

    def progress(items):
        items = list(items)
        if sys.stderr.isatty():
            from tqdm import tqdm

            yield from tqdm(items, desc="  batches", unit="batch", file=sys.stderr, leave=False)
            return
        for i, item in enumerate(items, 1):
            t0 = time.perf_counter()
            yield item
            echo(
                f"  batch {i}/{len(items)} ({getattr(item, 'size', '?')} images): "
                f"{time.perf_counter() - t0:.1f} s"
            )

    return progress


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
