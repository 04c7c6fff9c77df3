"""`mmtrt export` and `mmtrt build-engines` through the real CLI.

One export per module (a random-initialised checkpoint of the real architecture, `mmtrt init`),
then checks on its files; bad inputs fail before any export work. TensorRT cannot be installed on
the machines this runs on: its logic is tested against `FakeTensorRT`, a stand-in that records
what the code asks of it, and the real build is a `gpu` test that skips with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fake_tensorrt import NO_TENSORRT, use_fake_tensorrt
from helpers import tiny_saliency_graph
from onnx import TensorProto, helper, numpy_helper

from mmtrt.checkpoint import FORMAT, FORMAT_VERSION, file_sha256, read_checkpoint
from mmtrt.cli import main
from mmtrt.export import tensorrt as trt_code
from mmtrt.export.onnx_graphs import FORBIDDEN_OPS
from mmtrt.export.precision import mixed_precision, reduced_convolutions
from mmtrt.export.validate import TOLERANCES, validate_against
from mmtrt.files import FOLDER_MARK
from mmtrt.graphs import GRAPHS
from mmtrt.ood import read_stats
from mmtrt.parity import KINDS
from mmtrt.runtimes import ort

MAX_BATCH = 8
GRAPH_FILES = {f"{name}.onnx" for name in GRAPHS}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "multimix.pt"
    result = invoke("init", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def ood_data(tmp_path_factory) -> Path:
    """In-distribution images for the image gate: a small synthetic Kermany tree."""
    from mmtrt.data import write_synthetic_datasets

    root = tmp_path_factory.mktemp("ood-data")
    write_synthetic_datasets(root, n_cls={"train": 16, "val": 12, "test": 0}, n_seg=0, seed=5)
    return root / "cls"


@pytest.fixture(scope="module")
def export(checkpoint, ood_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "multimix-fp32"
    result = invoke("export", checkpoint, "--out", out, "--max-batch", MAX_BATCH, "--ood-data", ood_data)
    assert result.exit_code == 0, result.output
    return types.SimpleNamespace(
        out=out, output=result.output, manifest=json.loads((out / "manifest.json").read_text())
    )


# --------------------------------------------------------------------------- the export


def test_export_writes_the_documented_files_and_nothing_else(export):
    assert {p.name for p in export.out.iterdir()} == GRAPH_FILES | {
        "manifest.json",
        "parity.json",
        "ood.npz",
        FOLDER_MARK,
    }
    assert [p.name for p in export.out.parent.iterdir()] == [export.out.name]  # no staging left over
    assert "exporting the saliency graph" in export.output and "parity: all" in export.output


def test_graphs_pass_the_full_checker_with_names_and_a_dynamic_batch(export):
    for name, spec in GRAPHS.items():
        proto = onnx.load(str(export.out / f"{name}.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        ops = {node.op_type for node in proto.graph.node}
        assert not ops & FORBIDDEN_OPS, name
        assert not any(n.op_type == "MaxPool" and len(n.output) > 1 for n in proto.graph.node), name
        assert [i.name for i in proto.graph.input] == list(spec.inputs)
        assert [o.name for o in proto.graph.output] == list(spec.outputs)
        for value in [*proto.graph.input, *proto.graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param, f"{name}.{value.name} has a fixed batch"
        # instance-norm means are taken row by row (mmtrt.model.spatial_mean): only the 8x8
        # global average pool of the class head reduces a whole plane at once
        planes = [n for n in proto.graph.node if _axes(proto, n) == [2, 3]]
        assert len(planes) == (name != "decoder"), name


def _axes(proto, node):
    if node.op_type != "ReduceMean":
        return None
    inits = {i.name: i for i in proto.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]]).tolist() if node.input[1] in inits else None


def test_graphs_run_at_batch_1_5_and_8_and_samples_do_not_leak(export):
    rng = np.random.default_rng(0)
    images = rng.random((MAX_BATCH, 1, 256, 256), dtype=np.float32)
    encoder = ort.session(export.out / "saliency.onnx")
    features = dict(zip(GRAPHS["saliency"].outputs, encoder.run(None, {"image": images})))
    for name, spec in GRAPHS.items():
        session = ort.session(export.out / f"{name}.onnx")
        source = {"image": images, **features}
        first = None
        for batch in (1, 5, 8):
            outputs = session.run(None, {n: source[n][:batch] for n in spec.inputs})
            assert all(o.shape[0] == batch for o in outputs), (name, batch)
            if first is None:
                first = outputs
            else:  # sample 0 does not depend on what else is in the batch
                for a, b in zip(outputs, first):
                    np.testing.assert_allclose(a[:1], b, rtol=1e-4, atol=1e-5)


def test_manifest_describes_every_file_and_how_it_was_made(export, checkpoint):
    m = export.manifest
    on_disk = {p.name for p in export.out.iterdir()} - {"manifest.json", FOLDER_MARK}  # (mmtrt's mark)
    assert set(m["files"]) == on_disk
    for name, entry in m["files"].items():
        assert entry["sha256"] == file_sha256(export.out / name), name
    assert m["max_batch"] == MAX_BATCH and m["opset"] == 18 and m["precision"] == "fp32"
    assert m["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "tensorrt"}
    assert m["graphs"]["decoder"]["inputs"]["skip5"]["shape"] == ["batch", 256, 16, 16]
    assert m["graphs"]["multimix"]["outputs"]["mask"]["shape"] == ["batch", 1, 256, 256]
    assert m["precision_policy"]["precision"] == "fp32"
    assert m["parity"]["passed"] and m["parity"]["rows"]
    gate = m["ood"]
    assert gate["sha256"] == m["files"]["ood.npz"]["sha256"] == file_sha256(export.out / "ood.npz")
    assert gate["fit"]["images"] == 16 and gate["held_out"]["images"] == 12  # train / val
    assert gate["quantile"] == 0.99 and 0.0 <= gate["held_out"]["false_reject_rate"] <= 0.01
    assert "Lee et al." in gate["method"]
    stored = read_stats(export.out / "ood.npz")
    assert float(stored["threshold"]) == pytest.approx(gate["threshold"])
    assert m["graphs"]["multimix"]["outputs"]["in_distribution"] == {"shape": ["batch", 1], "dtype": "bool"}


def test_export_needs_in_distribution_images_for_its_gate(tmp_path, checkpoint):
    """A checkpoint that does not name its training data (this one: `mmtrt init`) is exported
    only with --ood-data; the error says so before anything is written."""
    result = invoke("export", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code != 0 and "--ood-data" in result.output and "train/" in result.output
    assert not (tmp_path / "out").exists()
    result = invoke("export", checkpoint, "--out", tmp_path / "out", "--ood-data", tmp_path / "none")
    assert result.exit_code != 0 and "none" in result.output
    assert not (tmp_path / "out").exists()


def test_parity_json_meets_every_tolerance_on_every_kind_and_batch(export):
    parity = json.loads((export.out / "parity.json").read_text())
    assert parity["passed"] and not parity["failures"]
    assert parity["batch_sizes"] == [1, 3, MAX_BATCH]
    assert all(row["ok"] for row in parity["rows"])
    assert sum(b["batch"] for b in parity["inputs"]) >= 30
    seen = {(r["graph"], r["output"], r["kind"]) for r in parity["rows"]}
    for name, spec in GRAPHS.items():
        for output in spec.outputs:
            for kind in KINDS:
                assert (name, output, kind) in seen
    fp32 = TOLERANCES["fp32"]
    for row in parity["rows"]:
        if row["output"] in ("logits", "probs") or row["output"].startswith("skip"):
            assert row["rel"] <= 1e-4
        if row["output"] == "saliency":
            assert row["cosine"] >= fp32.saliency_cosine
            if row["kind"] == "all":
                assert row["ratio"] <= fp32.saliency_ratio
        if row["output"] == "mask":
            assert row["max_abs"] <= 1e-3 and row["dice"] >= 0.999


def test_the_same_checkpoint_gives_byte_identical_onnx(export, checkpoint, tmp_path):
    """Every graph goes through the same export_onnx; re-exporting one in a fresh process is
    enough to show the bytes do not depend on the run."""
    code = (
        "import sys; from pathlib import Path; from mmtrt.checkpoint import load_checkpoint; "
        "from mmtrt.export.onnx_graphs import export_onnx; from mmtrt.graphs import GRAPHS; "
        "from mmtrt.ood import read_stats; "
        "model, _ = load_checkpoint(sys.argv[1]); model.ood.load(read_stats(Path(sys.argv[3]))); "
        f"export_onnx(GRAPHS['encoder'], model, Path(sys.argv[2]), opset=18, max_batch={MAX_BATCH})"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(checkpoint),
            str(tmp_path / "encoder.onnx"),
            str(export.out / "ood.npz"),
        ],
        check=True,
    )
    assert (tmp_path / "encoder.onnx").read_bytes() == (export.out / "encoder.onnx").read_bytes()


# --------------------------------------------------------------------------- engines without TensorRT


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are present here")
def test_export_says_which_engines_were_not_built_and_how_to_build_them(export):
    assert "TensorRT engines NOT built (encoder, saliency, decoder, multimix)" in export.output
    assert f"mmtrt build-engines {export.out.resolve()}" in export.output
    engines = export.manifest["engines"]
    assert (
        engines["state"] == "not built"
        and engines["command"] == f"mmtrt build-engines {export.out.resolve()}"
    )
    assert "tensorrt" in engines["reason"]


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT and a GPU are present here")
def test_build_engines_without_tensorrt_fails_clearly(export):
    before = (export.out / "manifest.json").read_bytes()
    result = invoke("build-engines", export.out)
    assert result.exit_code != 0
    assert "cannot build TensorRT engines here" in result.output and "tensorrt" in result.output
    assert (export.out / "manifest.json").read_bytes() == before


def test_the_engine_check_compares_with_onnxruntime_on_the_exports_inputs(export):
    """Engines are checked by `validate_against`; onnxruntime sessions stand in for engines here
    (the first 6 validation images keep it quick)."""
    parity = json.loads((export.out / "parity.json").read_text())
    parity["inputs"] = parity["inputs"][:4]
    ref = {g: ort.runner(export.out / f"{g}.onnx") for g in ("saliency", "decoder")}
    same = validate_against(
        {
            ("saliency.plan", "saliency", "fp32"): ref["saliency"],
            ("decoder.plan", "decoder", "fp32"): ref["decoder"],
        },
        ref,
        parity,
    )
    assert same["passed"], same["failures"]
    assert {(r["graph"], r["output"]) for r in same["rows"]} >= {
        ("saliency.plan", "saliency"),
        ("decoder.plan", "mask"),
    }
    off = lambda inputs: {k: v * (1 + 1e-3) for k, v in ref["decoder"](inputs).items()}
    wrong = validate_against({("decoder.plan", "decoder", "fp32"): off}, ref, parity)
    assert not wrong["passed"] and any(
        f.startswith("decoder.plan [fp32] mask_logits") for f in wrong["failures"]
    )


def test_build_engines_refuses_a_folder_that_is_not_a_complete_untouched_export(export, tmp_path):
    import shutil

    result = invoke("build-engines", tmp_path)
    assert result.exit_code != 0 and "has no manifest.json" in result.output
    folder = tmp_path / "tampered"
    shutil.copytree(export.out, folder)
    with open(folder / "encoder.onnx", "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    result = invoke("build-engines", folder)
    assert (
        result.exit_code != 0 and "encoder.onnx differs from the file the manifest describes" in result.output
    )


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT and a CUDA GPU: {NO_TENSORRT}")
def test_build_engines_on_a_tensorrt_host(export, tmp_path):  # pragma: no cover - no TensorRT here
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(export.out, folder)
    result = invoke("build-engines", folder)
    assert result.exit_code == 0, result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["engines"]["state"] == "built"
    for plan in manifest["engines"]["plans"].values():
        assert manifest["files"][plan["file"]]["sha256"] == file_sha256(folder / plan["file"])


# --------------------------------------------------------------------------- bad input


def _foreign_checkpoint(tmp_path, good):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def _text_checkpoint(tmp_path, good):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    return path


def _truncated_checkpoint(tmp_path, good):
    path = tmp_path / "truncated.pt"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _wrong_architecture(tmp_path, good):
    state = read_checkpoint(good)
    del state["model"]["decoder.stages.3.conv2.weight"]  # a layer removed
    path = tmp_path / "wrong.pt"
    torch.save({**state, "format": FORMAT, "format_version": FORMAT_VERSION}, path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, good: tmp / "missing.pt", "no such checkpoint file"),
        (_truncated_checkpoint, "not a readable checkpoint"),
        (_foreign_checkpoint, "not an mmtrt MultiMix checkpoint"),
        (_text_checkpoint, "not a readable checkpoint"),
        (_wrong_architecture, "weights do not fit the MultiMix architecture"),
    ],
    ids=["missing", "truncated", "foreign-dict", "text-file", "wrong-architecture"],
)
def test_a_bad_checkpoint_fails_clearly_and_writes_nothing(tmp_path, checkpoint, make, message):
    bad = make(tmp_path, checkpoint)
    out = tmp_path / "out" / "export"
    result = invoke("export", bad, "--out", out)
    assert result.exit_code != 0
    assert message in result.output and bad.name in result.output
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_unknown_precision_fails_before_anything_is_written(tmp_path, checkpoint):
    result = invoke("export", checkpoint, "--out", tmp_path / "out", "--precision", "fp8")
    assert result.exit_code != 0 and "fp8" in result.output and "fp16" in result.output
    assert not (tmp_path / "out").exists()


def test_bf16_needs_opset_22(tmp_path, checkpoint):
    result = invoke("export", checkpoint, "--out", tmp_path / "out", "--precision", "bf16", "--opset", "18")
    assert result.exit_code != 0 and "opset 22" in result.output
    assert not (tmp_path / "out").exists()


def test_unwritable_out_fails_clearly(tmp_path, checkpoint, ood_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("export", checkpoint, "--out", blocker / "export", "--ood-data", ood_data)
    assert result.exit_code != 0 and "cannot write the export folder" in result.output
    assert blocker.is_file()


def test_an_existing_export_is_not_overwritten_by_accident(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("export", checkpoint, "--out", out)
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_parity_check_leaves_no_complete_looking_folder(tmp_path, checkpoint, ood_data, monkeypatch):
    """The export step is replaced by a tiny graph writer and the validation by a failing report,
    to run the failure path in a second."""
    import mmtrt.export.onnx_graphs as onnx_graphs
    import mmtrt.export.validate as validate

    def tiny_export(spec, model, path, **kwargs):
        nodes = [helper.make_node("Identity", [spec.inputs[0]], [o]) for o in spec.outputs]
        proto = helper.make_model(
            helper.make_graph(
                nodes,
                spec.name,
                [helper.make_tensor_value_info(i, TensorProto.FLOAT, ["batch", 1]) for i in spec.inputs],
                [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", 1]) for o in spec.outputs],
            ),
            opset_imports=[helper.make_opsetid("", 18)],
        )
        onnx.save(proto, str(path))
        return proto

    failing = {
        "passed": False,
        "failures": ["saliency [fp32] saliency on all images: made to fail"],
        "rows": [],
        "inputs": [],
        "batch_sizes": [1],
        "tolerances": {},
    }
    monkeypatch.setattr(onnx_graphs, "export_onnx", tiny_export)
    monkeypatch.setattr(validate, "validate", lambda *a, **k: dict(failing))
    out = tmp_path / "export"
    result = invoke("export", checkpoint, "--out", out, "--ood-data", ood_data)
    assert (
        result.exit_code != 0 and "parity check failed" in result.output and "made to fail" in result.output
    )
    assert not out.exists()
    failed = tmp_path / "export.failed"
    assert (failed / "parity.json").is_file() and not (failed / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.failed"]


# --------------------------------------------------------------------------- reduced precision


def _run(proto, image):
    names = [o.name for o in proto.graph.output]
    return dict(zip(names, ort.session(proto.SerializeToString()).run(names, {"image": image})))


def test_reduced_precision_keeps_the_forward_pass_of_a_saliency_graph_in_float32():
    proto = tiny_saliency_graph()
    assert reduced_convolutions(proto) == ["conv_g", "conv_b"]  # not conv_f: the class output's
    assert reduced_convolutions(tiny_saliency_graph(saliency=False)) == ["conv_f", "conv_g", "conv_b"]
    image = np.random.default_rng(2).random((3, 1, 64, 64), dtype=np.float32) - 0.5
    reference = _run(proto, image)
    for precision, opset, emulate in (("fp16", 18, False), ("bf16", 22, True)):
        mixed = mixed_precision(tiny_saliency_graph(opset), precision, emulate=emulate)
        onnx.checker.check_model(mixed, full_check=True)
        convs = {n.name: n for n in mixed.graph.node if n.op_type == "Conv"}
        assert convs["conv_f"].input[:] == ["image", "wf"]  # untouched: the forward pass
        assert convs["conv_g"].input[0] != "gated" and convs["conv_b"].input[0] != "image"
        out = _run(mixed, image)
        np.testing.assert_array_equal(out["probs"], reference["probs"])
        # the backward half's error is smooth: rounding-sized, with the same gates
        rel = np.linalg.norm(out["saliency"] - reference["saliency"]) / np.linalg.norm(reference["saliency"])
        assert 0 < rel < {"fp16": 2e-3, "bf16": 1e-2}[precision], rel
        np.testing.assert_allclose(out["mask"], reference["mask"], atol=2e-2)
    real_bf16 = mixed_precision(tiny_saliency_graph(22), "bf16")
    onnx.checker.check_model(real_bf16, full_check=True)
    weights = {i.name: i.data_type for i in real_bf16.graph.initializer}
    assert weights["wb__bf16"] == TensorProto.BFLOAT16 and weights["wg__bf16"] == TensorProto.BFLOAT16
    assert weights["wf"] == TensorProto.FLOAT


# --------------------------------------------------------------------------- TensorRT logic


MANIFEST = {
    "precision": "fp16",
    "graphs": {
        "encoder": {"file": "encoder.onnx", "reduced_precision_file": "encoder.fp16.onnx"},
        "saliency": {"file": "saliency.onnx"},
    },
}


def test_engine_specs_use_builder_flags_on_tensorrt_10_and_typed_graphs_on_11():
    v10 = {s.graph: s for s in trt_code.engine_specs(MANIFEST, 10, (8, 9))}
    v11 = {s.graph: s for s in trt_code.engine_specs(MANIFEST, 11, (9, 0))}
    assert (v10["encoder"].onnx, v10["encoder"].builder_flag, v10["encoder"].strongly_typed) == (
        "encoder.onnx",
        "FP16",
        False,
    )
    assert (v11["encoder"].onnx, v11["encoder"].builder_flag, v11["encoder"].strongly_typed) == (
        "encoder.fp16.onnx",
        None,
        True,
    )
    assert (v10["saliency"].onnx, v10["saliency"].builder_flag) == ("saliency.onnx", None)  # kept float32
    assert (
        v10["encoder"].plan == "encoder.fp16.sm89.plan" and v11["saliency"].plan == "saliency.fp16.sm90.plan"
    )
    fp32 = trt_code.engine_specs({**MANIFEST, "precision": "fp32"}, 10, (8, 0))
    assert all(s.builder_flag is None and s.onnx == f"{s.graph}.onnx" for s in fp32)


@pytest.mark.parametrize("major", [10, 11])
def test_build_engine_profile_flags_constraints_and_timing_cache(tmp_path, monkeypatch, major):
    trt = use_fake_tensorrt(monkeypatch, major)
    onnx.save(tiny_saliency_graph(), str(tmp_path / "tiny.onnx"))
    manifest = {
        "precision": "fp16",
        "graphs": {"tiny": {"file": "tiny.onnx", "reduced_precision_file": "tiny.onnx"}},
    }
    (spec,) = trt_code.engine_specs(manifest, trt_code.major_version(trt), (9, 0))
    cache = tmp_path / "timing.cache"
    for _build in range(2):
        plan = trt_code.build_engine(
            spec,
            tmp_path / "tiny.onnx",
            max_batch=8,
            timing_cache=cache,
            reduced_layers=frozenset({"conv_g", "conv_b"}) if spec.builder_flag else frozenset(),
        )
        assert plan == b"engine"
    r = trt.record
    assert r["profiles"][-1] == {"image": ((1, 1, 64, 64), (8, 1, 64, 64), (8, 1, 64, 64))}
    assert trt.BuilderFlag.TF32 in r["cleared"]
    assert cache.read_bytes().startswith(b"timings:") and r["cache_in"] == b"timings:"  # reused
    # no network creation flags: TensorRT 10's networks are weakly typed (as its precision flags
    # need), TensorRT 11's strongly typed whatever the flags (its STRONGLY_TYPED is deprecated)
    assert r["network_flags"] == 0
    if major == 10:
        assert r["flags"] == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
        assert r["constrained"]["conv_f"] == trt.float32  # the forward pass
        every_node = {n.name for n in tiny_saliency_graph().graph.node}
        assert set(r["constrained"]) == every_node - {"conv_g", "conv_b"}
    else:
        assert not r["flags"] and not r["constrained"]


def test_precision_constraints_refuse_to_build_when_no_layer_name_matches(tmp_path, monkeypatch):
    use_fake_tensorrt(monkeypatch, 10)
    onnx.save(tiny_saliency_graph(), str(tmp_path / "tiny.onnx"))
    spec = trt_code.EngineSpec("tiny", "tiny.onnx", "fp16", False, "FP16", "tiny.plan")
    with pytest.raises(trt_code.EngineBuildError, match="matched a TensorRT layer name"):
        trt_code.build_engine(
            spec,
            tmp_path / "tiny.onnx",
            max_batch=4,
            timing_cache=tmp_path / "c",
            reduced_layers=frozenset({"renamed_by_the_parser"}),
        )


def test_tensorrt_10_reduced_precision_with_no_convolution_let_go_pins_every_layer(tmp_path, monkeypatch):
    trt = use_fake_tensorrt(monkeypatch, 10)
    onnx.save(tiny_saliency_graph(), str(tmp_path / "tiny.onnx"))
    spec = trt_code.EngineSpec("tiny", "tiny.onnx", "fp16", False, "FP16", "tiny.plan")
    trt_code.build_engine(spec, tmp_path / "tiny.onnx", max_batch=4, timing_cache=tmp_path / "c")
    assert trt.record["flags"] == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    assert set(trt.record["constrained"]) == {n.name for n in tiny_saliency_graph().graph.node}


def test_tensorrt_unavailable_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(trt_code.TensorRTUnavailable, match="tensorrt Python module is not installed"):
        trt_code.require_tensorrt()
    use_fake_tensorrt(monkeypatch, 10)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(trt_code.TensorRTUnavailable, match="no CUDA GPU"):
        trt_code.require_tensorrt()
