"""The benchmark's targets compute the same outputs, its measurement counts right, and
`mmtrt bench` runs each target where it can (CPU or CUDA GPU) and refuses the rest clearly.

The bench runs here on the CPU over exports whose graphs are small stand-ins with the real tensor
names: every output is the sum of the inputs plus its position (1, 2, ...), as the engines of
`FakeTensorRT` (tests/fake_tensorrt.py) compute, so a test can tell which tensor went where. The
TensorRT runner's device logic runs against FakeTensorRT on CPU tensors; the real engines and the
GPU bench are `gpu` tests that skip with the reason.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fake_tensorrt import NO_TENSORRT, FakeTensorRT, use_fake_tensorrt
from helpers import flat_region_images, relative_error
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from mmtrt.bench.measure import measure, percentiles
from mmtrt.bench.report import markdown_table, ratio_table
from mmtrt.bench.runner import onnx_targets, openvino_targets, run_bench
from mmtrt.bench.torch_targets import joint, reference_joint
from mmtrt.cli import main
from mmtrt.export import tensorrt as trt_code
from mmtrt.export.manifest import file_entry, write_manifest
from mmtrt.graphs import GRAPHS
from mmtrt.graphs import PIPELINES as GRAPH_PIPELINES

CUDA = torch.cuda.is_available()


def test_reference_path_and_shared_pass_agree(model):
    images = flat_region_images(3, seed=21)
    ref_probs, ref_mask, ref_saliency = reference_joint(model, images)
    with torch.no_grad():
        probs, mask, saliency = joint(model, images)
    assert torch.equal(probs, ref_probs)  # same encoder ops in the same order
    assert relative_error(saliency, ref_saliency) <= 1e-5
    assert (mask - ref_mask).abs().max() <= 1e-4


def test_measure_rotates_batches_and_reports_percentiles():
    batches = [torch.full((2, 1, 4, 4), float(i + 1)) for i in range(3)]
    seen = []
    m = measure(
        "probe", lambda b: seen.append(float(b[0, 0, 0, 0])), batches, warmup=2, min_calls=7, min_seconds=0
    )
    assert m.calls == 7 and m.batch == 2
    assert seen == [1, 2, 1, 2, 3, 1, 2, 3, 1]  # warm-up calls, then every batch in turn
    assert m.latency_ms["p50"] <= m.latency_ms["p90"] <= m.latency_ms["p99"]
    assert percentiles([1, 2, 3, 4])["p50"] == 2.5


def test_ratio_table_quotes_each_target_against_the_baseline_at_its_batch():
    from mmtrt.bench.measure import Measurement

    lat = {"p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0}
    rows = ratio_table(
        [
            Measurement("reference", 8, 5, 10.0, lat),
            Measurement("fast", 8, 5, 35.0, lat),
            Measurement("fast", 1, 5, 3.0, lat),
        ],
        baseline="reference",
    )
    assert [r["x_reference"] for r in rows] == [1.0, 3.5, None]
    assert "| fast | 8 | 35 |" in markdown_table(rows)


def test_decoding_cost_compares_the_best_of_each_triton_target_per_protocol():
    from mmtrt.bench.runner import decoding_cost

    def row(target, images_per_s, concurrency):
        return {"target": target, "batch": 8, "concurrency": concurrency, "images_per_s": images_per_s}

    rows = [
        row("triton-grpc", 8.0, 1),
        row("triton-grpc", 10.0, 2),  # the best: 100 ms an image
        row("triton-bytes-grpc", 8.0, 2),  # 125 ms an image
        row("triton-http", 10.0, 2),  # no bytes row: no figure
    ]
    (protocol, (ratio, ms)), *others = decoding_cost(rows, 8).items()
    assert protocol == "grpc" and not others
    assert ratio == pytest.approx(1.25) and ms == pytest.approx(25.0)
    assert decoding_cost(rows, 4) == {}  # another batch size: nothing to compare


def test_targets_are_registered_data_and_the_defaults_follow_the_device():
    from mmtrt.bench.targets import TARGETS, default_targets

    assert default_targets("cpu") == [
        "reference",
        "eager",
        "ort-fused",
        "ort-split",
        "ort-encoder",
        "ort-saliency",
        "ov-fused",
        "ov-split",
        "ov-encoder",
        "ov-saliency",
        "triton",
        "triton-bytes",
        "triton-ov",
    ]
    assert default_targets("cuda") == [
        "reference",
        "eager",
        "compiled",
        "cuda-graphs",
        "eager-fp16",
        "compiled-fp16",
        "eager-bf16",
        "ort-fused",
        "ort-split",
        "ort-encoder",
        "ort-saliency",
        "tensorrt",
    ]
    bf16 = TARGETS["triton-ov-bf16"]
    assert (bf16.runtime, bf16.pipeline, bf16.precision, bf16.served_model) == (
        "openvino",
        "fused",
        "bf16",
        "multimix",
    )
    assert TARGETS["triton-bytes"].served_model == "multimix_image" and not TARGETS["ov-split"].served
    for target in TARGETS.values():  # every field holds a value the runner knows
        assert target.runtime in ("pytorch", "onnxruntime", "openvino", "tensorrt"), target
        assert target.precision in ("fp32", "fp16", "bf16") and set(target.default_on) <= set(target.devices)
        assert target.pipeline in (*GRAPH_PIPELINES, "saliency", "reference", "shared-pass", "engines"), (
            target
        )


def test_cpu_peak_memory_is_the_resident_high_water_mark_of_the_timed_calls():
    from mmtrt.bench.measure import reset_peak_rss, resident_mb

    batches = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)]
    touch_200_mb = lambda b: float(np.ones(200 * 2**20 // 8).sum())  # noqa: E731 (allocated and written)
    if not reset_peak_rss():  # no /proc/self/clear_refs to write: no figure rather than a wrong one
        assert (
            measure("probe", lambda b: None, batches, warmup=0, min_calls=2, min_seconds=0).peak_memory_mb
            is None
        )
        return
    before = resident_mb()
    allocating = measure("alloc", touch_200_mb, batches, warmup=1, min_calls=2, min_seconds=0)
    assert allocating.peak_memory_mb >= before + 190
    before = resident_mb()  # the warm-up's 200 MB above are not a peak of these timed calls
    idle = measure("idle", lambda b: None, batches, warmup=1, min_calls=2, min_seconds=0)
    assert before - 1 <= idle.peak_memory_mb < before + 50


# --------------------------------------------------------------------------- devices and targets


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sum_graph(graph: str) -> onnx.ModelProto:
    """A stand-in for an exported graph, with its tensor names (see the module docstring)."""
    spec = GRAPHS[graph]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, 256, 256])
    nodes = [helper.make_node("Sum", list(spec.inputs), ["total"])]
    constants = [
        numpy_helper.from_array(np.array(i, np.float32), f"c{i}") for i in range(1, len(spec.outputs) + 1)
    ]
    nodes += [helper.make_node("Add", ["total", f"c{i}"], [name]) for i, name in enumerate(spec.outputs, 1)]
    return helper.make_model(
        helper.make_graph(
            nodes, graph, [value(n) for n in spec.inputs], [value(n) for n in spec.outputs], constants
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "multimix.pt"
    assert invoke("init", path).exit_code == 0
    return path


@pytest.fixture(scope="module")
def sum_export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sum-export")
    for graph in GRAPHS:
        onnx.save(sum_graph(graph), str(folder / f"{graph}.onnx"))
    return folder


def expected_joint(images: torch.Tensor, split: bool) -> tuple[torch.Tensor, ...]:
    """probs, mask, saliency of the sum graphs / fake engines: fused, or saliency then decoder (whose
    inputs are image, saliency x+8, skip1..5 x+3..x+7; its mask is the second output)."""
    if not split:
        return images + 1, images + 2, images + 3
    decoder_inputs = [images, images + 8, *(images + k for k in range(3, 8))]
    return images + 2, sum(decoder_inputs) + 2, images + 8


@pytest.mark.parametrize("target", ["cuda-graphs", "eager-fp16", "compiled-fp16", "eager-bf16", "tensorrt"])
def test_cpu_refuses_the_gpu_only_targets_before_doing_anything(tmp_path, target):
    checkpoint = tmp_path / "any.pt"
    checkpoint.write_bytes(b"")  # never read: the targets are checked first
    result = invoke("bench", checkpoint, tmp_path, "--targets", f"eager,{target}", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert f"{target}: GPU-only target(s), give --device cuda" in result.output
    assert ("TensorRT needs a CUDA GPU" in result.output) == (target == "tensorrt")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is visible here")
def test_device_cuda_without_a_gpu_fails_clearly(tmp_path, checkpoint):
    result = invoke("bench", checkpoint, tmp_path, "--device", "cuda", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "--device" in result.output and "no CUDA GPU is visible to PyTorch" in result.output
    assert not (tmp_path / "out").exists()


def test_onnxruntime_targets_chain_the_split_graphs_by_name(sum_export):
    images = torch.rand(3, 1, 256, 256)
    targets, notes = onnx_targets(sum_export, ["eager", "ort-fused", "ort-split"], torch.device("cpu"))
    assert list(targets) == ["ort-fused", "ort-split"] and not notes
    for name, split in (("ort-fused", False), ("ort-split", True)):
        for got, want in zip(targets[name](images), expected_joint(images, split)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, err_msg=name)


def test_openvino_targets_chain_the_split_graphs_by_name(sum_export):
    pytest.importorskip("openvino")
    images = torch.rand(3, 1, 256, 256)
    names = ["ort-fused", "ov-fused", "ov-split", "ov-encoder", "ov-saliency"]
    targets, notes = openvino_targets(sum_export, names, torch.device("cpu"))
    assert list(targets) == ["ov-fused", "ov-split", "ov-encoder", "ov-saliency"] and not notes
    for name, split in (("ov-fused", False), ("ov-split", True)):
        for got, want in zip(targets[name](images), expected_joint(images, split)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(targets["ov-encoder"](images)["probs"], (images + 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(targets["ov-saliency"](images)["saliency"], (images + 8).numpy(), rtol=1e-6)
    none, notes = openvino_targets(sum_export, ["ov-fused"], torch.device("cuda"))
    assert not none and notes == ["ov-fused not measured: OpenVINO targets run on the CPU (--device cpu)"]


@pytest.fixture
def bf16_export(tmp_path) -> Path:
    """A sum export made with --precision bf16: each graph beside its "bf16 copy", a sum graph that
    adds 100 more, to tell the files apart (float32 inside, so any CPU runs it)."""
    folder = tmp_path / "bf16-export"
    folder.mkdir()
    for graph in GRAPHS:
        onnx.save(sum_graph(graph), str(folder / f"{graph}.onnx"))
        copy = sum_graph(graph)
        for init in copy.graph.initializer:
            init.CopyFrom(
                numpy_helper.from_array((numpy_helper.to_array(init) + 100).astype(np.float32), init.name)
            )
        onnx.save(copy, str(folder / f"{graph}.bf16.onnx"))
    write_manifest(folder, {"precision": "bf16", "max_batch": 8, "files": {}, "graphs": {}})
    return folder


NO_BF16_HARDWARE = (
    "ov-fused-bf16 not measured: this host has no bf16 hardware (no avx512_bf16 / amx_bf16 CPU flag, "
    "no BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES): the bf16 copies are checked in onnxruntime "
    "only, and CPU serving runs float32"
)


@pytest.mark.parametrize("host", ["this host", "the other kind of host"])
def test_openvino_bf16_targets_run_the_exports_bf16_copies(sum_export, bf16_export, monkeypatch, host):
    """On a host with bf16 hardware the -bf16 targets run the export's bf16 copies, and an fp32
    export is noted; on one without, the missing hardware is noted (whatever the export). Both kinds
    of host are checked everywhere: the one this test runs on as it is, the other by answering the
    hardware question the other way (bf16 hardware cannot be added to a CPU)."""
    ov_runtime = pytest.importorskip("mmtrt.runtimes.openvino")
    has_bf16 = ov_runtime.host_has("bf16")
    if host != "this host":
        has_bf16 = not has_bf16
        monkeypatch.setattr(ov_runtime, "host_has", lambda precision, *args, **kwargs: has_bf16)
    cpu = torch.device("cpu")

    fp32_only, notes = openvino_targets(sum_export, ["ov-fused-bf16"], cpu)
    assert not fp32_only and notes == [
        "ov-fused-bf16 not measured: the export is fp32 (mmtrt export --precision bf16 makes the copies)"
        if has_bf16
        else NO_BF16_HARDWARE
    ]
    targets, notes = openvino_targets(bf16_export, ["ov-fused", "ov-fused-bf16"], cpu)
    images = torch.rand(2, 1, 256, 256)
    np.testing.assert_allclose(targets["ov-fused"](images)[0], (images + 1).numpy(), rtol=1e-6)
    if not has_bf16:
        assert list(targets) == ["ov-fused"] and notes == [NO_BF16_HARDWARE]
        return
    assert list(targets) == ["ov-fused", "ov-fused-bf16"] and not notes
    np.testing.assert_allclose(targets["ov-fused-bf16"](images)[0], (images + 101).numpy(), rtol=1e-6)


def test_cpu_only_openvino_targets_are_refused_on_cuda(tmp_path):
    checkpoint = tmp_path / "any.pt"
    checkpoint.write_bytes(b"")
    result = invoke(
        "bench", checkpoint, tmp_path, "--device", "cuda", "--targets", "ov-split", "--out", tmp_path / "o"
    )
    assert result.exit_code == 2 and "ov-split: OpenVINO CPU target(s), give --device cpu" in result.output


def bench_run(checkpoint: Path, export: Path, out: Path, *options) -> tuple[dict, str]:
    """`mmtrt bench CHECKPOINT EXPORT --seconds 0 --out OUT OPTIONS`, which must succeed: its
    bench.json and its output."""
    result = invoke("bench", checkpoint, export, "--seconds", "0", "--out", out, *options)
    assert result.exit_code == 0, result.output
    return json.loads((out / "bench.json").read_text()), result.output


def test_bench_on_the_cpu_writes_every_batch_even_above_the_image_pool(tmp_path, checkpoint, sum_export):
    out = tmp_path / "out"
    report, output = bench_run(
        checkpoint, sum_export, out, "--targets", "ort-fused,ort-split", "--batch-size", "1,40"
    )
    assert [(r["target"], r["batch"]) for r in report["in_process"]] == [
        ("ort-fused", 1),
        ("ort-split", 1),
        ("ort-fused", 40),
        ("ort-split", 40),
    ]
    assert (out / "bench.md").is_file() and (out / "bench.png").is_file()
    # measurements and ratios only: no thresholds of this project's own
    assert "goals" not in report and "goal" not in output and "goal" not in (out / "bench.md").read_text()


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are present here")
def test_a_tensorrt_target_that_cannot_run_fails_when_asked_for_and_is_noted_by_default(
    tmp_path, checkpoint, sum_export
):
    def bench(required):
        return run_bench(
            checkpoint,
            sum_export,
            tmp_path / str(required),
            device="cpu",
            targets=["ort-fused", "tensorrt"],
            batch_sizes=[1],
            concurrency=[1],
            triton_batch_size=1,
            seconds=0,
            use_perf_analyzer=False,
            tensorrt_required=required,
            progress=tqdm(disable=True),
            command="test",
        )

    with pytest.raises(trt_code.TensorRTUnavailable, match=NO_TENSORRT.split(" (")[0]):
        bench(required=True)
    report = bench(required=False)
    assert [r["target"] for r in report["in_process"]] == ["ort-fused"]
    assert f"tensorrt not measured: {NO_TENSORRT}" in report["notes"]
    assert (
        f"tensorrt not measured: {NO_TENSORRT}"
        in json.loads((tmp_path / "False" / "bench.json").read_text())["notes"]
    )


# --------------------------------------------------------------------------- TensorRT engines, device side


class NoGPUStream:
    """A stand-in for torch.cuda.Stream where there is no GPU: a handle, and the streams it waited for."""

    def __init__(self, handle: int):
        self.cuda_stream, self.waited_for = handle, []

    def wait_stream(self, other):
        self.waited_for.append(other)


@pytest.fixture
def no_gpu_streams(monkeypatch):
    """EngineRunner's CUDA streams replaced by NoGPUStream: the engine logic runs here on CPU tensors
    (FakeTensorRT's engines compute through the addresses they are given)."""
    streams = types.SimpleNamespace(caller=NoGPUStream(0), made=[])  # 0: the default stream

    def new_stream():
        streams.made.append(NoGPUStream(len(streams.made) + 1))
        return streams.made[-1]

    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams.caller)
    return streams


