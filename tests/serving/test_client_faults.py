"""A fault of the request itself is a client error: the real server answers HTTP 400 / gRPC
INVALID_ARGUMENT (model.py's checks use ``pb_utils.TritonError(msg, TritonError.INVALID_ARG)``,
Triton's own checks use the same code), and none of this project's clients (`mmtrt infer`, the
load generator of `mmtrt bench`, the soak of mmtrt.bench.soak: all of them mmtrt.serving.client)
sends such a request again, while they do resend what failed transiently. Real Triton server,
mmtrt's client (tritonclient) over HTTP and gRPC.

The module's server has one deliberately mismatched model, ``classifier`` with a config input of
[1, 128, 128]: Triton itself refuses the 256 x 256 images `mmtrt infer` sends as invalid input,
which is how a client's whole run of invalid requests is made here without a mock.
"""

from __future__ import annotations

import json
import re
import socket
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import MAX_BATCH, client_for, needs_server, post_infer, start_server
from PIL import Image

from mmtrt.bench import soak
from mmtrt.serving import build_repository
from mmtrt.serving.client import TritonClient
from mmtrt.serving.errors import RequestError
from mmtrt.serving.faults import INVALID, TRANSIENT, classify

pytestmark = needs_server


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    built = build_repository(export_dir, tmp_path_factory.mktemp("built") / "repo", ort_threads=1)
    config = built / "classifier" / "config.pbtxt"
    text = config.read_text()
    text = text[: text.index("model_warmup")]  # its warm-up would send 256 x 256 zeros
    config.write_text(text.replace("dims: [ 1, 256, 256 ]", "dims: [ 1, 128, 128 ]"))
    return built


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = start_server(repo, tmp_path_factory.mktemp("log") / "triton.log")
    yield srv
    srv.stop()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 256, 256)).astype(np.float32)


def _with(x: np.ndarray, value: float, count: int = 3) -> np.ndarray:
    x = x.copy()
    x.reshape(-1)[:count] = value
    return x


# (what, array, declared datatype or None, words the message must contain)
FAULTS = [
    ("NaN", _with(_images(2), np.nan), None, "non-finite"),
    ("+Inf", _with(_images(1), np.inf), None, "non-finite"),
    ("-Inf", _with(_images(1), -np.inf), None, "non-finite"),
    ("outputs overflow (3.4e38)", np.full((1, 1, 256, 256), 3.4e38, np.float32), None, "not finite"),
    ("dtype float64", _images(1).astype(np.float64), None, "data-type"),
    ("dtype int32", (_images(1) * 255).astype(np.int32), None, "data-type"),
    ("shape 1x1x255x256", _images(1)[:, :, :255], None, "shape"),
    ("shape 1x3x256x256", np.repeat(_images(1), 3, axis=1), None, "shape"),
    (f"batch {MAX_BATCH + 1}", _images(MAX_BATCH + 1), None, "batch"),
    ("payload 16 MB (1x1x2048x2048)", np.zeros((1, 1, 2048, 2048), np.float32), None, "shape"),
]


def _send(protocol: str, server, x: np.ndarray, model: str = "multimix"):
    """One request, ``x`` in its own data type: the outputs, or the error it got."""
    with client_for(protocol, server) as client:
        return client.infer(model, {"image": x})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_faults_are_invalid_input(server, protocol):
    """Every fault of the request gets HTTP 400 / gRPC INVALID_ARGUMENT (never 500 / INTERNAL),
    with a message saying what is wrong; a valid request in between is answered."""
    want = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    seen = []
    for what, x, _dt, words in FAULTS:
        with pytest.raises(RequestError) as info:
            _send(protocol, server, x)
        e = info.value
        seen.append(f"{what}: {e.status} {str(e)[:120]}")
        assert e.status == want, f"{what}: status {e.status}, want {want}: {e}"
        assert words in str(e).lower(), f"{what}: {e}"
        assert classify(e) == INVALID, what
    print("\n" + "\n".join(seen))
    assert _send(protocol, server, _images(1))["probs"].shape == (1, 2)
    assert server.is_running() and server.dead_stubs() == []


def test_raw_http_nan_is_400(server):
    """The raw protocol on purpose, below any client library: the binary tensor format with NaN in
    the data: 400 and an error body."""
    x = _with(_images(1), np.nan).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1, 256, 256],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(x)},
                }
            ]
        }
    ).encode()
    status, answer = post_infer(
        server, "multimix", header + x, {"Inference-Header-Content-Length": str(len(header))}
    )
    error = answer["error"]
    assert status == 400, (status, error)
    assert "non-finite" in error


@pytest.mark.xfail(
    strict=True,
    reason="Triton 2.51's HTTP front end answers a JSON tensor whose 'data' does not match its "
    "'shape' with HTTP 500 ('Unable to parse 'data': Shape does not match true shape'), before "
    "any model code: a client fault reported as a server error (upstream; mmtrt's clients never "
    "send such JSON). XPASS means a fixed Triton: drop this mark.",
)
def test_raw_http_json_data_shape_mismatch_is_400(server):
    body = b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":[0.5,0.5]}]}'
    status, answer = post_infer(server, "multimix", body, {"Content-Type": "application/json"})
    error = answer.get("error")
    assert status == 400, (status, error)


