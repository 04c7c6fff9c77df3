"""mmtrt.runtimes.openvino: the real graphs compiled by OpenVINO's CPU plugin, against onnxruntime
and PyTorch on fresh random, flat-border and synthetic X-ray images at batch 1, 3 and 8; the
precision always explicit on the compiled model; bf16 detection and its fallback; the compiled
blob cache; the same runners through run_pipeline and the export's parity check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import BATCH_SIZES, IMAGE_KINDS, real_export

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


@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
@pytest.mark.parametrize("batch", BATCH_SIZES)
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


def test_the_precision_is_set_explicitly_on_the_compiled_model(export_dir):
    import openvino as ov

    compiled = ov_runtime.compile_model(export_dir / "encoder.onnx", threads=1, streams=1)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert ov_runtime.properties()["INFERENCE_PRECISION_HINT"] == "f32"
    assert ov_runtime.properties("bf16")["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(ValueError, match="unknown OpenVINO precision 'fp16'"):
        ov_runtime.properties("fp16")


def test_bf16_detection_from_cpu_flags_and_openvino_capabilities():
    assert ov_runtime.host_has_bf16({"avx2", "avx512_bf16"}, ())
    assert ov_runtime.host_has_bf16({"amx_bf16"}, ())
    assert ov_runtime.host_has_bf16({"avx2"}, ("FP32", "BF16"))
    assert not ov_runtime.host_has_bf16({"avx2", "avx512f"}, ("FP32", "INT8"))
    flags = ov_runtime.cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert flags == {"fpu", "avx2", "avx512_bf16"}
    assert ov_runtime.effective_precision("bf16", has_bf16=True) == ("bf16", None)
    precision, note = ov_runtime.effective_precision("bf16", has_bf16=False)
    assert precision == "f32" and "no bf16 hardware" in note
    assert ov_runtime.effective_precision("f32", has_bf16=True) == ("f32", None)
    # what this host says: lscpu's flags and the plugin agree
    assert ov_runtime.host_has_bf16() == (
        bool(ov_runtime.cpu_flags() & set(ov_runtime.BF16_FLAGS))
        or "BF16" in ov_runtime.openvino_capabilities()
    )


def test_bf16_without_bf16_hardware_compiles_in_f32_with_a_message(export_dir, caplog, monkeypatch):
    import openvino as ov

    monkeypatch.setattr(ov_runtime, "host_has_bf16", lambda *a, **k: False)
    with caplog.at_level(logging.WARNING, logger="mmtrt.runtimes.openvino"):
        compiled = ov_runtime.compile_model(export_dir / "encoder.onnx", precision="bf16", threads=1)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert "bf16 requested but this host has no bf16 hardware" in caplog.text


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