def test_engine_runner_runs_on_its_own_stream_into_buffers_kept_per_batch_size(no_gpu_streams, monkeypatch):
    trt = use_fake_tensorrt(monkeypatch, 10)
    runner = trt_code.EngineRunner(FakeTensorRT.fake_plan("decoder", max_batch=4))
    assert runner.inputs == list(GRAPHS["decoder"].inputs) and runner.outputs == ["mask_logits", "mask"]

    def inputs(batch, seed):
        generator = torch.Generator().manual_seed(seed)
        return {name: torch.rand(batch, 1, 8, 8, generator=generator) for name in runner.inputs}

    first = inputs(2, seed=0)
    out = runner.run_device(first)
    assert torch.equal(out["mask_logits"], sum(first.values()) + 1) and torch.equal(
        out["mask"], sum(first.values()) + 2
    )
    addresses = {name: t.data_ptr() for name, t in out.items()}
    second = inputs(2, seed=1)
    again = runner.run_device(second)
    assert {name: t.data_ptr() for name, t in again.items()} == addresses  # same batch size: same buffers
    assert torch.equal(again["mask"], sum(second.values()) + 2)
    other = runner.run_device(inputs(3, seed=2))
    assert other["mask"].shape == (3, 1, 8, 8) and other["mask"].data_ptr() not in addresses.values()

    (own,) = no_gpu_streams.made
    assert own.cuda_stream != 0 and trt.record["executed_on"] == [own.cuda_stream] * 3
    # after the caller's queued work, and before the caller's next
    assert own.waited_for == [no_gpu_streams.caller] * 3 and no_gpu_streams.caller.waited_for == [own] * 3
    with pytest.raises(trt_code.EngineBuildError, match="outside the engine's optimization profile"):
        runner.run_device(inputs(5, seed=3))


