"""The shipped nginx guard (deploy/nginx/mmtrt-triton.conf + triton_guard.js, njs) in front of
a real Triton server on loopback, with a real nginx (mmtrt.serving.guard): the requests that
abort Triton 2.51's HTTP front end (mmtrt.bench.http_abort.CRASHERS), an oversize body and a
compressed body are refused by the proxy (400 / 413 / 415); valid binary and JSON requests pass
and get the same answer as directly; the file model takes files far above the image models'
limit; the server is never restarted (same pid throughout). A body of 6 MB sent in 1-byte chunks
(``Transfer-Encoding: chunked``), which aborts Triton 2.51 (SIGSEGV) on any endpoint that parses
it, is received whole by nginx and never reaches Triton as chunks; sent directly to an admin API
restricted as `mmtrt serve` restricts them, it is refused before it is parsed. Over gRPC: only
the inference RPCs pass, and a message above the limit is refused before Triton receives it."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import socket
import time

import numpy as np
import pytest
from helpers import make_pki, needs_server

from mmtrt.bench.http_abort import CRASHERS
from mmtrt.serving.errors import RequestError
from mmtrt.serving.guard import GuardUnavailable, NginxGuard, find_nginx

try:
    find_nginx()
    _NO_GUARD = None
except GuardUnavailable as _e:
    _NO_GUARD = str(_e)

pytestmark = [needs_server, pytest.mark.skipif(_NO_GUARD is not None, reason=f"no nginx guard: {_NO_GUARD}")]


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    from mmtrt.serving import build_repository

    repo = build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        ort_threads=1,
        models=("classifier", "file_decoder"),
    )
    from mmtrt.serving import TritonServer
    from mmtrt.serving.admin import AdminKey

    key = AdminKey.create()  # the admin APIs restricted as `mmtrt serve` does
    srv = TritonServer(
        repo, log_file=tmp_path_factory.mktemp("log") / "triton.log", extra_args=key.tritonserver_args()
    )
    srv.start(timeout=180)
    yield srv
    srv.stop()
    key.remove()


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """nginx running the shipped server blocks, pointed at the test server, on free ports."""
    with NginxGuard(server.http_url, server.grpc_url, tmp_path_factory.mktemp("nginx")) as guard:
        yield guard


def _post(address: str, body: bytes, headers: dict | None = None, path: str = "/v2/models/classifier/infer"):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _infer(address: str, x: np.ndarray, binary: bool) -> np.ndarray:
    """The classifier's probs for ``x`` through ``address``: mmtrt's client (Triton's binary
    tensor extension), or, ``binary`` False, a plain JSON request made with the standard library
    (what no mmtrt client sends, but any HTTP client may)."""
    if binary:
        from mmtrt.serving.client import TritonClient, image_inputs

        with TritonClient(address) as client:
            return client.infer("classifier", image_inputs(x), ("probs",))["probs"]
    body = {
        "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": False}}],
    }
    status, answer = _post(address, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert status == 200, answer[:300]
    (probs,) = json.loads(answer)["outputs"]
    return np.asarray(probs["data"], dtype=np.float32).reshape(probs["shape"])


def test_proxy_refuses_what_aborts_triton_and_passes_valid_requests(server, proxy):
    pid = server.pid
    x = np.random.default_rng(1).random((2, 1, 256, 256)).astype(np.float32)
    direct = _infer(server.http_url, x, binary=True)
    for binary in (True, False):  # the binary tensor protocol and plain JSON
        assert np.array_equal(_infer(proxy.http, x, binary=binary), direct), binary

    outcomes = {}
    for what, body in CRASHERS.items():
        status, data = _post(proxy.http, body, {"Content-Type": "application/json"})
        outcomes[what] = (status, data[:160])
        assert status == 400, (what, status, data[:300])
        assert b"refused by the proxy" in data
    # the 2^56 shape in the JSON header of a binary request is caught too
    header = b'{"inputs":[{"name":"image","shape":[1099511627776,1,256,256],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
    status, data = _post(
        proxy.http, header + b"\0\0\0\0", {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and b"claims" in data, (status, data)
    # the guard scans a whole JSON body: 8 images as JSON floats (~7 MB) with the nesting at the end
    floats = ",".join(["0.123456"] * (8 * 256 * 256))
    body = (
        '{"inputs":[{"name":"image","shape":[8,1,256,256],"datatype":"FP32","data":[' + floats + "]}],"
        '"parameters":{"x":' + "[" * 40 + "]" * 40 + "}}"
    ).encode()
    assert len(body) < 8 << 20
    t0 = time.monotonic()
    status, data = _post(proxy.http, body, {"Content-Type": "application/json"})
    outcomes["7 MB JSON, deep at the end"] = f"{status} in {time.monotonic() - t0:.2f} s"
    assert status == 400 and b"deeper than 16" in data, (status, data[:200])
    # an escape sequence must not hide the nesting after it ("\u0022" is a quote inside the string)
    sneaky = (
        b'{"inputs":[{"name":"im\\u0022age","shape":[1],"datatype":"FP32","data":'
        + b"[" * 40
        + b"]" * 40
        + b"}]}"
    )
    status, data = _post(proxy.http, sneaky, {"Content-Type": "application/json"})
    assert status == 400 and b"deeper than 16" in data, (status, data[:200])
    # brackets inside strings are not structure: passed on, and Triton answers for itself
    bracket_name = (
        b'{"inputs":[{"name":"' + b"[" * 40 + b'","shape":[1,1,256,256],"datatype":"FP32","data":[0]}]}'
    )
    status, data = _post(proxy.http, bracket_name, {"Content-Type": "application/json"})
    assert status in (400, 500) and b"refused by the proxy" not in data, (status, data[:200])
    # data as nested arrays (row-major), a batch of 2: 7 levels, passed and answered correctly
    nested = json.dumps(
        {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    ).encode()
    status, data = _post(proxy.http, nested, {"Content-Type": "application/json"})
    assert status == 200, (status, data[:300])
    probs = np.asarray(next(o for o in json.loads(data)["outputs"] if o["name"] == "probs")["data"])
    assert np.allclose(probs.reshape(direct.shape), direct, atol=1e-6)
    # oversize body: nginx's own limit
    status, _ = _post(proxy.http, b"0" * (9 << 20), {"Content-Type": "application/json"})
    outcomes["9 MB body"] = status
    assert status == 413
    # compressed bodies: Triton would inflate them in memory before any check
    status, _ = _post(proxy.http, gzip.compress(b"{}"), {"Content-Encoding": "gzip"})
    outcomes["gzip body"] = status
    assert status == 415
    # only health and the two models' inference are forwarded
    status, _ = _post(proxy.http, b"", path="/v2/repository/index")
    assert status == 404
    print("\n" + json.dumps({k: str(v) for k, v in outcomes.items()}, indent=1))

    assert server.is_running() and server.pid == pid, "the server was aborted behind the proxy"
    assert np.array_equal(_infer(proxy.http, x, binary=True), direct)


def _post_chunked(address: str, path: str, body: bytes, chunk: int = 1) -> bytes:
    """POST ``body`` with ``Transfer-Encoding: chunked`` in chunks of ``chunk`` bytes; the start of
    the answer (b"" if the connection died)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=120) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        framed = bytearray()
        for i in range(0, len(body), chunk):
            framed += b"%x\r\n%b\r\n" % (len(body[i : i + chunk]), body[i : i + chunk])
            if len(framed) >= 1 << 20:
                s.sendall(framed)
                framed.clear()
        s.sendall(bytes(framed) + b"0\r\n\r\n")
        try:
            return s.recv(200)
        except OSError:
            return b""


