"""The shipped nginx front (deploy/nginx/mmtrt-triton.conf + triton_guard.js, njs) in front of
a real Triton server on loopback, with a real nginx: the requests that abort Triton 2.51's HTTP
front end (mmtrt.bench.http_abort.CRASHERS), an oversize body and a compressed body are
refused by the proxy (400 / 413 / 415); valid binary and JSON requests pass and get the same
answer as directly; the server is never restarted (same pid throughout). A body of 6 MB sent in
1-byte chunks (``Transfer-Encoding: chunked``), which aborts Triton 2.51 (SIGSEGV) on any endpoint
that parses it, reaches Triton through the proxy as one body with a Content-Length; sent directly
to an admin API restricted as `mmtrt serve` restricts them, it is refused before it is parsed."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_server

from mmtrt.bench.http_abort import CRASHERS

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "deploy" / "nginx"
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)

pytestmark = [
    needs_server,
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (apt-get install nginx; scripts/setup.sh does it)"
    ),
    pytest.mark.skipif(
        not NJS_MODULE.exists(),
        reason=f"the njs module {NJS_MODULE} is missing (apt-get install libnginx-mod-http-js)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(export_dir, tmp_path_factory):
    from mmtrt.serving import build_repository

    repo = build_repository(
        export_dir, tmp_path_factory.mktemp("built") / "repo", ort_threads=1, models=("classifier",)
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
    """nginx running the shipped server block, pointed at the test server, on a free port."""
    work = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    site = (GUARD / "mmtrt-triton.conf").read_text()
    for old, new in (
        ("js_path /etc/nginx/njs/;", f"js_path {GUARD}/;"),
        ("server 127.0.0.1:8000;", f"server {server.http_url};"),
        ("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};"),
    ):
        assert site.count(old) == 1, old
        site = site.replace(old, new)
    (work / "site.conf").write_text(site)
    temps = "\n".join(
        f"    {name}_temp_path {work / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"""load_module {NJS_MODULE};
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log {work / "error.log"} info;
events {{ worker_connections 64; }}
http {{
    access_log {work / "access.log"};
{temps}
    include {work / "site.conf"};
}}
"""
    )
    check = subprocess.run(
        [NGINX, "-t", "-c", str(work / "nginx.conf"), "-p", str(work)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)], stderr=subprocess.PIPE, text=True
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    yield address
    proc.terminate()
    proc.wait(20)


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
        assert np.array_equal(_infer(proxy, x, binary=binary), direct), binary

    outcomes = {}
    for what, body in CRASHERS.items():
        status, data = _post(proxy, body, {"Content-Type": "application/json"})
        outcomes[what] = (status, data[:160])
        assert status == 400, (what, status, data[:300])
        assert b"refused by the proxy" in data
    # the 2^56 shape in the JSON header of a binary request is caught too
    header = b'{"inputs":[{"name":"image","shape":[1099511627776,1,256,256],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
    status, data = _post(proxy, header + b"\0\0\0\0", {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and b"claims" in data, (status, data)
    # the guard scans a whole JSON body: 8 images as JSON floats (~7 MB) with the nesting at the end
    floats = ",".join(["0.123456"] * (8 * 256 * 256))
    body = (
        '{"inputs":[{"name":"image","shape":[8,1,256,256],"datatype":"FP32","data":[' + floats + "]}],"
        '"parameters":{"x":' + "[" * 40 + "]" * 40 + "}}"
    ).encode()
    assert len(body) < 8 << 20
    t0 = time.monotonic()
    status, data = _post(proxy, body, {"Content-Type": "application/json"})
    outcomes["7 MB JSON, deep at the end"] = f"{status} in {time.monotonic() - t0:.2f} s"
    assert status == 400 and b"deeper than 16" in data, (status, data[:200])
    # an escape sequence must not hide the nesting after it ("\u0022" is a quote inside the string)
    sneaky = (
        b'{"inputs":[{"name":"im\\u0022age","shape":[1],"datatype":"FP32","data":'
        + b"[" * 40
        + b"]" * 40
        + b"}]}"
    )
    status, data = _post(proxy, sneaky, {"Content-Type": "application/json"})
    assert status == 400 and b"deeper than 16" in data, (status, data[:200])
    # brackets inside strings are not structure: passed on, and Triton answers for itself
    bracket_name = (
        b'{"inputs":[{"name":"' + b"[" * 40 + b'","shape":[1,1,256,256],"datatype":"FP32","data":[0]}]}'
    )
    status, data = _post(proxy, bracket_name, {"Content-Type": "application/json"})
    assert status in (400, 500) and b"refused by the proxy" not in data, (status, data[:200])
    # data as nested arrays (row-major), a batch of 2: 7 levels, passed and answered correctly
    nested = json.dumps(
        {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    ).encode()
    status, data = _post(proxy, nested, {"Content-Type": "application/json"})
    assert status == 200, (status, data[:300])
    probs = np.asarray(next(o for o in json.loads(data)["outputs"] if o["name"] == "probs")["data"])
    assert np.allclose(probs.reshape(direct.shape), direct, atol=1e-6)
    # oversize body: nginx's own limit
    status, _ = _post(proxy, b"0" * (9 << 20), {"Content-Type": "application/json"})
    outcomes["9 MB body"] = status
    assert status == 413
    # compressed bodies: Triton would inflate them in memory before any check
    status, _ = _post(proxy, gzip.compress(b"{}"), {"Content-Encoding": "gzip"})
    outcomes["gzip body"] = status
    assert status == 415
    # only health and the two models' inference are forwarded
    status, _ = _post(proxy, b"", path="/v2/repository/index")
    assert status == 404
    print("\n" + json.dumps({k: str(v) for k, v in outcomes.items()}, indent=1))

    assert server.is_running() and server.pid == pid, "the server was aborted behind the proxy"
    assert np.array_equal(_infer(proxy, x, binary=True), direct)


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
    through_proxy = _post_chunked(proxy, "/v2/models/classifier/infer", body)
    print(f"\n6 MB in 1-byte chunks through the proxy: {through_proxy[:40]} in {time.monotonic() - t0:.1f} s")
    # one body with a Content-Length: Triton answers for itself that it is no JSON
    assert through_proxy.startswith((b"HTTP/1.1 400", b"HTTP/1.1 500")), through_proxy
    to_admin_api = _post_chunked(server.http_url, "/v2/logging", body)
    assert to_admin_api.startswith(b"HTTP/1.1 403"), to_admin_api
    time.sleep(0.5)
    assert server.is_running() and server.pid == pid, "the server was aborted"
