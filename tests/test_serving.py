"""Serving tests against the real Triton server (the binary bundled in nvidia-pytriton or one on
PATH) and the real tritonclient over HTTP and gRPC.

The export folder is a stand-in built here: tiny torch modules with exactly the input/output
names and shapes of MultiMix's fused graph (multimix.onnx) and encoder graph (encoder.onnx),
exported to real ONNX files, plus a manifest.json with their real sha256. One server serves the
module's repository for most tests; the failure tests start their own short-lived servers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mmtrt.serving import (ServingError, TritonServer, build_repository, find_tritonserver,
                           render_config, template_dir, validate_config)

MAX_BATCH = 8
QUEUE_DELAY_US = 50_000  # long enough for concurrent batch-1 requests to meet in one batch

try:
    find_tritonserver()
    _NO_SERVER = None
except ServingError as _e:  # pragma: no cover - depends on the machine
    _NO_SERVER = str(_e)
needs_server = pytest.mark.skipif(_NO_SERVER is not None, reason=f"no tritonserver: {_NO_SERVER}")


# --------------------------------------------------------------------------- stand-in export

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_export(out: Path) -> Path:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.fc = nn.Linear(4, 2)
            with torch.no_grad():
                self.fc.weight.copy_(torch.randn(2, 4, generator=g) * 3)
                self.fc.bias.copy_(torch.randn(2, generator=g))

        def logits(self, image):
            return self.fc((F.adaptive_avg_pool2d(image, 2).flatten(1) - 0.5) * 8)

        def forward(self, image):
            return (torch.softmax(self.logits(image), dim=1), torch.sigmoid(image * 3 - 1),
                    torch.abs(image - 0.5))

    class Encoder(nn.Module):
        def __init__(self, fused):
            super().__init__()
            self.fused = fused

        def forward(self, image):
            skips = tuple(F.avg_pool2d(image, 2 ** k) for k in range(1, 6))
            return (self.fused.logits(image),) + skips

    out.mkdir(parents=True, exist_ok=True)
    fused = Fused().eval()
    x = torch.rand(2, 1, 256, 256)
    fused_names = ["image", "probs", "mask", "saliency"]
    enc_names = ["image", "logits"] + [f"skip{k}" for k in range(1, 6)]
    with torch.no_grad():
        torch.onnx.export(fused, (x,), str(out / "multimix.onnx"), dynamo=False,
                          input_names=fused_names[:1], output_names=fused_names[1:],
                          dynamic_axes={n: {0: "batch"} for n in fused_names}, opset_version=17)
        torch.onnx.export(Encoder(fused).eval(), (x,), str(out / "encoder.onnx"), dynamo=False,
                          input_names=enc_names[:1], output_names=enc_names[1:],
                          dynamic_axes={n: {0: "batch"} for n in enc_names}, opset_version=17)
    manifest = {"files": {n: {"sha256": _sha256(out / n)} for n in ("multimix.onnx", "encoder.onnx")},
                "max_batch": MAX_BATCH, "image_size": 256, "note": "stand-in, not MultiMix"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter, on purpose
        return _make_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory) -> Path:
    return build_repository(export_dir, tmp_path_factory.mktemp("built") / "repo",
                            max_queue_delay_us=QUEUE_DELAY_US, ort_threads=1)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "triton.log"
    srv = TritonServer(repo, log_file=log)
    t0 = time.monotonic()
    srv.start(timeout=120)
    print(f"\ntritonserver ready in {time.monotonic() - t0:.2f} s: {' '.join(srv.command)}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ort_ref(export_dir):
    import onnxruntime as ort
    sessions = {name: ort.InferenceSession(str(export_dir / name),
                                           providers=["CPUExecutionProvider"])
                for name in ("multimix.onnx", "encoder.onnx")}
    return sessions


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 256, 256), dtype=np.float32)


def _client(protocol, srv):
    if protocol == "http":
        import tritonclient.http as m
        return m, m.InferenceServerClient(srv.http_url, network_timeout=60.0)
    import tritonclient.grpc as m
    return m, m.InferenceServerClient(srv.grpc_url)


def _infer(module, client, model, x, *, name="image", datatype="FP32", outputs=None):
    inp = module.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    outs = None
    if outputs:
        outs = [module.InferRequestedOutput(o) for o in outputs]
    result = client.infer(model, [inp], outputs=outs)
    return result


def _group_processes(pgid: int) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-e", "-o", "pid=,pgid=,args="], capture_output=True, text=True,
                        check=True).stdout
    return [line for line in ps.splitlines() if line.split()[1] == str(pgid)]


def _processes_mentioning(text: str) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-e", "-o", "pid=,args="], capture_output=True, text=True,
                        check=True).stdout
    return [line for line in ps.splitlines()
            if text in line and ("tritonserver" in line or "triton_python_backend_stub" in line)]


def _stats(srv, model):
    import tritonclient.http as httpclient
    c = httpclient.InferenceServerClient(srv.http_url)
    try:
        s = c.get_inference_statistics(model_name=model)["model_stats"][0]
    finally:
        c.close()
    multi = sum(b["compute_infer"]["count"] for b in s["batch_stats"] if b["batch_size"] > 1)
    return {"inferences": s["inference_count"], "executions": s["execution_count"],
            "multi_executions": multi, "batch_sizes": sorted(b["batch_size"] for b in s["batch_stats"])}


# --------------------------------------------------------------------------- offline

def test_templates_render_and_parse(tmp_path):
    names = sorted(p.name for p in template_dir("cpu").iterdir() if p.is_dir())
    assert names == ["classifier", "multimix"]
    for max_batch in (1, 3, 8, 32):
        for name in names:
            text = render_config((template_dir("cpu") / name / "config.pbtxt").read_text(),
                                 max_batch=max_batch, max_queue_delay_us=100, ort_threads=2)
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "config.pbtxt").write_text(text)
            cfg = validate_config(tmp_path / name / "config.pbtxt")
            assert cfg.max_batch_size == max_batch
            assert list(cfg.dynamic_batching.preferred_batch_size) == [max_batch]
            assert cfg.parameters["ort_intra_op_threads"].string_value == "2"


def test_built_configs_parse(repo, export_dir):
    from tritonclient.grpc import model_config_pb2 as mc

    expected = {"multimix": ({"probs": [2], "label": [1], "mask": [1, 256, 256],
                              "saliency": [1, 256, 256]}, "multimix.onnx"),
                "classifier": ({"probs": [2], "label": [1]}, "encoder.onnx")}
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == sorted(expected)
    for name, (outputs, onnx_name) in expected.items():
        cfg = validate_config(repo / name / "config.pbtxt")
        assert cfg.name == name and cfg.backend == "python"
        assert cfg.max_batch_size == MAX_BATCH
        assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == \
            [("image", mc.TYPE_FP32, [1, 256, 256])]
        assert {o.name: list(o.dims) for o in cfg.output} == outputs
        assert {o.name: o.data_type for o in cfg.output}["label"] == mc.TYPE_INT64
        assert cfg.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert len(cfg.model_warmup) == 1
        version = repo / name / "1"
        assert sorted(p.name for p in version.iterdir()) == \
            sorted(["model.py", "manifest.json", onnx_name])
        assert _sha256(version / onnx_name) == _sha256(export_dir / onnx_name)


@pytest.mark.parametrize("text, problem", [
    ('name: "m" backend: "python" max_batch_size: 4 input [ { name: "image" ', "invalid"),
    ('name: "m" backend: "python" bogus_field: 3', "bogus_field"),
    ('name: "m" backend: "python" input [{ name: "x" data_type: TYPE_FLOAT99 dims: [1] }]',
     "TYPE_FLOAT99"),
    ('name: "other" backend: "python" max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 '
     'dims: [1] }] output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]', "differs from its folder"),
    ('name: "m" backend: "python" max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 '
     'dims: [1] }] output [{ name: "y" data_type: TYPE_FP32 dims: [1] }] '
     'dynamic_batching { preferred_batch_size: [ 4 ] }', "preferred_batch_size"),
])
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
        build_repository(export_dir, tmp_path / "r4", flavour="gpu")
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
    module, client = _client(protocol, server)
    try:
        assert client.is_server_live() and client.is_server_ready()
        for model in ("multimix", "classifier"):
            assert client.is_model_ready(model)
        meta = client.get_model_metadata("multimix")
        if protocol == "http":
            assert [o["name"] for o in meta["outputs"]] == ["probs", "label", "mask", "saliency"]
        else:
            assert [o.name for o in meta.outputs] == ["probs", "label", "mask", "saliency"]
    finally:
        client.close()
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert "nv_inference_request_success" in metrics


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, MAX_BATCH])
def test_multimix_matches_onnxruntime(server, ort_ref, protocol, batch):
    x = _images(batch, seed=batch)
    x[0, 0, :40] = 0.0  # a flat black border, as in real X-rays
    ref_probs, ref_mask, ref_sal = ort_ref["multimix.onnx"].run(["probs", "mask", "saliency"],
                                                                {"image": x})
    module, client = _client(protocol, server)
    try:
        r = _infer(module, client, "multimix", x)
    finally:
        client.close()
    probs, label = r.as_numpy("probs"), r.as_numpy("label")
    assert probs.dtype == np.float32 and probs.shape == (batch, 2)
    assert label.dtype == np.int64 and label.shape == (batch, 1)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("mask"), ref_mask, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("saliency"), ref_sal, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(label[:, 0], probs.argmax(axis=1))


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classifier_matches_onnxruntime(server, ort_ref, protocol):
    x = _images(3, seed=7)
    (logits,) = ort_ref["encoder.onnx"].run(["logits"], {"image": x})
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    fused_probs = ort_ref["multimix.onnx"].run(["probs"], {"image": x})[0]
    module, client = _client(protocol, server)
    try:
        r = _infer(module, client, "classifier", x)
    finally:
        client.close()
    np.testing.assert_allclose(r.as_numpy("probs"), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("probs"), fused_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.as_numpy("label")[:, 0], ref.argmax(axis=1))
    assert r.as_numpy("mask") is None


def _run_concurrently(server, jobs):
    """Run ``jobs`` (protocol, image array) at once, one client per thread; return a list of
    (result-or-None, exception-or-None) in order."""
    results = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs), timeout=60)

    def worker(i, protocol, x):
        module, client = _client(protocol, server)
        try:
            barrier.wait()
            try:
                r = _infer(module, client, "multimix", x)
                results[i] = ({k: r.as_numpy(k) for k in ("probs", "label", "mask", "saliency")},
                              None)
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
        np.testing.assert_allclose(out[name], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["label"][:, 0], out["probs"].argmax(axis=1))


@needs_server
def test_concurrent_clients_are_batched(server, ort_ref):
    before = _stats(server, "multimix")
    jobs = [("http" if i % 2 else "grpc", _images(1, seed=100 + i)) for i in range(8)]
    for _round in range(2):
        results = _run_concurrently(server, jobs)
        for (out, err), (_, x) in zip(results, jobs):
            assert err is None, err
            _assert_correct(out, ort_ref, x)
    after = _stats(server, "multimix")
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
    "nan": ("image", "FP32", lambda: np.where(_images(2) > 0.999, np.nan, _images(2)).astype(np.float32),
            ["image", "NaN", "finite"]),
    "inf": ("image", "FP32", lambda: np.where(_images(1) > 0.999, -np.inf, _images(1)).astype(np.float32),
            ["image", "Inf", "finite"]),
    "batch_too_big": ("image", "FP32", lambda: _images(MAX_BATCH + 1), ["batch", str(MAX_BATCH)]),
}


@needs_server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_clear_error(server, protocol, case):
    from tritonclient.utils import InferenceServerException

    name, datatype, make, words = BAD_INPUTS[case]
    module, client = _client(protocol, server)
    try:
        with pytest.raises(InferenceServerException) as info:
            _infer(module, client, "multimix", np.ascontiguousarray(make()), name=name,
                   datatype=datatype)
        message = str(info.value)
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        # the server keeps serving
        r = _infer(module, client, "multimix", _images(1))
        assert r.as_numpy("probs").shape == (1, 2)
    finally:
        client.close()


@needs_server
def test_nan_request_among_good_ones(server, ort_ref):
    """Bad requests batched with good ones fail alone; the good ones get correct answers."""
    from tritonclient.utils import InferenceServerException

    nan = _images(1, seed=1)
    nan[0, 0, 10, 10] = np.nan
    inf = _images(2, seed=2)
    inf[1, 0, 5, 5] = np.inf
    # 8 images in all (= max_batch), so that all of them can meet in one execution
    jobs = [("grpc" if i % 2 else "http", _images(1 + (i == 3), seed=200 + i)) for i in range(6)]
    jobs[2] = ("http", nan)
    jobs[5] = ("grpc", inf)
    before = _stats(server, "multimix")
    results = _run_concurrently(server, jobs)
    after = _stats(server, "multimix")
    for i, ((out, err), (_, x)) in enumerate(zip(results, jobs)):
        if i in (2, 5):
            assert out is None and isinstance(err, InferenceServerException)
            assert "non-finite" in str(err) and "image" in str(err)
            assert ("1 NaN" if i == 2 else "1 Inf") in str(err)
        else:
            assert err is None, err
            _assert_correct(out, ort_ref, x)
    # the requests met in shared executions (normally all 8 images in one)
    assert after["executions"] - before["executions"] < len(jobs), (before, after)
    assert after["multi_executions"] > before["multi_executions"], (before, after)
    module, client = _client("http", server)
    try:
        x = _images(4, seed=3)
        r = _infer(module, client, "multimix", x)
        _assert_correct({k: r.as_numpy(k) for k in ("probs", "label", "mask", "saliency")},
                        ort_ref, x)
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
    assert not _processes_mentioning(str(repo))


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
    assert not _processes_mentioning(str(repo))


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
    assert not _processes_mentioning(str(repo))
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
            import tritonclient.http as httpclient
            client = httpclient.InferenceServerClient(srv.http_url)
            try:
                assert client.is_model_ready("classifier")
            finally:
                client.close()
    finally:
        squatter.close()
    assert "already in use" in (tmp_path / "triton.log").read_text()
    assert not _processes_mentioning(str(repo))