def test_transient_failures_are_classified_transient(server):
    """What the clients do resend: a refused connection (HTTP and gRPC) is transient."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
        errors = []
        for protocol in ("http", "grpc"):
            with TritonClient(dead, protocol, timeout_s=10.0) as client:
                try:
                    client.infer("multimix", {"image": _images(1)})
                except Exception as e:  # noqa: BLE001 - what the clients see
                    errors.append(e)
    assert len(errors) == 2
    assert [classify(e) for e in errors] == [TRANSIENT, TRANSIENT], [repr(e) for e in errors]


def _executed(server, model: str) -> int:
    """Requests ``model`` has executed so far, from the server's statistics. Triton counts every
    request that reached the model as a success, those model.py answered with an error (NaN)
    included; requests Triton refused itself (a wrong shape) are not counted at all."""

    def count() -> int:
        s = client.statistics(model)["inference_stats"]
        return int(s["success"]["count"]) + int(s["fail"]["count"])

    # The statistics are updated after the response is sent: read until they stop changing.
    client = TritonClient(server.http_url)
    try:
        last, now = -1, count()
        for _ in range(20):
            if now == last:
                break
            time.sleep(0.25)
            last, now = now, count()
        return now
    finally:
        client.close()


def test_infer_never_resends_an_invalid_batch(server, tmp_path):
    """`mmtrt infer` against a model that refuses its images (input dims 128): each batch fails
    once with the server's 400 / INVALID_ARGUMENT message, no retry happens (none announced, and
    none waited for), exit status 1. (Triton keeps no count of requests it refuses itself, so the
    sends are counted by the client's messages here; the two tests below count them on the
    server.)"""
    from mmtrt.cli import main

    images = tmp_path / "xrays"
    images.mkdir()
    for i in range(3):
        Image.fromarray((_images(1, seed=i)[0, 0] * 255).astype(np.uint8)).save(images / f"x{i}.png")
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        t0 = time.monotonic()
        result = CliRunner().invoke(
            main,
            [
                "infer",
                str(images),
                "--url",
                url,
                "--protocol",
                protocol,
                "--model",
                "classifier",
                "--batch-size",
                "1",
                "--retries",
                "3",
                "--retry-delay",
                "0.1",
                "--out",
                str(tmp_path / f"out-{protocol}"),
            ],
        )
        elapsed = time.monotonic() - t0
        assert result.exit_code == 1, result.output
        assert "retrying" not in result.output, result.output
        # 3 retries of 0.1, 0.2, 0.4 s for each of 3 batches would take >= 2.1 s
        assert elapsed < 2.0, f"{elapsed:.1f} s: waited as if retrying"
        assert result.output.count("a batch of 1 image(s) failed") == 3, result.output
        assert re.search(r"\[(400|StatusCode.INVALID_ARGUMENT)\].*unexpected shape", result.output), (
            result.output
        )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_generator_counts_invalid_requests_and_never_resends_them(server, protocol):
    """`mmtrt bench`'s load generator on a pool alternating a good image and a NaN image, batch 1:
    the NaN requests are counted as invalid and not resent (the server's failed-request count
    grows by exactly that number), the good ones are answered."""
    from mmtrt.bench.load import run_load

    pool = np.concatenate([_images(1, seed=5), _with(_images(1, seed=6), np.nan)])
    url = server.http_url if protocol == "http" else server.grpc_url
    before = _executed(server, "multimix")
    m = run_load(protocol, url, "multimix", pool, batch=1, concurrency=1, seconds=2.0, outputs=("probs",))
    executed = _executed(server, "multimix") - before
    print(f"\n{protocol}: {m.calls} answered, extra {m.extra}; the server executed {executed}")
    assert m.extra["invalid"] >= 1 and m.extra["retries"] == 0
    assert m.extra["failures"] == m.extra["invalid"]
    # + the 2 warm-up requests; a resent invalid request would make it more
    assert executed == m.calls + m.extra["invalid"] + 2, "an invalid request was sent more than once"
    assert abs(m.calls - m.extra["invalid"]) <= 1  # they alternate
    assert m.extra["answered_versions"] == {"1": m.calls}  # each answer names its version


def test_soak_resends_transient_failures_but_not_invalid_input(server, export_dir):
    """The soak's clients: against the server, a NaN image of the pool is answered `invalid`
    once per visit (never sent again); against an address where nothing listens, the same image
    is sent again and again (transient)."""
    good = _images(1, seed=7)
    pool = np.concatenate([good, _with(good, np.nan)])
    refs = soak.reference_outputs(export_dir / "multimix.onnx", pool[:1]) * 2
    before = _executed(server, "multimix")
    figures = soak.soak(
        server.http_url,
        server.grpc_url,
        pool=pool,
        references=refs,
        seconds=2.0,
        concurrency=2,
        window_s=1.0,
        warmup_s=0.0,
    )
    executed = _executed(server, "multimix") - before
    print(f"\nsoak: {figures['ok']} ok, {figures['invalid']} invalid, {figures['failed']} failed")
    assert figures["wrong"] == 0 and figures["failed"] == 0
    assert figures["invalid"] >= 1 and figures["ok"] >= 1
    assert executed == figures["ok"] + figures["invalid"], "an invalid request was sent more than once"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        figures = soak.soak(
            dead, dead, pool=pool, references=refs, seconds=1.0, concurrency=2, window_s=1.0, warmup_s=0.0
        )
    assert figures["ok"] == 0 and figures["invalid"] == 0 and figures["failed"] >= 4
