"""The GPU flavour of the model repository (TensorRT engines + ensembles), checked offline: no
GPU, TensorRT or Triton container is needed. Configs are parsed with Triton's own
``model_config_pb2``; tensor names and dims are compared with the real ONNX graphs (onnx.load)
the engines are built from."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from helpers import MAX_BATCH, processes_mentioning

from mmtrt.cli import main
from mmtrt.files import FOLDER_MARK
from mmtrt.serving import (
    RepositorySettings,
    ServingError,
    TritonServer,
    build_repository,
    find_tritonserver,
    missing_plan_files,
    render_config,
    served_model,
    validate_repository,
)
from mmtrt.serving.binary import bundled_root_of
from mmtrt.serving.client import model_config_pb2 as mc

ENGINES = ("encoder", "saliency", "decoder")
ENSEMBLES = ("multimix", "classifier")


@pytest.fixture(scope="module")
def export_dir(full_export_dir) -> Path:
    return full_export_dir


@pytest.fixture(scope="module")
def gpu_repo(export_dir, tmp_path_factory) -> Path:
    return build_repository(export_dir, tmp_path_factory.mktemp("gpu") / "repo", flavour="gpu")


def _config(path: Path):
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _onnx_io(path: Path) -> dict:
    """{"inputs"/"outputs": {name: (elem type, dims after the batch axis)}} from onnx.load."""
    model = onnx.load(str(path))

    def sig(values):
        out = {}
        for v in values:
            dims = [
                d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim
            ]
            assert isinstance(dims[0], str), f"{v.name}: batch axis is not dynamic ({dims})"
            out[v.name] = (v.type.tensor_type.elem_type, dims[1:])
        return out

    return {"inputs": sig(model.graph.input), "outputs": sig(model.graph.output)}


def _io(tensors) -> dict:
    return {t.name: (t.data_type, list(t.dims)) for t in tensors}


FP32 = (onnx.TensorProto.FLOAT, mc.TYPE_FP32)
BOOL = (onnx.TensorProto.BOOL, mc.TYPE_BOOL)


def test_served_models_render_and_parse(export_dir, tmp_path):
    from mmtrt.export.manifest import read_manifest
    from mmtrt.serving.repository import FLAVOUR_MODELS

    manifest = read_manifest(export_dir)
    names = sorted(FLAVOUR_MODELS["gpu"])
    assert names == sorted(ENGINES + ENSEMBLES)
    settings = RepositorySettings(flavour="gpu", max_queue_delay_us=100, gpu_instances=2)
    for max_batch in (1, 8, 32):
        for name in names:
            model = served_model(
                name, manifest, settings, max_batch=max_batch, cc_model_filenames={"9.0": "model.sm90.plan"}
            )
            cfg = mc.ModelConfig()
            text_format.Parse(render_config(model), cfg)
            assert cfg.name == name and cfg.max_batch_size == max_batch
            assert not cfg.parameters and not cfg.model_warmup
            if name in ENGINES:
                assert cfg.platform == "tensorrt_plan"
                assert [(g.kind, g.count) for g in cfg.instance_group] == [
                    (mc.ModelInstanceGroup.KIND_GPU, 2)
                ]
                assert list(cfg.dynamic_batching.preferred_batch_size) == [max_batch]
                assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
                assert cfg.default_model_filename == "model.plan"
                assert dict(cfg.cc_model_filenames) == {"9.0": "model.sm90.plan"}
            else:
                assert cfg.platform == "ensemble" and cfg.ensemble_scheduling.step
                assert not cfg.HasField("dynamic_batching") and not cfg.instance_group


def test_build_without_engines_writes_configs_and_names_the_missing(export_dir, gpu_repo, tmp_path, caplog):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert sorted(p.name for p in gpu_repo.iterdir()) == sorted([*ENGINES, *ENSEMBLES, FOLDER_MARK])
    for name in ENGINES + ENSEMBLES:
        cfg = _config(gpu_repo / name / "config.pbtxt")  # Triton's own message type parses it
        assert cfg.name == name
        assert cfg.max_batch_size == manifest["max_batch"] == MAX_BATCH
        assert (gpu_repo / name / "1").is_dir()
        assert list((gpu_repo / name / "1").iterdir()) == []  # no ONNX, no model.py, no engine yet
        if name in ENGINES:
            assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
            assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert sorted(str(p.relative_to(gpu_repo)) for p in missing_plan_files(gpu_repo)) == [
        f"{e}/1/model.plan" for e in sorted(ENGINES)
    ]
    # the build says which engine files are missing and how to make them
    with caplog.at_level(logging.WARNING, logger="mmtrt.serving.repository"):
        build_repository(export_dir, tmp_path / "repo", flavour="gpu", models=("classifier",))
    assert "encoder/1/model.plan" in caplog.text and "mmtrt build-engines" in caplog.text
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [FOLDER_MARK, "classifier", "encoder"]


def test_ensemble_steps_point_at_models_of_the_repository(gpu_repo):
    models = {p.parent.name: _config(p) for p in gpu_repo.glob("*/config.pbtxt")}
    expected_steps = {"multimix": ["saliency", "decoder"], "classifier": ["encoder"]}
    for name, steps in expected_steps.items():
        ens = models[name]
        assert [s.model_name for s in ens.ensemble_scheduling.step] == steps
        produced = set(t.name for t in ens.input)
        for step in ens.ensemble_scheduling.step:
            sub = models[step.model_name]  # the step's model is in the repository
            assert step.model_version == -1
            sub_in, sub_out = _io(sub.input), _io(sub.output)
            assert set(step.input_map) == set(sub_in), "every engine input is fed"
            assert set(step.input_map.values()) <= produced, "reads only what exists so far"
            assert set(step.output_map) <= set(sub_out)
            produced |= set(step.output_map.values())
            assert sub.max_batch_size >= ens.max_batch_size
        assert {t.name for t in ens.output} <= produced
    validate_repository(gpu_repo)  # the library's own check agrees


def test_tensor_names_and_dims_agree_with_the_onnx_graphs(export_dir, gpu_repo):
    onnx_io = {g: _onnx_io(export_dir / f"{g}.onnx") for g in ("encoder", "saliency", "decoder", "multimix")}
    models = {p.parent.name: _config(p) for p in gpu_repo.glob("*/config.pbtxt")}
    # each engine: exactly its ONNX graph's inputs and outputs, FP32 (the image gate's verdict
    # BOOL), same dims after the batch
    for name in ENGINES:
        for kind, tensors in (("inputs", models[name].input), ("outputs", models[name].output)):
            want = onnx_io[name][kind]
            have = _io(tensors)
            assert list(have) == list(want), (name, kind)
            for tensor, (dtype, dims) in have.items():
                assert (want[tensor][0], dtype) == (BOOL if tensor == "in_distribution" else FP32), (
                    name,
                    tensor,
                )
                assert dims == want[tensor][1], (name, tensor, dims, want[tensor][1])
    # each ensemble tensor: the dims of the graph output that produces it / input that reads it
    for name in ENSEMBLES:
        ens = models[name]
        for step in ens.ensemble_scheduling.step:
            graph = onnx_io[step.model_name]
            for key, value in step.input_map.items():
                source = _io(ens.input).get(value)
                if source is not None:
                    assert source[1] == graph["inputs"][key][1], (name, value)
            for key, value in step.output_map.items():
                assert key in graph["outputs"]
                out = _io(ens.output).get(value)
                if out is not None:
                    assert out[1] == graph["outputs"][key][1], (name, value)
    # the multimix ensemble has the fused graph's interface (what the CPU flavour serves), the
    # classifier ensemble the encoder's probs
    fused = onnx_io["multimix"]
    assert {k: v[1] for k, v in _io(models["multimix"].input).items()} == {
        k: v[1] for k, v in fused["inputs"].items()
    }
    assert {k: v[1] for k, v in _io(models["multimix"].output).items()} == {
        k: v[1] for k, v in fused["outputs"].items()
    }
    assert _io(models["classifier"].output)["probs"][1] == onnx_io["encoder"]["outputs"]["probs"][1]
    validate_repository(gpu_repo, onnx_dir=export_dir)  # the library's own check agrees


def _engine_export(export_dir: Path, folder: Path, capability: str = "sm90") -> Path:
    """A copy of the export as `mmtrt build-engines` leaves it: fp32 engines (fake bytes) named
    <graph>.fp32.smXY.plan beside the ONNX files, recorded in the manifest."""
    shutil.copytree(export_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["precision"] = "fp32"
    manifest["engines"] = {
        "state": "built",
        "capability": capability,
        "profile": {"min": 1, "opt": MAX_BATCH, "max": MAX_BATCH},
        "plans": {},
    }
    for graph in ENGINES:
        name = f"{graph}.fp32.{capability}.plan"
        (folder / name).write_bytes(f"fake {graph} engine".encode())
        manifest["files"][name] = {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        manifest["engines"]["plans"][graph] = {"file": name}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_engines_of_build_engines_are_copied(export_dir, tmp_path):
    export = _engine_export(export_dir, tmp_path / "export")
    r = CliRunner().invoke(main, ["repo", str(export), str(tmp_path / "repo"), "--flavour", "gpu"])
    assert r.exit_code == 0, r.output
    assert "missing" not in r.output and "mmtrt serve" in r.stdout
    repo = tmp_path / "repo"
    assert missing_plan_files(repo) == []
    for graph in ENGINES:
        assert (repo / graph / "1" / "model.plan").read_bytes() == f"fake {graph} engine".encode()
        cfg = _config(repo / graph / "config.pbtxt")
        assert dict(cfg.cc_model_filenames) == {"9.0": "model.plan"}
        assert cfg.max_batch_size == MAX_BATCH  # the profile's max
    # a batch above the engines' optimisation profile cannot be served
    with pytest.raises(ServingError, match="above the TensorRT engines' optimisation profile"):
        build_repository(export, tmp_path / "r2", flavour="gpu", max_batch=MAX_BATCH * 2)
    # an engine that differs from the manifest's sha256 is refused
    (export / "decoder.fp32.sm90.plan").write_bytes(b"tampered")
    with pytest.raises(ServingError, match="sha256 mismatch.*decoder.fp32.sm90.plan"):
        build_repository(export, tmp_path / "r3", flavour="gpu")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_engines_for_several_architectures(export_dir, tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    for graph in ENGINES:
        (engines / f"{graph}.plan").write_bytes(f"fake {graph} engine".encode())
    (engines / "saliency.fp32.sm90.plan").write_bytes(b"fake sm90")
    (engines / "saliency.sm86.plan").write_bytes(b"fake sm86")
    (engines / "decoder.sm120.plan").write_bytes(b"fake sm120")
    (engines / "encoder.fp16.sm90.plan").write_bytes(b"another precision")  # not this export's
    repo = build_repository(
        export_dir, tmp_path / "repo", flavour="gpu", engines_dir=engines, max_batch=4, gpu_instances=2
    )
    assert missing_plan_files(repo) == []
    for graph in ENGINES:
        assert (repo / graph / "1" / "model.plan").read_bytes() == f"fake {graph} engine".encode()
    sal = _config(repo / "saliency" / "config.pbtxt")
    assert dict(sal.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.6": "model.sm86.plan"}
    assert (repo / "saliency" / "1" / "model.sm90.plan").read_bytes() == b"fake sm90"
    assert dict(_config(repo / "decoder" / "config.pbtxt").cc_model_filenames) == {"12.0": "model.sm120.plan"}
    assert not _config(repo / "encoder" / "config.pbtxt").cc_model_filenames
    assert sorted(p.name for p in (repo / "encoder" / "1").iterdir()) == ["model.plan"]
    for name in ENGINES + ENSEMBLES:
        cfg = _config(repo / name / "config.pbtxt")
        assert cfg.max_batch_size == 4
        if name in ENGINES:
            assert cfg.instance_group[0].count == 2
            assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    validate_repository(repo, onnx_dir=export_dir)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (("multimix", 'model_name: "decoder"', 'model_name: "decodr"'), "no model 'decodr'"),
        (
            (
                "multimix",
                'output_map { key: "mask" value: "mask" }',
                'output_map { key: "mask_probs" value: "mask" }',
            ),
            "has no output 'mask_probs'",
        ),
        (
            (
                "multimix",
                'input_map { key: "skip3" value: "skip3" }',
                'input_map { key: "skip3" value: "skip4" }',
            ),
            "ensemble tensor 'skip4'",
        ),
        (("classifier", "dims: [ 2 ]", "dims: [ 3 ]"), "output 'probs'"),
        (("decoder", 'name: "skip3"', 'name: "skip_3"'), "skip"),
        (("saliency", "dims: [ 256, 16, 16 ]", "dims: [ 256, 8, 8 ]"), "skip5"),
    ],
)
def test_validate_repository_catches_wiring_mistakes(gpu_repo, export_dir, tmp_path, edit, problem):
    repo = tmp_path / "repo"
    shutil.copytree(gpu_repo, repo)
    model, old, new = edit
    cfg = repo / model / "config.pbtxt"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new, 1))
    with pytest.raises(ServingError, match="invalid") as info:
        validate_repository(repo, onnx_dir=export_dir)
    assert problem in str(info.value)


def test_server_refuses_a_gpu_repository_it_cannot_run(gpu_repo, export_dir, tmp_path):
    """Before starting anything: missing engines name the build command; the bundled (python
    backend only) server says to use NVIDIA's container."""
    with pytest.raises(ServingError, match="lacks TensorRT engine file.*mmtrt build-engines"):
        TritonServer(gpu_repo, log_file=tmp_path / "a.log").start()
    try:
        bundled = bundled_root_of(find_tritonserver()) is not None
    except ServingError:
        pytest.skip("no tritonserver")
    if not bundled:
        pytest.skip("a tritonserver on PATH may have the TensorRT backend")
    repo = tmp_path / "repo"
    shutil.copytree(gpu_repo, repo)
    for graph in ENGINES:
        (repo / graph / "1" / "model.plan").write_bytes(b"fake")
    with pytest.raises(ServingError, match="bundled tritonserver cannot run.*container"):
        TritonServer(repo, log_file=tmp_path / "b.log").start()
    assert not processes_mentioning(str(repo))
