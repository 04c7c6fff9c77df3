"""The cpu flavour served with OpenVINO (`mmtrt repo --runtime openvino`) by the real Triton
server over HTTP and gRPC, against the same graph compiled in-process by mmtrt.runtimes.openvino;
the runtime choice (`auto`: a fixed rule, the same repository every time; bad names) and the precision (`--precision bf16`: the export's bf16
copies, served for real where this host has bf16 hardware) of the repository builder and
`mmtrt repo`. The server is conftest's, over this module's `repo` (the OpenVINO one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import IMAGE_KINDS, client_for, needs_server

from mmtrt.cli import main
from mmtrt.serving import ServingError, build_repository, validate_config, validate_repository
from mmtrt.serving.cpu_runtime import RuntimeChoice, choose_runtime, openvino_problem
from mmtrt.serving.settings import OpenVINOSettings

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


def test_configs_name_openvino_its_file_and_precision(repo, export_dir):
    validate_repository(repo, onnx_dir=export_dir)
    for name, graph in (("multimix", "multimix"), ("classifier", "encoder")):
        params = validate_config(repo / name / "config.pbtxt").parameters
        assert params["runtime"].string_value == "openvino"
        assert params["runtime_choice"].string_value == "asked for"
        assert params["onnx_file"].string_value == f"{graph}.onnx"
        assert params["precision"].string_value == "fp32"
        assert params["ov_num_threads"].string_value == "1"
        assert params["ov_num_streams"].string_value == "1"


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_openvino_answers_as_in_process_openvino(server, in_process, protocol):
    with client_for(protocol, server) as client:
        for model, outputs in (
            ("multimix", ("probs", "mask", "saliency", "ood_score", "in_distribution")),
            ("classifier", ("probs", "ood_score", "in_distribution")),
        ):
            for kind, batch in (("random", 1), ("flat", 3), ("xray", 8)):
                images = IMAGE_KINDS[kind](batch, seed=9100 + batch).numpy()
                result = client.infer(model, {"image": images})
                expected = in_process[model]({"image": images})
                for name in outputs:
                    np.testing.assert_allclose(
                        result[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=f"{model} {name}"
                    )
                label = result["label"]
                assert label.shape == (batch, 1)
                assert (label[:, 0] == expected["probs"].argmax(1)).all()


@needs_server
def test_served_model_config_says_openvino(server):
    with client_for("http", server) as client:
        config = client.model("multimix").config
    assert config["parameters"]["runtime"]["string_value"] == "openvino"
    assert config["parameters"]["precision"]["string_value"] == "fp32"


# --------------------------------------------------------------------------- choosing the runtime


def test_auto_is_a_fixed_rule_of_the_precision():
    fp32 = choose_runtime("auto", {}, "fp32")
    assert fp32.runtime == "onnxruntime" and fp32.reason.startswith("auto: onnxruntime for fp32")
    for precision in ("bf16", "fp16"):
        reduced = choose_runtime("auto", {}, precision)
        assert reduced.runtime == "openvino"
        assert (
            reduced.reason == f"auto: openvino, the CPU runtime that runs {precision} convolutions natively"
        )
    assert choose_runtime("openvino", {}) == RuntimeChoice("openvino", "asked for")
    assert choose_runtime("onnxruntime", {}, "bf16") == RuntimeChoice("onnxruntime", "asked for")
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        choose_runtime("tvm", {})


def test_the_same_settings_build_the_same_repository(export_dir, tmp_path):
    """`auto` measures nothing: two builds are byte for byte the same, and say why the runtime."""

    def build(out):
        return build_repository(
            export_dir, out, runtime="auto", ort_threads=1, openvino=OpenVINOSettings(threads=1)
        )

    first, again = build(tmp_path / "a"), build(tmp_path / "b")
    params = validate_config(first / "classifier" / "config.pbtxt").parameters
    assert params["runtime"].string_value == "onnxruntime"
    assert params["runtime_choice"].string_value.startswith("auto: onnxruntime for fp32")

    def contents(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert contents(first) == contents(again)


def test_openvino_needs_an_export_validated_in_openvino(export_dir, tmp_path):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert openvino_problem(manifest) is None  # no parity record: nothing to contradict
    only_ort = dict(manifest, parity={"passed": True, "runtimes": ["onnxruntime"]})
    assert "covered onnxruntime only" in openvino_problem(only_ort)
    assert "predates" in openvino_problem(dict(manifest, parity={"passed": True}))
    with pytest.raises(ServingError, match="--runtime openvino: the export's parity check covered"):
        choose_runtime("openvino", only_ort)
    with pytest.raises(ServingError, match="bf16 is served by OpenVINO: the export's parity check covered"):
        choose_runtime("auto", only_ort, "bf16")
    assert choose_runtime("auto", only_ort).runtime == "onnxruntime"  # fp32


@pytest.fixture(scope="module")
def bf16_export(export_dir, tmp_path_factory):
    """The real export plus bf16 copies of its graphs made by mmtrt.export.precision (at opset 22,
    which bf16 convolutions need), with a manifest saying so as `mmtrt export --precision bf16`
    writes it (each copy's file entry names the runtimes its parity check ran it in)."""
    import shutil

    import onnx

    from mmtrt.export.manifest import file_entry, read_manifest, write_manifest
    from mmtrt.export.precision import mixed_precision

    folder = tmp_path_factory.mktemp("bf16-export")
    manifest = read_manifest(export_dir, check_files=False)
    for graph in ("multimix", "encoder"):
        shutil.copy2(export_dir / f"{graph}.onnx", folder / f"{graph}.onnx")
        proto = onnx.load(str(export_dir / f"{graph}.onnx"))
        proto.opset_import[0].version = 22
        onnx.save(mixed_precision(proto, "bf16"), str(folder / f"{graph}.bf16.onnx"))
        manifest["graphs"][graph]["reduced_precision_file"] = f"{graph}.bf16.onnx"
    manifest["files"] = {
        p.name: file_entry(p, **({"checked_in": ["onnxruntime", "openvino"]} if ".bf16." in p.name else {}))
        for p in sorted(folder.glob("*.onnx"))
    }
    write_manifest(
        folder,
        {
            **manifest,
            "precision": "bf16",
            "parity": {"passed": True, "runtimes": ["onnxruntime", "openvino"]},
        },
    )
    return folder


def test_bf16_needs_a_bf16_export_and_openvino(export_dir, bf16_export, tmp_path):
    with pytest.raises(
        ServingError, match=r"is fp32: it has no bf16 copies .*`mmtrt export --precision bf16`"
    ):
        build_repository(export_dir, tmp_path / "r1", runtime="openvino", precision="bf16")
    with pytest.raises(ServingError, match="bf16 on CPU is served by OpenVINO"):
        build_repository(bf16_export, tmp_path / "r2", runtime="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="precision applies to the cpu flavour"):
        build_repository(bf16_export, tmp_path / "r3", flavour="gpu", precision="bf16")
    assert not any(tmp_path.iterdir())
    if ov_runtime.host_has("bf16"):  # (without the hardware it falls back to fp32 before this check)
        import shutil

        from mmtrt.export.manifest import read_manifest, write_manifest

        unchecked = tmp_path / "unchecked-export"
        shutil.copytree(bf16_export, unchecked)
        manifest = read_manifest(unchecked, check_files=False)
        manifest["files"]["encoder.bf16.onnx"]["checked_in"] = ["onnxruntime"]
        write_manifest(unchecked, manifest)
        with pytest.raises(ServingError, match=r"copies encoder.bf16.onnx were not checked in OpenVINO"):
            build_repository(
                unchecked, tmp_path / "r4", models=("classifier",), runtime="openvino", precision="bf16"
            )
        assert not (tmp_path / "r4").exists()


def test_bf16_without_bf16_hardware_serves_float32_with_a_message(bf16_export, tmp_path, caplog, monkeypatch):
    # (the hardware's absence stands in for a host without avx512_bf16 / amx_bf16)
    monkeypatch.setattr(ov_runtime, "host_has", lambda precision, *a, **k: False)
    built = build_repository(
        bf16_export, tmp_path / "repo", models=("classifier",), runtime="auto", precision="bf16"
    )
    params = validate_config(built / "classifier" / "config.pbtxt").parameters
    assert params["precision"].string_value == "fp32" and params["onnx_file"].string_value == "encoder.onnx"
    assert "no bf16 hardware" in caplog.text and "CPU serving runs float32" in caplog.text


@needs_server
@pytest.mark.skipif(
    not ov_runtime.host_has("bf16"), reason="this host has no bf16 hardware (avx512_bf16 / amx_bf16)"
)
def test_served_bf16_copies_answer_as_in_process_openvino(bf16_export, tmp_path):
    """`mmtrt repo --precision bf16` serves the bf16 copies (auto picks OpenVINO, the runtime
    that runs them natively); the server's answers are the in-process OpenVINO runner's of the
    same file, and the copy's convolutions really run in bf16 there."""
    from helpers import start_server

    built = build_repository(
        bf16_export, tmp_path / "repo", runtime="auto", precision="bf16", openvino=OpenVINOSettings(threads=1)
    )
    params = validate_config(built / "multimix" / "config.pbtxt").parameters
    assert params["runtime"].string_value == "openvino" and "runs bf16 convolutions natively" in (
        params["runtime_choice"].string_value
    )
    assert (
        params["onnx_file"].string_value == "multimix.bf16.onnx"
        and params["precision"].string_value == "bf16"
    )
    assert (built / "multimix" / "1" / "multimix.bf16.onnx").is_file()
    expected_runner = ov_runtime.runner(bf16_export / "multimix.bf16.onnx", threads=1)
    precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in expected_runner.compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert precisions == {"f32", "bf16"}  # the forward in f32, the backward half and decoder in bf16
    srv = start_server(built, tmp_path / "triton.log")
    try:
        with client_for("grpc", srv) as client:
            for kind, batch in (("flat", 1), ("xray", 3)):
                images = IMAGE_KINDS[kind](batch, seed=9300 + batch).numpy()
                result = client.infer("multimix", {"image": images})
                expected = expected_runner({"image": images})
                for name in ("probs", "mask", "saliency", "ood_score", "in_distribution"):
                    np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, atol=1e-6)
    finally:
        srv.stop()


def test_repo_command_runtime_options(export_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r1"), "--runtime", "tensorflow"])
    assert r.exit_code == 2 and "Invalid value for '--runtime'" in r.stderr and "tensorflow" in r.stderr
    assert not (tmp_path / "r1").exists()
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r2"), "--precision", "fp8"])
    assert r.exit_code == 2 and "--precision" in r.stderr
    r = runner.invoke(
        main, ["repo", str(export_dir), str(tmp_path / "r3"), "--flavour", "gpu", "--runtime", "openvino"]
    )
    assert r.exit_code == 1 and "applies to the cpu flavour only" in r.stderr
    r = runner.invoke(
        main,
        ["repo", str(export_dir), str(tmp_path / "r4"), "--runtime", "openvino", "--precision", "bf16"],
    )
    assert r.exit_code == 1 and "Error: the export in" in r.stderr and "has no bf16 copies" in r.stderr
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
    assert params["precision"].string_value == "fp32"


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
