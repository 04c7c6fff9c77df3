"""mmtrt.runtimes.openvino: the real graphs compiled by OpenVINO's CPU plugin, against onnxruntime
and PyTorch on fresh random, flat-border and synthetic X-ray images at batch 1, 3 and 8; the
precision hint f32 on every compiled model, and a mixed-precision copy running exactly its
reduced convolutions in bf16; bf16 / fp16 hardware detection; the compiled blob cache; the same
runners through run_pipeline and the export's parity check."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import IMAGE_KINDS, real_export, tiny_saliency_graph

from mmtrt.export.validate import TOLERANCES, installed_runtimes, serving_runners, validate
from mmtrt.graphs import GRAPHS, JOINT_OUTPUTS, run_pipeline
from mmtrt.parity import cosine, relative_error
from mmtrt.runtimes import ort, pytorch

ov_runtime = pytest.importorskip("mmtrt.runtimes.openvino")
if not ov_runtime.available():  # pragma: no cover - setup.sh installs it
    pytest.skip("OpenVINO is not installed", allow_module_level=True)

FP32 = TOLERANCES["fp32"]


@pytest.fixture(scope="module")
def export_dir(request):
    return real_export(request, graphs=tuple(GRAPHS))


@pytest.fixture(scope="module")
def ov_runners(export_dir):
    return ov_runtime.runners(export_dir, list(GRAPHS), threads=1)


@pytest.fixture(scope="module")
def ort_runners(export_dir):
    return ort.runners(export_dir, list(GRAPHS), threads=1)


def _close(name, actual, expected, where):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, where
    if name == "saliency":
        # gates (LeakyReLU signs, max-pool winners) may flip between two float32 runtimes: judged
        # by direction per image, as the export's parity check judges it
        for i in range(len(actual)):
            assert cosine(actual[i], expected[i]) >= FP32.saliency_cosine, where
    elif name == "mask":
        assert float(np.abs(actual - expected).max()) <= FP32.mask_abs, where
    else:
        limit = FP32.mask_logits_rel if name == "mask_logits" else FP32.skip_rel
        assert relative_error(actual, expected) <= limit, f"{where}: {relative_error(actual, expected):.2e}"


# every image kind and every batch size, each pair once (the export's parity check runs the full grid)
@pytest.mark.parametrize(("kind", "batch"), [("random", 1), ("flat", 3), ("xray", 8)])
def test_every_graph_matches_onnxruntime(ov_runners, ort_runners, kind, batch):
    images = IMAGE_KINDS[kind](batch, seed=8_100_000 + batch).numpy()
    expected = run_pipeline(ort_runners, images, "joint")
    actual = run_pipeline(ov_runners, images, "joint")
    for graph in ("encoder", "multimix"):
        expected.update({f"{graph}.{k}": v for k, v in ort_runners[graph]({"image": images}).items()})
        actual.update({f"{graph}.{k}": v for k, v in ov_runners[graph]({"image": images}).items()})
    assert set(actual) == set(expected)
    for name in expected:
        if name != "image":
            _close(name.split(".")[-1], actual[name], expected[name], f"{name} {kind} b{batch}")


@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
def test_the_fused_graph_matches_pytorch(model, ov_runners, kind):
    images = IMAGE_KINDS[kind](3, seed=8_200_000).float()
    expected = pytorch.runners(model, ["multimix"])["multimix"]({"image": images})
    actual = ov_runners["multimix"]({"image": images.numpy()})
    assert list(actual) == list(GRAPHS["multimix"].outputs)
    for name in JOINT_OUTPUTS:
        _close(name, actual[name], expected[name].numpy(), f"{name} {kind}")
    assert relative_error(actual["probs"], expected["probs"].numpy()) <= FP32.class_rel


def test_outputs_stay_valid_after_the_next_call(ov_runners):
    first_images = IMAGE_KINDS["random"](1, seed=1).numpy()
    first = ov_runners["encoder"]({"image": first_images})
    kept = {k: v.copy() for k, v in first.items()}
    ov_runners["encoder"]({"image": IMAGE_KINDS["xray"](1, seed=2).numpy()})
    for name, value in kept.items():
        np.testing.assert_array_equal(first[name], value)


def test_both_runners_name_their_tensors_and_compute_what_is_asked(ov_runners, ort_runners):
    """What the served graph model uses: the graph's input names, its output shapes (the batch
    axis dynamic), and a call computing only the outputs asked for, as a full call gives them."""
    images = IMAGE_KINDS["xray"](2, seed=8_300_000).numpy()
    for runners in (ov_runners, ort_runners):
        runner = runners["encoder"]
        assert runner.inputs == list(GRAPHS["encoder"].inputs)
        assert list(runner.output_shapes) == list(GRAPHS["encoder"].outputs)
        assert runner.output_shapes["probs"][1:] == [2] and not isinstance(
            runner.output_shapes["probs"][0], int
        )
        full = runner({"image": images})
        probs = runner({"image": images}, outputs=["probs"])
        assert list(probs) == ["probs"]
        np.testing.assert_array_equal(probs["probs"], full["probs"])


def test_the_precision_is_set_explicitly_on_the_compiled_model(export_dir):
    import openvino as ov

    compiled = ov_runtime.compile_model(export_dir / "encoder.onnx", threads=1, streams=1)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert ov_runtime.properties()["INFERENCE_PRECISION_HINT"] == "f32"
    with pytest.raises(ValueError, match="threads must be >= 0 and streams >= 1"):
        ov_runtime.properties(streams=0)


def test_reduced_precision_hardware_detection_from_cpu_flags_and_openvino_capabilities():
    assert ov_runtime.host_has("bf16", {"avx2", "avx512_bf16"}, ())
    assert ov_runtime.host_has("bf16", {"amx_bf16"}, ())
    assert ov_runtime.host_has("bf16", {"avx2"}, ("FP32", "BF16"))
    assert not ov_runtime.host_has("bf16", {"avx2", "avx512f"}, ("FP32", "INT8"))
    assert ov_runtime.host_has("fp16", {"avx512_fp16"}, ())
    assert not ov_runtime.host_has("fp16", {"avx512_bf16"}, ("BF16",))
    flags = ov_runtime.cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert flags == {"fpu", "avx2", "avx512_bf16"}
    assert ov_runtime.reduced_precision_native("bf16", has_hardware=True) == (True, None)
    native, note = ov_runtime.reduced_precision_native("bf16", has_hardware=False)
    assert not native and "no bf16 hardware" in note and "CPU serving runs float32" in note
    assert ov_runtime.reduced_precision_native("fp32") == (False, None)
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        ov_runtime.reduced_precision_native("int8")
    # what this host says: lscpu's flags and the plugin agree
    assert ov_runtime.host_has("bf16") == (
        bool(ov_runtime.cpu_flags() & set(ov_runtime.NATIVE_FLAGS["bf16"]))
        or "BF16" in ov_runtime.openvino_capabilities()
    )


def _runtime_precisions(compiled) -> dict[str, list[str]]:
    """Runtime-model layer type -> the precisions its layers ran in."""
    found: dict[str, list[str]] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        found.setdefault(info["layerType"].astype(str), []).append(info["runtimePrecision"].astype(str))
    return found


@pytest.mark.skipif(
    not ov_runtime.host_has("bf16"), reason="this host has no bf16 hardware (avx512_bf16 / amx_bf16)"
)
def test_a_bf16_copy_runs_exactly_its_reduced_convolutions_in_bf16(tmp_path):
    """With the f32 hint, OpenVINO runs the file's types: the forward convolution of a saliency
    graph stays f32, the backward-half and decoder convolutions run bf16."""
    import onnx

    from mmtrt.export.precision import mixed_precision

    path = tmp_path / "tiny.bf16.onnx"
    onnx.save(mixed_precision(tiny_saliency_graph(22), "bf16"), str(path))
    compiled = ov_runtime.compile_model(path, threads=1)
    assert sorted(_runtime_precisions(compiled)["Convolution"]) == ["bf16", "bf16", "f32"]
    fp32 = tmp_path / "tiny.onnx"
    onnx.save(tiny_saliency_graph(22), str(fp32))
    assert _runtime_precisions(ov_runtime.compile_model(fp32, threads=1))["Convolution"] == ["f32"] * 3
    image = np.random.default_rng(4).random((2, 1, 64, 64), dtype=np.float32) - 0.5
    reduced = ov_runtime.runner(path, threads=1)({"image": image})
    full = ov_runtime.runner(fp32, threads=1)({"image": image})
    np.testing.assert_array_equal(reduced["probs"], full["probs"])  # the forward pass: f32
    assert 0 < relative_error(reduced["saliency"], full["saliency"]) < 1e-2


def test_the_blob_cache_is_written_and_reused(export_dir, tmp_path):
    images = IMAGE_KINDS["flat"](2, seed=3).numpy()
    first = ov_runtime.runner(export_dir / "encoder.onnx", threads=1, cache_dir=tmp_path / "cache")
    blobs = sorted((tmp_path / "cache").iterdir())
    assert blobs, "no compiled blob in CACHE_DIR"
    again = ov_runtime.runner(export_dir / "encoder.onnx", threads=1, cache_dir=tmp_path / "cache")
    assert sorted((tmp_path / "cache").iterdir()) == blobs  # loaded, not compiled anew
    a, b = first({"image": images}), again({"image": images})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_serialized_models_compile_too(export_dir):
    images = IMAGE_KINDS["xray"](1, seed=4).numpy()
    from_bytes = ov_runtime.runner((export_dir / "encoder.onnx").read_bytes(), threads=1)
    from_file = ov_runtime.runner(export_dir / "encoder.onnx", threads=1)
    for name, value in from_file({"image": images}).items():
        np.testing.assert_array_equal(from_bytes({"image": images})[name], value)


def test_the_export_check_validates_openvino_against_pytorch(model, export_dir, monkeypatch):
    """The export's parity check (mmtrt.export.validate) with the runners the exporter adds for
    OpenVINO, on 14 of its validation images (an export uses 30) to keep it quick."""
    import mmtrt.export.validate as validation

    assert installed_runtimes() == ["onnxruntime", "openvino"]
    batches = validation.validation_batches
    monkeypatch.setattr(validation, "validation_batches", lambda max_batch: batches(max_batch, min_images=12))
    runners = serving_runners({g: export_dir / f"{g}.onnx" for g in ("saliency", "decoder")}, ["openvino"])
    assert set(runners) == {
        ("saliency.openvino", "saliency", "fp32"),
        ("decoder.openvino", "decoder", "fp32"),
    }
    report = validate(runners, model, max_batch=8)
    assert report["passed"], report["failures"]
    assert report["batch_sizes"] == [1, 3, 8]
    assert {r["graph"] for r in report["rows"]} == {"saliency.openvino", "decoder.openvino"}
    decoder = runners[("decoder.openvino", "decoder", "fp32")]
    off = lambda inputs: {k: v * (1 + 1e-3) for k, v in decoder(inputs).items()}
    wrong = validate({("decoder.openvino", "decoder", "fp32"): off}, model, max_batch=8)
    assert not wrong["passed"] and any(f.startswith("decoder.openvino [fp32]") for f in wrong["failures"])
    with pytest.raises(ValueError, match="unknown runtime"):
        serving_runners({}, ["tvm"])
