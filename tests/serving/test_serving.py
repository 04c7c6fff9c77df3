"""Serving tests against the real Triton server (the binary bundled in nvidia-pytriton or one on
PATH) and mmtrt's client (tritonclient) over HTTP and gRPC, serving the real MultiMix graphs.

The export folder under test comes from :func:`real_export` (the one place to switch to
`mmtrt export` when it lands). One server serves the module's repository for most tests; the
failure tests start their own short-lived servers. The other serving test modules
(test_serving_*.py, test_infer*.py, test_reliability_*.py) share its helpers
(helpers.py) and fixtures (conftest.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import MAX_BATCH, client_for, model_statistics, needs_server, ort_session, processes_mentioning

from mmtrt.files import file_sha256
from mmtrt.serving import (
    OnnxRuntimeSettings,
    RepositorySettings,
    ServingError,
    TritonServer,
    build_repository,
    find_tritonserver,
    python_model_file,
    render_config,
    served_model,
    validate_config,
)
from mmtrt.serving.checks import BACKEND_MODULES, BACKEND_PACKAGE
from mmtrt.serving.client import TritonClient
from mmtrt.serving.errors import RequestError
from mmtrt.serving.settings import from_parameters

QUEUE_DELAY_US = 50_000  # long enough for concurrent batch-1 requests to meet in one batch


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory) -> Path:
    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        max_queue_delay_us=QUEUE_DELAY_US,
        ort_threads=1,
    )


@pytest.fixture(scope="module")
def ort_ref(export_dir):
    return {name: ort_session(export_dir / name) for name in ("multimix.onnx", "encoder.onnx")}


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 256, 256), dtype=np.float32)


def _infer(client, model, x, *, name="image", outputs=None):
    """The outputs of one request: ``x`` sent as input ``name``, in its own data type."""
    return client.infer(model, {name: x}, outputs)


def _group_processes(pgid: int) -> list[str]:
    ps = subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,pgid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in ps.splitlines() if line.split()[1] == str(pgid)]


# --------------------------------------------------------------------------- offline


def test_served_models_render_and_parse(export_dir, tmp_path):
    """Each model's config.pbtxt comes from its ServedModel: what the settings say is what the
    config says, and the parameters a python model reads give back its settings object."""
    from mmtrt.export.manifest import read_manifest
    from mmtrt.serving.repository import FLAVOUR_MODELS

    manifest = read_manifest(export_dir)
    names = sorted(FLAVOUR_MODELS["cpu"])
    assert names == ["classifier", "file_decoder", "multimix", "multimix_image"]
    settings = RepositorySettings(max_queue_delay_us=100, onnxruntime=OnnxRuntimeSettings(threads=2))
    for max_batch in (1, 3, 8, 32):
        for name in names:
            spec = FLAVOUR_MODELS["cpu"][name]
            model = served_model(name, manifest, settings, max_batch=max_batch)
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "config.pbtxt").write_text(render_config(model))
            cfg = validate_config(tmp_path / name / "config.pbtxt")
            assert cfg.max_batch_size == max_batch
            if spec.kind == "ensemble":  # its steps batch
                assert not cfg.HasField("dynamic_batching") and len(cfg.ensemble_scheduling.step) == 2
                assert not cfg.parameters
                continue
            assert list(cfg.dynamic_batching.preferred_batch_size) == [max_batch]
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
            params = {key: value.string_value for key, value in cfg.parameters.items()}
            assert from_parameters(type(model.parameters), params) == model.parameters
            if spec.kind == "onnx":
                assert cfg.parameters["ort_intra_op_threads"].string_value == "2"
                assert len(cfg.model_warmup) == 1
            else:
                assert params == {
                    "max_image_bytes": str(2**26),
                    "max_image_pixels": "36000000",
                    "gate_allow": "",  # every rule of the input gate applies
                }
                assert not cfg.model_warmup  # a file of zeros is no image


def test_a_parameter_with_quotes_renders_escaped(export_dir, tmp_path):
    from mmtrt.export.manifest import read_manifest
    from mmtrt.serving.settings import OpenVINOSettings

    odd = 'C:\\cache "blobs"\nnext'
    settings = RepositorySettings(openvino=OpenVINOSettings(cache_dir=odd))
    model = served_model("classifier", read_manifest(export_dir), settings, max_batch=2)
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "config.pbtxt").write_text(render_config(model))
    assert (
        validate_config(tmp_path / "classifier" / "config.pbtxt").parameters["ov_cache_dir"].string_value
        == odd
    )


def test_built_configs_parse(repo, export_dir):
    from mmtrt.serving.client import model_config_pb2 as mc

    expected = {
        "multimix": (
            {
                "probs": [2],
                "label": [1],
                "mask": [1, 256, 256],
                "saliency": [1, 256, 256],
                "ood_score": [1],
                "in_distribution": [1],
            },
            "multimix.onnx",
        ),
        "classifier": (
            {"probs": [2], "label": [1], "ood_score": [1], "in_distribution": [1]},
            "encoder.onnx",
        ),
    }
    # and the image-file model: the ensemble file_decoder -> multimix (tests/serving/test_serving_bytes.py)
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == sorted(
        [*expected, "file_decoder", "multimix_image"]
    )
    for name, (outputs, onnx_name) in expected.items():
        cfg = validate_config(repo / name / "config.pbtxt")
        assert cfg.name == name and cfg.backend == "python"
        assert cfg.max_batch_size == MAX_BATCH
        # multimix also takes the input gate's verdict, its reason and what names the file,
        # optional (multimix_image gives them)
        gated = (
            [
                ("accepted", mc.TYPE_BOOL, [1], True),
                ("refusal_reason", mc.TYPE_STRING, [1], True),
                ("source", mc.TYPE_STRING, [1], True),
            ]
            if name == "multimix"
            else []
        )
        assert [(i.name, i.data_type, list(i.dims), i.optional) for i in cfg.input] == [
            ("image", mc.TYPE_FP32, [1, 256, 256], False),
            *gated,
        ]
        assert {o.name: list(o.dims) for o in cfg.output} == outputs
        assert {o.name: o.data_type for o in cfg.output}["label"] == mc.TYPE_INT64
        assert cfg.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert len(cfg.model_warmup) == 1 and list(cfg.model_warmup[0].inputs) == ["image"]
        assert cfg.parameters["onnx_file"].string_value == onnx_name
        version = repo / name / "1"
        assert sorted(p.name for p in version.iterdir()) == sorted(
            ["model.py", "manifest.json", onnx_name, BACKEND_PACKAGE]
        )
        assert file_sha256(version / onnx_name) == file_sha256(export_dir / onnx_name)
        # one python-backend model file for every model: the flavour's shared one
        assert (version / "model.py").read_bytes() == python_model_file("onnx").read_bytes()
    assert not list(python_model_file("onnx").parent.glob("*/1/model.py")), "a per-model copy of model.py"
    # every python model runs the mmtrt modules it imports as copied from this mmtrt, unchanged
    root = Path(__file__).resolve().parents[2] / "mmtrt"
    for name in ("multimix", "classifier", "file_decoder"):
        package = repo / name / "1" / BACKEND_PACKAGE
        assert sorted(p.name for p in package.glob("*.py")) == sorted(
            ["__init__.py", *(Path(m).name for m in BACKEND_MODULES)]
        )
        for module in BACKEND_MODULES:
            assert (package / Path(module).name).read_bytes() == (root / module).read_bytes()


def test_the_copied_modules_import_neither_torch_nor_the_installed_mmtrt(repo):
    """What a served model imports of mmtrt is its version folder's copy alone: in a fresh Python
    with the version folder on its path (as the python-backend stub has it) the whole copy
    imports without loading torch or any module of the mmtrt package."""
    from mmtrt.serving import bundled_tritonserver_root

    triton = bundled_tritonserver_root()
    if triton is None:
        pytest.skip("no bundled python backend (triton_python_backend_utils)")
    modules = ", ".join(f"mmtrt_backend.{Path(m).stem}" for m in BACKEND_MODULES)
    code = (
        f"import sys; sys.path[:0] = [{str(repo / 'multimix' / '1')!r}, "
        f"{str(triton / 'backends' / 'python')!r}]; import {modules}; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('mmtrt', 'torch')))"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ('name: "m" backend: "python" max_batch_size: 4 input [ { name: "image" ', "invalid"),
        ('name: "m" backend: "python" bogus_field: 3', "bogus_field"),
        (
            'name: "m" backend: "python" input [{ name: "x" data_type: TYPE_FLOAT99 dims: [1] }]',
            "TYPE_FLOAT99",
        ),
        (
            'name: "other" backend: "python" max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 '
            'dims: [1] }] output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]',
            "differs from its folder",
        ),
        (
            'name: "m" backend: "python" max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 '
            'dims: [1] }] output [{ name: "y" data_type: TYPE_FP32 dims: [1] }] '
            "dynamic_batching { preferred_batch_size: [ 4 ] }",
            "preferred_batch_size",
        ),
    ],
)
def test_validate_config_rejects(tmp_path, text, problem):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(text)
    with pytest.raises(ServingError, match=problem):
        validate_config(tmp_path / "m" / "config.pbtxt")


def test_build_repository_errors(export_dir, tmp_path):
    with pytest.raises(ServingError, match="does not exist"):
        build_repository(tmp_path / "nope", tmp_path / "r1")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(export_dir / "manifest.json", partial)
    shutil.copy(export_dir / "multimix.onnx", partial)
    with pytest.raises(ServingError, match="no encoder.onnx"):
        build_repository(partial, tmp_path / "r2")
    no_manifest = tmp_path / "no_manifest"
    shutil.copytree(export_dir, no_manifest)
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(ServingError, match="manifest.json"):
        build_repository(no_manifest, tmp_path / "r3")
    with pytest.raises(ValueError, match="flavour"):
        build_repository(export_dir, tmp_path / "r4", flavour="tpu")
    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    with open(tampered / "multimix.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ServingError, match="sha256 mismatch"):
        build_repository(tampered, tmp_path / "r5")
    # a model subset, a max_batch override, and no overwrite without asking
    built = build_repository(partial, tmp_path / "r6", models=("multimix",), max_batch=3)
    assert validate_config(built / "multimix" / "config.pbtxt").max_batch_size == 3
    assert not (built / "classifier").exists()
    with pytest.raises(ServingError, match="already exists"):
        build_repository(partial, built, models=("multimix",))
    for name in ("r1", "r2", "r3", "r4", "r5"):
        assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"


def test_build_repository_is_atomic(export_dir, tmp_path, monkeypatch):
    """A failure in the middle of a build leaves neither ``out`` nor the staging folder."""
    import mmtrt.serving.repository as repository

    real_copy = shutil.copy2

    def failing_copy(src, dst, *a, **k):
        if Path(src).name == "encoder.onnx":
            raise OSError("disk full (injected)")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(repository.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="injected"):
        build_repository(export_dir, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the real server


@needs_server
def test_find_tritonserver():
    binary = find_tritonserver()
    assert binary.is_file() and binary.name == "tritonserver"


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_live_both_protocols(server, protocol):
    with client_for(protocol, server) as client:
        assert client.is_live() and client.is_ready()
        for model in ("multimix", "classifier"):
            assert client.model_ready(model)
        assert client.model("multimix").output_names == [
            "probs",
            "label",
            "mask",
            "saliency",
            "ood_score",
            "in_distribution",
        ]
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert "nv_inference_request_success" in metrics


# Served outputs against the same graphs in-process (onnxruntime, one thread like the server)
# and against PyTorch. Inputs: uniform noise, smooth images with flat black borders and saturated
# blocks (max-pool ties), synthetic X-rays. FIGURES collects the numbers for the report line.
PARITY_KINDS = ("random", "flat")  # synthetic X-rays (flat borders too): test_infer.py
FIGURES: dict[str, float] = {}


def _record(name, value, worst=max):
    FIGURES[name] = worst(FIGURES.get(name, value), value)


def _dice(a, b):
    a, b = a > 0.5, b > 0.5
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _cosines(a, b):
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _rel(a, b):
    return float(np.linalg.norm(np.float64(a) - b) / np.linalg.norm(np.float64(b)))


@pytest.fixture(scope="module")
def references(model, ort_ref):
    """kind -> (MAX_BATCH images, onnxruntime outputs, PyTorch outputs), computed once; smaller
    batches are the first images (outputs do not depend on the batch, as the concurrency tests
    check)."""
    import torch
    from helpers import IMAGE_KINDS

    cache = {}

    def get(kind):
        if kind not in cache:
            x = np.ascontiguousarray(IMAGE_KINDS[kind](MAX_BATCH, seed=10).numpy(), dtype=np.float32)
            names = ["probs", "mask", "saliency"]
            ort_out = dict(zip(names, ort_ref["multimix.onnx"].run(names, {"image": x})))
            ort_out["classifier_probs"] = ort_ref["encoder.onnx"].run(["probs"], {"image": x})[0]
            with torch.no_grad():
                out = model(torch.from_numpy(x))
            torch_out = {
                "probs": out["logits"].softmax(dim=1).numpy(),
                "mask": out["mask"].sigmoid().numpy(),
                "saliency": out["saliency"].numpy(),
            }
            cache[kind] = (x, ort_out, torch_out)
        return cache[kind]

    return get


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, MAX_BATCH])
@pytest.mark.parametrize("kind", PARITY_KINDS)
def test_multimix_parity(server, references, kind, protocol, batch):
    x, ref, torch_ref = references(kind)
    x, ref, torch_ref = (
        x[:batch],
        {k: v[:batch] for k, v in ref.items()},
        {k: v[:batch] for k, v in torch_ref.items()},
    )
    client = client_for(protocol, server)
    try:
        r = _infer(client, "multimix", x)
    finally:
        client.close()
    out = {k: r[k] for k in ("probs", "label", "mask", "saliency")}
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (batch, 2)
    assert out["label"].dtype == np.int64 and out["label"].shape == (batch, 1)
    assert out["mask"].shape == out["saliency"].shape == (batch, 1, 256, 256)
    np.testing.assert_array_equal(out["label"][:, 0], out["probs"].argmax(axis=1))
    # the same graph in onnxruntime: equal within 1e-5
    for name in ("probs", "mask", "saliency"):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
        _record(f"served-vs-ort max|diff| {name}", float(np.abs(out[name] - ref[name]).max()))
    # PyTorch: probabilities and mask within 1e-4 relative, the same lung masks, the same saliency
    # map up to the few gates a different runtime's rounding flips
    rel_probs, rel_mask = _rel(out["probs"], torch_ref["probs"]), _rel(out["mask"], torch_ref["mask"])
    dice = min(_dice(out["mask"][i], torch_ref["mask"][i]) for i in range(batch))
    cosine = float(_cosines(out["saliency"], torch_ref["saliency"]).min())
    for name, value, worst in (
        ("vs-torch rel probs", rel_probs, max),
        ("vs-torch rel mask", rel_mask, max),
        ("vs-torch mask dice", dice, min),
        ("vs-torch saliency cosine", cosine, min),
    ):
        _record(name, value, worst)
    print(
        f"\n{kind} b{batch} {protocol}: rel probs {rel_probs:.2e}, rel mask {rel_mask:.2e}, "
        f"dice {dice:.6f}, saliency cosine {cosine:.6f}"
    )
    assert rel_probs <= 1e-4
    assert rel_mask <= 1e-4
    assert dice >= 0.999
    assert cosine >= 0.999
    np.testing.assert_array_equal(out["label"][:, 0], torch_ref["probs"].argmax(axis=1))


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", PARITY_KINDS)
def test_classifier_parity(server, references, protocol, kind):
    x, ref, torch_ref = references(kind)
    client = client_for(protocol, server)
    try:
        r = _infer(client, "classifier", x)
    finally:
        client.close()
    probs = r["probs"]
    np.testing.assert_allclose(probs, ref["classifier_probs"], rtol=1e-5, atol=1e-5)
    assert _rel(probs, torch_ref["probs"]) <= 1e-4
    np.testing.assert_allclose(probs, ref["probs"], rtol=1e-4, atol=1e-5)  # = multimix's probs
    np.testing.assert_array_equal(r["label"][:, 0], probs.argmax(axis=1))
    assert "mask" not in r


def test_parity_figures():
    """Prints the worst parity figures of the tests above (run with -s to see them)."""
    if FIGURES:
        print("\nparity, worst case over kinds x batches x protocols:")
        for name, value in sorted(FIGURES.items()):
            print(f"  {name:34s} {value:.6g}")


def _run_concurrently(server, jobs):
    """Run ``jobs`` (protocol, image array) at once, one client per thread; return a list of
    (result-or-None, exception-or-None) in order."""
    results = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs), timeout=60)

    def worker(i, protocol, x):
        client = client_for(protocol, server)
        try:
            barrier.wait()
            try:
                r = _infer(client, "multimix", x)
                results[i] = ({k: r[k] for k in ("probs", "label", "mask", "saliency")}, None)
            except Exception as e:  # noqa: BLE001 - collected for the asserts
                results[i] = (None, e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i, p, x)) for i, (p, x) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in results), "a client thread did not finish"
    return results


def _assert_correct(out, ort_ref, x):
    ref = ort_ref["multimix.onnx"].run(["probs", "mask", "saliency"], {"image": x})
    for name, want in zip(("probs", "mask", "saliency"), ref):
        np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(out["label"][:, 0], out["probs"].argmax(axis=1))


@needs_server
def test_concurrent_clients_are_batched(server, ort_ref):
    before = model_statistics(server, "multimix")
    jobs = [("http" if i % 2 else "grpc", _images(1, seed=100 + i)) for i in range(8)]
    first = None
    for _round in range(2):
        results = _run_concurrently(server, jobs)
        for i, ((out, err), (_, x)) in enumerate(zip(results, jobs)):
            assert err is None, err
            if first is None:  # the same answer whatever the batch it was computed in
                _assert_correct(out, ort_ref, x)
            else:
                for k in ("probs", "mask", "saliency"):
                    np.testing.assert_allclose(out[k], first[i][0][k], rtol=1e-5, atol=1e-5)
        first = first or results
    after = model_statistics(server, "multimix", since=before)
    n = 2 * len(jobs)
    assert after["inferences"] - before["inferences"] == n
    assert after["executions"] - before["executions"] < n, (before, after)
    assert after["multi_executions"] > before["multi_executions"], (before, after)


BAD_INPUTS = {
    # case: (name, datatype, array, words the error message must contain)
    "wrong_name": ("img", "FP32", lambda: _images(1), ["img", "input"]),
    "fp64": ("image", "FP64", lambda: _images(1).astype(np.float64), ["FP64", "FP32", "image"]),
    "int32": ("image", "INT32", lambda: (_images(1) * 255).astype(np.int32), ["INT32", "image"]),
    "wrong_rank": ("image", "FP32", lambda: _images(1)[0], ["shape", "image"]),
    "wrong_size": ("image", "FP32", lambda: _images(2)[:, :, :128, :128], ["shape", "image"]),
    "nan": (
        "image",
        "FP32",
        lambda: np.where(_images(2) > 0.999, np.nan, _images(2)).astype(np.float32),
        ["image", "NaN", "finite"],
    ),
    "inf": (
        "image",
        "FP32",
        lambda: np.where(_images(1) > 0.999, -np.inf, _images(1)).astype(np.float32),
        ["image", "Inf", "finite"],
    ),
    "batch_too_big": ("image", "FP32", lambda: _images(MAX_BATCH + 1), ["batch", str(MAX_BATCH)]),
}


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_clear_error(server, protocol, case):
    name, _datatype, make, words = BAD_INPUTS[case]
    client = client_for(protocol, server)
    try:
        with pytest.raises(RequestError) as info:
            _infer(client, "multimix", np.ascontiguousarray(make()), name=name)
        message = str(info.value)
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        # the server keeps serving (NaN/Inf reach model.py; the others Triton rejects itself)
        if case in ("nan", "inf"):
            r = _infer(client, "multimix", _images(1))
            assert r["probs"].shape == (1, 2)
        assert client.model_ready("multimix")
    finally:
        client.close()


@needs_server
def test_nan_request_among_good_ones(server, ort_ref):
    """Bad requests batched with good ones fail alone; the good ones get correct answers."""
    nan = _images(1, seed=1)
    nan[0, 0, 10, 10] = np.nan
    inf = _images(2, seed=2)
    inf[1, 0, 5, 5] = np.inf
    # 8 images in all (= max_batch), so that all of them can meet in one execution
    jobs = [("grpc" if i % 2 else "http", _images(1 + (i == 3), seed=200 + i)) for i in range(6)]
    jobs[2] = ("http", nan)
    jobs[5] = ("grpc", inf)
    before = model_statistics(server, "multimix")
    results = _run_concurrently(server, jobs)
    after = model_statistics(server, "multimix", since=before)
    for i, ((out, err), (_, x)) in enumerate(zip(results, jobs)):
        if i in (2, 5):
            assert out is None and isinstance(err, RequestError)
            assert "non-finite" in str(err) and "image" in str(err)
            assert ("1 NaN" if i == 2 else "1 Inf") in str(err)
        else:
            assert err is None, err
            _assert_correct(out, ort_ref, x)
    # the requests met in shared executions (normally all 8 images in one)
    assert after["executions"] - before["executions"] < len(jobs), (before, after)
    assert after["multi_executions"] > before["multi_executions"], (before, after)
    client = client_for("http", server)
    try:
        x = _images(4, seed=3)
        r = _infer(client, "multimix", x)
        _assert_correct({k: r[k] for k in ("probs", "label", "mask", "saliency")}, ort_ref, x)
    finally:
        client.close()
    assert server.is_running()


# --------------------------------------------------------------------------- start / stop


@needs_server
def test_tampered_onnx_refuses_to_load(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("multimix",))
    onnx = repo / "multimix" / "1" / "multimix.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    srv = TritonServer(repo, log_file=tmp_path / "triton.log")
    with pytest.raises(ServingError) as info:
        srv.start(timeout=120)
    message = str(info.value)
    assert "sha256 mismatch" in message and "tampered" in message
    assert "multimix.onnx" in message
    assert "tail of the Triton log" in message
    assert not srv.is_running()
    assert not processes_mentioning(str(repo))


@needs_server
def test_config_output_missing_from_onnx_refuses_to_load(export_dir, tmp_path):
    """The shared model.py checks its config against the ONNX graph it is given at load time."""
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    cfg = repo / "classifier" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "label"', 'name: "mask"'))  # encoder: no mask
    srv = TritonServer(repo, log_file=tmp_path / "triton.log")
    with pytest.raises(ServingError) as info:
        srv.start(timeout=120)
    message = str(info.value)
    assert "encoder.onnx does not fit config.pbtxt" in message and "no output 'mask'" in message
    assert not processes_mentioning(str(repo))


@needs_server
def test_broken_config_fails_start(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    cfg = repo / "classifier" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size:", "max_batch_sise:"))
    srv = TritonServer(repo, log_file=tmp_path / "triton.log")
    with pytest.raises(ServingError) as info:
        srv.start(timeout=120)
    message = str(info.value)
    assert "exited" in message and "config.pbtxt" in message
    assert "max_batch_sise" in message  # from the offline check of the failed repository
    assert (tmp_path / "triton.log").read_text().strip(), "the log must be kept"
    assert not processes_mentioning(str(repo))


@needs_server
def test_stop_leaves_no_process(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    with TritonServer(repo, log_file=tmp_path / "triton.log") as srv:
        pgid = srv.pid
        running = _group_processes(pgid)
        assert any("tritonserver" in p for p in running), running
        assert any("triton_python_backend_stub" in p for p in running), running
        pids = [int(p.split()[0]) for p in running]
        assert srv.http_url.startswith("127.0.0.1:") and srv.grpc_url.startswith("127.0.0.1:")
    assert srv.pid is None
    assert _group_processes(pgid) == []
    ps = subprocess.run(["ps", "-ww", "-e", "-o", "pid="], capture_output=True, text=True).stdout.split()
    assert not set(pids) & {int(p) for p in ps}
    assert not processes_mentioning(str(repo))
    assert "Non-graceful" not in (tmp_path / "triton.log").read_text()


@needs_server
def test_taken_port_is_repicked(export_dir, tmp_path, monkeypatch):
    """A port picked free but taken before tritonserver binds it: start() picks again."""
    import socket

    import mmtrt.serving.server as server_module

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = server_module._free_port
    calls = []

    def free_port(host):
        calls.append(host)
        return taken if len(calls) == 1 else real_free_port(host)

    monkeypatch.setattr(server_module, "_free_port", free_port)
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    try:
        with TritonServer(repo, log_file=tmp_path / "triton.log") as srv:
            assert srv.ports["http"] != taken
            with TritonClient(srv.http_url) as client:
                assert client.model_ready("classifier")
    finally:
        squatter.close()
    assert "already in use" in (tmp_path / "triton.log").read_text()
    assert not processes_mentioning(str(repo))


def test_perf_analyzer_measures_each_requested_concurrency(server, tmp_path):
    """`mmtrt bench` reads Triton's own perf_analyzer (the tritonclient binary) when it runs here:
    one measurement per requested concurrency, in the order asked, with the server's queue and
    compute times."""
    from mmtrt.bench import load
    from mmtrt.bench.runner import xray_pool

    if load.perf_analyzer_command() is None:
        pytest.skip("perf_analyzer cannot run here (not installed, or its shared libraries are missing)")
    rows = load.run_perf_analyzer(server.grpc_url, "multimix", xray_pool(2), 1, [1, 3], 1.5, tmp_path)
    assert [r.extra["concurrency"] for r in rows] == [1, 3]
    for r in rows:
        assert r.images_per_s > 0 and r.latency_ms["p50"] <= r.latency_ms["p99"]
        assert r.extra["server_compute_infer_ms"] > 0
