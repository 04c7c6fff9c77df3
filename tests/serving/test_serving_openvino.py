"""The cpu flavour served with OpenVINO (`mmtrt repo --runtime openvino`) by the real Triton
server over HTTP and gRPC, against the same graph compiled in-process by mmtrt.runtimes.openvino;
the runtime choice (`auto`, bad names, bf16) of the repository builder and `mmtrt repo`. The
server is conftest's, over this module's `repo` (the OpenVINO one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import IMAGE_KINDS, needs_server

from mmtrt.cli import main
from mmtrt.serving import ServingError, build_repository, validate_config, validate_repository
from mmtrt.serving.config import OpenVINOSettings
from mmtrt.serving.cpu_runtime import AUTO_MARGIN, choose_runtime, openvino_problem

ov_runtime = pytest.importorskip("mmtrt.runtimes.openvino")
if not ov_runtime.available():  # pragma: no cover - setup.sh installs it
    pytest.skip("OpenVINO is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        runtime="openvino",
        openvino=OpenVINOSettings(threads=1),
        ort_threads=1,
    )


@pytest.fixture(scope="module")
def in_process(export_dir):
    return {
        model: ov_runtime.runner(export_dir / f"{graph}.onnx", threads=1)
        for model, graph in (("multimix", "multimix"), ("classifier", "encoder"))
    }


def _client(protocol, server):
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(server.http_url, network_timeout=120.0)
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(server.grpc_url)


def test_configs_name_openvino_with_an_explicit_precision(repo, export_dir):
    validate_repository(repo, onnx_dir=export_dir)
    for name in ("multimix", "classifier"):
        params = validate_config(repo / name / "config.pbtxt").parameters
        assert params["runtime"].string_value == "openvino"
        assert params["runtime_choice"].string_value == "asked for"
        assert params["ov_inference_precision"].string_value == "f32"
        assert params["ov_num_threads"].string_value == "1"
        assert params["ov_num_streams"].string_value == "1"


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_openvino_answers_as_in_process_openvino(server, in_process, protocol):
    module, client = _client(protocol, server)
    try:
        for model, outputs in (
            ("multimix", ("probs", "mask", "saliency")),
            ("classifier", ("probs",)),
        ):
            for kind, batch in (("random", 1), ("flat", 3), ("xray", 8)):
                images = IMAGE_KINDS[kind](batch, seed=9100 + batch).numpy()
                inp = module.InferInput("image", list(images.shape), "FP32")
                inp.set_data_from_numpy(images)
                result = client.infer(model, [inp])
                expected = in_process[model]({"image": images})
                for name in outputs:
                    np.testing.assert_allclose(
                        result.as_numpy(name), expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{model} {name}"
                    )
                label = result.as_numpy("label")
                assert label.shape == (batch, 1)
                assert (label[:, 0] == expected["probs"].argmax(1)).all()
    finally:
        client.close()


@needs_server
def test_served_model_config_says_openvino(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        config = client.get_model_config("multimix")
    finally:
        client.close()
    assert config["parameters"]["runtime"]["string_value"] == "openvino"
    assert config["parameters"]["ov_inference_precision"]["string_value"] == "f32"


# --------------------------------------------------------------------------- choosing the runtime


def test_auto_takes_the_faster_runtime_by_the_documented_margin(export_dir):
    files = [export_dir / "multimix.onnx", export_dir / "encoder.onnx"]

    def timed(ort_ms, ov_ms):
        return lambda files, **_: {
            "onnxruntime": {f.name: ort_ms for f in files},
            "openvino": {f.name: ov_ms for f in files},
        }

    faster = choose_runtime("auto", {}, files, measure_fn=timed(100.0, 80.0))
    assert faster.runtime == "openvino" and "openvino 160.0 ms" in faster.reason
    within_margin = choose_runtime("auto", {}, files, measure_fn=timed(100.0, 100.0 * (1 - AUTO_MARGIN / 2)))
    assert within_margin.runtime == "onnxruntime"
    slower = choose_runtime("auto", {}, files, measure_fn=timed(80.0, 100.0))
    assert slower.runtime == "onnxruntime" and slower.reason.startswith("auto: onnxruntime")


def test_auto_measures_both_runtimes_for_real(export_dir, tmp_path):
    built = build_repository(
        export_dir,
        tmp_path / "repo",
        models=("classifier",),
        runtime="auto",
        ort_threads=1,
        openvino=OpenVINOSettings(threads=1),
    )
    params = validate_config(built / "classifier" / "config.pbtxt").parameters
    assert params["runtime"].string_value in ("onnxruntime", "openvino")
    reason = params["runtime_choice"].string_value
    assert reason.startswith(
        f"auto: {params['runtime'].string_value} (measured here, encoder.onnx at batch 2"
    )


def test_openvino_needs_an_export_validated_in_openvino(export_dir, tmp_path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert openvino_problem(manifest) is None  # no parity record: nothing to contradict
    only_ort = dict(manifest, parity={"passed": True, "runtimes": ["onnxruntime"]})
    assert "covered onnxruntime only" in openvino_problem(only_ort)
    assert "predates" in openvino_problem(dict(manifest, parity={"passed": True}))
    with pytest.raises(ServingError, match="--runtime openvino: the export's parity check covered"):
        choose_runtime("openvino", only_ort, [export_dir / "encoder.onnx"])
    auto = choose_runtime("auto", only_ort, [export_dir / "encoder.onnx"])
    assert auto.runtime == "onnxruntime" and "covered onnxruntime only" in auto.reason


def test_bf16_is_refused_for_the_saliency_and_falls_back_without_bf16_hardware(export_dir, tmp_path, caplog):
    with pytest.raises(ServingError, match="bf16 refused for multimix"):
        build_repository(
            export_dir, tmp_path / "r1", runtime="openvino", openvino=OpenVINOSettings(precision="bf16")
        )
    assert not (tmp_path / "r1").exists()
    built = build_repository(
        export_dir,
        tmp_path / "r2",
        models=("classifier",),
        runtime="openvino",
        openvino=OpenVINOSettings(precision="bf16", threads=1),
    )
    rendered = validate_config(built / "classifier" / "config.pbtxt").parameters["ov_inference_precision"]
    assert rendered.string_value == ("bf16" if ov_runtime.host_has_bf16() else "f32")
    if not ov_runtime.host_has_bf16():
        assert "no bf16 hardware" in caplog.text


def test_repo_command_runtime_options(export_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r1"), "--runtime", "tensorflow"])
    assert r.exit_code == 2 and "Invalid value for '--runtime'" in r.stderr and "tensorflow" in r.stderr
    assert not (tmp_path / "r1").exists()
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r2"), "--ov-precision", "fp8"])
    assert r.exit_code == 2 and "--ov-precision" in r.stderr
    r = runner.invoke(
        main, ["repo", str(export_dir), str(tmp_path / "r3"), "--flavour", "gpu", "--runtime", "openvino"]
    )
    assert r.exit_code == 1 and "applies to the cpu flavour only" in r.stderr
    r = runner.invoke(
        main,
        ["repo", str(export_dir), str(tmp_path / "r4"), "--runtime", "openvino", "--ov-precision", "bf16"],
    )
    assert r.exit_code == 1 and "Error: OpenVINO bf16 refused for multimix" in r.stderr
    cache = tmp_path / "ov-cache"
    r = runner.invoke(
        main,
        [
            "repo",
            str(export_dir),
            str(tmp_path / "r5"),
            "--runtime",
            "openvino",
            "--ov-threads",
            "2",
            "--ov-cache-dir",
            str(cache),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "runtime openvino: asked for" in r.stdout
    params = validate_config(tmp_path / "r5" / "multimix" / "config.pbtxt").parameters
    assert params["ov_num_threads"].string_value == "2"
    assert params["ov_cache_dir"].string_value == str(cache.resolve())
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r6")])
    assert r.exit_code == 0 and "runtime onnxruntime: asked for" in r.stdout
    params = validate_config(tmp_path / "r6" / "multimix" / "config.pbtxt").parameters
    assert params["runtime"].string_value == "onnxruntime"
    assert params["ov_inference_precision"].string_value == "f32"  # rendered even when unused


@needs_server
def test_a_bad_runtime_parameter_refuses_to_load(export_dir, tmp_path):
    """model.py names the bad value and the choices (a config edited by hand)."""
    from helpers import processes_mentioning

    from mmtrt.serving import TritonServer

    built = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    cfg = built / "classifier" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('string_value: "onnxruntime"', 'string_value: "tvm"', 1))
    srv = TritonServer(built, log_file=tmp_path / "triton.log")
    with pytest.raises(ServingError) as info:
        srv.start(timeout=120)
    assert "parameter runtime is 'tvm': choose from onnxruntime, openvino" in str(info.value)
    assert not processes_mentioning(str(built))