def engine_export(folder: Path, graphs: list[str], state: str = "built", max_batch: int = 8) -> Path:
    """An export folder as `mmtrt build-engines` leaves it, as far as the engines go (FakeTensorRT plans)."""
    folder.mkdir()
    for graph in graphs:
        (folder / f"{graph}.plan").write_bytes(FakeTensorRT.fake_plan(graph, max_batch))
    files = {f"{g}.plan": file_entry(folder / f"{g}.plan", kind="tensorrt", graph=g) for g in graphs}
    engines = {
        "state": state,
        "profile": {"min": 1, "opt": max_batch, "max": max_batch},
        "plans": {g: {"file": f"{g}.plan"} for g in graphs},
    }
    write_manifest(folder, {"files": files, "engines": engines})
    return folder


@pytest.mark.parametrize(
    "graphs, split",
    [(["encoder", "saliency", "decoder", "multimix"], False), (["encoder", "saliency", "decoder"], True)],
    ids=["fused", "split"],
)
def test_the_tensorrt_target_runs_the_fused_engine_or_chains_saliency_and_decoder(
    tmp_path, no_gpu_streams, monkeypatch, graphs, split
):
    trt = use_fake_tensorrt(monkeypatch, 11)
    run, largest = trt_code.engine_pipeline(engine_export(tmp_path / "export", graphs, max_batch=4))
    assert largest == 4 and trt.record["loaded"] == (["saliency", "decoder"] if split else ["multimix"])
    images = torch.rand(2, 1, 8, 8)
    for got, want in zip(run(images), expected_joint(images, split)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_tensorrt_target_without_engines_says_how_to_build_them(tmp_path):
    folder = engine_export(tmp_path / "export", [], state="not built")
    with pytest.raises(
        trt_code.TensorRTUnavailable,
        match=f"has no TensorRT engines .state: not built.; build them on this host with: mmtrt build-engines {folder}",
    ):
        trt_code.engine_pipeline(folder)


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_bench_on_the_gpu(tmp_path, checkpoint, sum_export):  # pragma: no cover - no GPU here
    report, _ = bench_run(
        checkpoint, sum_export, tmp_path / "out", "--device", "cuda", "--targets", "eager,eager-fp16,ort-fused",
        "--batch-size", "2",
    )  # fmt: skip
    rows = {r["target"]: r for r in report["in_process"]}
    assert rows["eager"]["peak_memory_mb"] > 0 and "eager-fp16" in rows  # timed on the GPU
    assert "ort-fused" in rows or any(n.startswith("ort-fused not measured") for n in report["notes"])


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and a CUDA GPU: {NO_TENSORRT}")
def test_engines_on_a_tensorrt_host(tmp_path, sum_export):  # pragma: no cover - no TensorRT here
    trt = trt_code.require_tensorrt()
    manifest = {"precision": "fp32", "graphs": {g: {"file": f"{g}.onnx"} for g in ("saliency", "decoder")}}
    plans = {}
    for spec in trt_code.engine_specs(
        manifest, trt_code.major_version(trt), torch.cuda.get_device_capability()
    ):
        plans[spec.graph] = trt_code.build_engine(
            spec, sum_export / spec.onnx, max_batch=4, timing_cache=tmp_path / "timing.cache"
        )
    images = torch.rand(3, 1, 256, 256)
    saliency = trt_code.EngineRunner(plans["saliency"])
    on_host = saliency({"image": images.numpy()})
    np.testing.assert_allclose(on_host["saliency"], (images + 8).numpy(), rtol=1e-6)
    on_device = saliency.run_device({"image": images.cuda()})
    assert (
        on_device["saliency"].is_cuda
        and saliency.run_device({"image": images.cuda()})["saliency"].data_ptr()
        == on_device["saliency"].data_ptr()
    )

    folder = tmp_path / "export"
    folder.mkdir()
    for graph, plan in plans.items():
        (folder / f"{graph}.plan").write_bytes(plan)
    write_manifest(
        folder,
        {
            "files": {f"{g}.plan": file_entry(folder / f"{g}.plan") for g in plans},
            "engines": {
                "state": "built",
                "profile": {"max": 4},
                "plans": {g: {"file": f"{g}.plan"} for g in plans},
            },
        },
    )
    run, largest = trt_code.engine_pipeline(folder)
    images = images.cuda()
    for got, want in zip(run(images), expected_joint(images, split=True)):
        torch.testing.assert_close(got, want)