def test_a_chunked_body_does_not_abort_the_server(server, proxy):
    pid = server.pid
    body = b"A" * (6 << 20)
    t0 = time.monotonic()
    through_proxy = _post_chunked(proxy.http, "/v2/models/classifier/infer", body)
    print(f"\n6 MB in 1-byte chunks through the proxy: {through_proxy[:40]} in {time.monotonic() - t0:.1f} s")
    # one body with a Content-Length: Triton answers for itself that it is no JSON
    assert through_proxy.startswith((b"HTTP/1.1 400", b"HTTP/1.1 500")), through_proxy
    to_admin_api = _post_chunked(server.http_url, "/v2/logging", body)
    assert to_admin_api.startswith(b"HTTP/1.1 403"), to_admin_api
    time.sleep(0.5)
    assert server.is_running() and server.pid == pid, "the server was aborted"


def test_file_model_through_the_proxy(server, proxy):
    """The file model's endpoint takes a file far above the image models' 8 MB (up to the
    repository's 64 MiB image limit), answered as directly; above 65 MB it is refused by nginx
    (413); the JSON that aborts Triton is refused here too; a JSON body above 8 MB is refused
    with the advice to send it binary."""
    from PIL import Image

    from mmtrt.serving.client import TritonClient, file_inputs

    pid = server.pid
    noise = np.random.default_rng(5).integers(0, 256, (3200, 3200), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    big = buffer.getvalue()
    assert len(big) > 9 << 20  # above the image models' limit
    answers = []
    for address in (server.http_url, proxy.http):
        with TritonClient(address) as client:
            answers.append(client.infer("file_decoder", file_inputs([big]), ("image",))["image"])
    assert np.array_equal(answers[0], answers[1])
    status, data = _post(proxy.http, b"\0" * (66 << 20), path="/v2/models/file_decoder/infer")
    assert status == 413, (status, data[:200])
    status, data = _post(
        proxy.http,
        CRASHERS["JSON data nested 100000 levels deep"],
        {"Content-Type": "application/json"},
        path="/v2/models/file_decoder/infer",
    )
    assert status == 400 and b"refused by the proxy" in data, (status, data[:200])
    status, data = _post(proxy.http, b"[" + b"0," * (5 << 20) + b"0]", path="/v2/models/multimix_image/infer")
    assert status == 413 and b"send large files with the binary tensor extension" in data, (
        status,
        data[:300],
    )
    assert server.is_running() and server.pid == pid


def _tritonserver_rss(server) -> int:
    from mmtrt.bench.soak import server_rss  # tritonserver and its stubs

    return server_rss(server.pid)[0]


def test_grpc_through_the_proxy(server, proxy):
    """gRPC through the guard: inference answered as directly; an admin RPC refused by the proxy
    (PERMISSION_DENIED) before Triton's own key check; a message above 65 MB refused with
    RESOURCE_EXHAUSTED before Triton receives any of it (its memory does not move)."""
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from mmtrt.serving.client import TritonClient, image_inputs

    x = np.random.default_rng(2).random((3, 1, 256, 256)).astype(np.float32)
    answers = []
    for address in (server.grpc_url, proxy.grpc):
        with TritonClient(address, "grpc") as client:
            assert client.model_ready("classifier")
            answers.append(client.infer("classifier", image_inputs(x), ("probs",))["probs"])
    assert np.array_equal(answers[0], answers[1])

    raw = grpcclient.InferenceServerClient(proxy.grpc)
    for call in (raw.get_log_settings, raw.get_system_shared_memory_status, raw.get_model_repository_index):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == str(grpc.StatusCode.PERMISSION_DENIED), info.value
        assert "not served through the proxy" in info.value.message()

    before = _tritonserver_rss(server)
    huge = np.zeros((280, 1, 256, 256), np.float32)  # 73 MB
    inputs = [grpcclient.InferInput("image", list(huge.shape), "FP32")]
    inputs[0].set_data_from_numpy(huge)
    statuses = []
    for _ in range(4):
        with pytest.raises(InferenceServerException) as info:
            raw.infer("classifier", inputs)
        statuses.append(info.value.status())
        assert "65 MB limit" in info.value.message(), info.value
    raw.close()
    after = _tritonserver_rss(server)
    print(
        f"\n4 x 73 MB over gRPC through the proxy: {set(statuses)}; tritonserver RSS {before >> 20} -> {after >> 20} MiB"
    )
    assert set(statuses) == {str(grpc.StatusCode.RESOURCE_EXHAUSTED)}
    assert after < 1.10 * before


def test_triton_not_reachable_is_a_transient_error_with_a_clear_message(tmp_path):
    """Triton down behind the guard (starting, or restarting after a crash): HTTP 503 with a JSON
    error and gRPC UNAVAILABLE, both of which mmtrt's clients send again (not nginx's HTML 502,
    which Triton's HTTP client cannot read)."""
    from mmtrt.serving.client import TritonClient, image_inputs
    from mmtrt.serving.faults import is_transient
    from mmtrt.serving.server import _free_port

    dead = f"127.0.0.1:{_free_port('127.0.0.1')}"  # nothing listens there
    x = np.zeros((1, 1, 256, 256), np.float32)
    with NginxGuard(dead, dead, tmp_path / "nginx") as guard:
        status, body = _post(guard.http, b"{}", {"Content-Type": "application/json"})
        assert status == 503, body
        assert "not reachable behind the proxy" in json.loads(body)["error"]
        for address, protocol in ((guard.http, "http"), (guard.grpc, "grpc")):
            with TritonClient(address, protocol) as client, pytest.raises(RequestError) as info:
                client.infer("classifier", image_inputs(x), ("probs",))
            assert "not reachable behind the proxy" in str(info.value), (protocol, info.value)
            assert is_transient(info.value), (protocol, info.value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_proxy(server, pki, tmp_path_factory):
    """The guard with TLS on both protocols, asking for client certificates of the CA."""
    from mmtrt.serving.tls import ServerTls

    (cert, key), (ca, _) = pki["server"], pki["ca"]
    tls = ServerTls(cert, key, ca)
    with NginxGuard(server.http_url, server.grpc_url, tmp_path_factory.mktemp("nginx-tls"), tls=tls) as guard:
        yield guard


def test_tls_through_the_proxy(server, tls_proxy, pki):
    """HTTPS and gRPC with TLS through the guard, a client certificate of the hospital's CA:
    answered as directly over plaintext; plaintext, a client without a certificate or with one of
    another CA, and a client that trusts another CA are refused."""
    from mmtrt.serving.client import Tls, TritonClient, image_inputs

    (ca, _), (cert, key), (other_ca, other_key) = pki["ca"], pki["client"], pki["other_ca"]
    good = Tls(str(ca), str(cert), str(key))
    x = np.random.default_rng(4).random((2, 1, 256, 256)).astype(np.float32)
    with TritonClient(server.http_url) as client:
        direct = client.infer("classifier", image_inputs(x), ("probs",))["probs"]
    for address, protocol in ((f"https://{tls_proxy.http}", "http"), (f"grpcs://{tls_proxy.grpc}", "grpc")):
        with TritonClient(address, protocol, tls=good) as client:
            assert np.array_equal(client.infer("classifier", image_inputs(x), ("probs",))["probs"], direct), (
                protocol
            )
    # plaintext to the TLS port: nginx answers 400 itself
    status, data = _post(tls_proxy.http, b"{}")
    assert status == 400 and b"plain HTTP request was sent to HTTPS port" in data, (status, data[:200])
    for who, tls in {
        "no client certificate": Tls(str(ca)),
        "a certificate of another CA": Tls(str(ca), str(other_ca), str(other_key)),
        "trusts another CA": Tls(str(other_ca), str(cert), str(key)),
    }.items():
        for address, protocol in (
            (f"https://{tls_proxy.http}", "http"),
            (f"grpcs://{tls_proxy.grpc}", "grpc"),
        ):
            with pytest.raises((RequestError, OSError)):
                with TritonClient(
                    address, protocol, tls=tls, connect_timeout_s=10.0, timeout_s=10.0
                ) as client:
                    client.infer("classifier", image_inputs(x), ("probs",))
                pytest.fail(f"{who} over {protocol} was answered")
