"""mmtrt.serving.client, the one module that talks to Triton: its rules without a server (the
back-off, what Servers refuses, Servers.map sending each job once and nothing once no server is
left), and against the real server TLS passed through to tritonclient (gRPC with mutual TLS:
the CA, the client certificate and its key) and fail-over from a dead address to a live one.
The rest of its behaviour is tested where it is used: test_infer.py, test_client_faults.py,
test_serving*.py, tests/integration/test_failover.py and test_reliability_serving.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from helpers import needs_server

from mmtrt.serving.client import Backoff, Servers, Tls, TritonClient, image_inputs
from mmtrt.serving.errors import InferError, NoServerLeft, RequestError


def test_backoff_doubles_up_to_its_cap():
    assert [Backoff(0.5).delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert [Backoff(0.25, max_s=1.0).delay(n) for n in (1, 2, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_stale_admin_key_file_is_one_clear_error(tmp_path, monkeypatch, protocol):
    """MMTRT_ADMIN_KEY_FILE naming a stopped server's key (its file gone): the admin call fails
    with an InferError (one line from the commands) naming the file and the variable, before
    anything is sent; inference calls do not read the key at all."""
    missing = tmp_path / "mmtrt-serve-x" / "admin-key"
    monkeypatch.setenv("MMTRT_ADMIN_KEY_FILE", str(missing))
    with TritonClient("127.0.0.1:9", protocol) as client:
        with pytest.raises(
            InferError,
            match=f"admin key file {missing}: No such file or directory .named by "
            "MMTRT_ADMIN_KEY_FILE: point it to the running server's key file, or unset it",
        ):
            client.statistics("multimix")


def test_servers_refuse_what_cannot_work_before_connecting():
    with pytest.raises(InferError, match="no server given"):
        Servers([])
    with pytest.raises(InferError, match="the same server is given twice"):
        Servers(["127.0.0.1:8000", "http://127.0.0.1:8000/"])
    with pytest.raises(InferError, match="a path is not supported"):
        Servers(["127.0.0.1:8000/v2"])
    with pytest.raises(ValueError, match="protocol must be 'http' or 'grpc'"):
        Servers(["127.0.0.1:8000"], "ftp")


def test_map_sends_each_job_once_and_nothing_once_no_server_is_left():
    servers = Servers(["127.0.0.1:1", "127.0.0.1:2"])
    sent: list[int] = []

    def send(_session, job: int) -> int:
        sent.append(job)
        return job * 10

    outcomes = list(servers.map(range(40), send))
    assert sorted(sent) == list(range(40))  # two threads, each job once
    assert sorted(outcomes) == [(j, 10 * j) for j in range(40)]

    sent.clear()
    gone = NoServerLeft("every server was given up")

    def failing(_session, job: int) -> int:
        sent.append(job)
        if job == 3:
            raise ValueError("this job's own error")
        if job == 5:
            raise gone
        return job

    outcomes = dict(Servers(["127.0.0.1:1"]).map(range(12), failing))
    assert sent == [0, 1, 2, 3, 4, 5]  # nothing sent after job 5
    assert sorted(outcomes) == list(range(12))
    assert isinstance(outcomes[3], ValueError) and outcomes[4] == 4
    assert all(outcomes[j] is gone for j in range(5, 12))


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused


@needs_server
def test_a_session_fails_over_from_a_dead_server_and_gives_it_up(server):
    lines: list[str] = []
    dead = _dead_address()
    servers = Servers([dead, server.grpc_url], "grpc", retries=1, backoff=Backoff(0.05), say=lines.append)
    session = servers.session()
    x = image_inputs(np.zeros((2, 1, 256, 256)))
    tried: list[str] = []
    answer = session.send("classifier", x, ("probs",), tried=tried)
    assert answer.endpoint.url == server.grpc_url and answer.outputs["probs"].shape == (2, 2)
    assert tried == [server.grpc_url]  # the dead one failed its readiness probe: nothing sent there
    for _ in range(20):  # its back-off over, the dead server is probed again, and given up
        session.send("classifier", x, ("probs",))
        if servers.endpoints[0].gave_up:
            break
        time.sleep(0.05)
    dead_end, live = servers.endpoints
    assert dead_end.gave_up and dead_end.failures == 2
    assert live.answered_requests >= 2 and live.answered_images == 2 * live.answered_requests
    assert any(f"server {dead} (grpc) not reachable" in line for line in lines), lines
    assert any("giving up on it after 2 failure(s)" in line for line in lines), lines
    session.close()
    with pytest.raises(NoServerLeft, match=f"the server at {dead} \\(grpc\\) still failing after 1 attempt"):
        Servers(dead, "grpc", retries=0).session().send("classifier", x)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key: the server's certificate, the CA that
    signs it, and the client's certificate (mutual TLS) all at once."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


@needs_server
def test_tls_files_reach_tritonclient(export_dir, certificate, tmp_path):
    """Triton's gRPC endpoint with mutual TLS: a client given the CA, its certificate and its key
    is served; one without its certificate, one without the CA, and one without TLS are not."""
    from mmtrt.serving import TritonServer, build_repository
    from mmtrt.serving.tls import ServerTls

    cert, key = certificate
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",), ort_threads=1)
    with pytest.raises(ValueError, match="would override flags TritonServer sets itself"):
        TritonServer(repo, extra_args=["--grpc-use-ssl=true"])  # TLS is its own argument
    srv = TritonServer(repo, log_file=tmp_path / "triton.log", tls=ServerTls(cert, key, ca_file=cert))
    srv.start(timeout=180)
    try:
        x = image_inputs(np.zeros((1, 1, 256, 256)))
        full = Tls(ca_file=str(cert), cert_file=str(cert), key_file=str(key))
        with TritonClient(srv.grpc_url, "grpc", tls=full) as client:
            assert client.is_ready()
            assert client.infer("classifier", x, ("probs",))["probs"].shape == (1, 2)
        for url, tls in (
            (srv.grpc_url, Tls(ca_file=str(cert))),  # no client certificate
            (srv.grpc_url, Tls(cert_file=str(cert), key_file=str(key))),  # the system's CAs
            (srv.grpc_url, None),  # no TLS at all
        ):
            with TritonClient(url, "grpc", tls=tls, connect_timeout_s=10.0) as client:
                with pytest.raises(RequestError, match="UNAVAILABLE"):
                    client.is_ready()
        # grpcs:// turns TLS on, the files still say whom to trust
        with TritonClient(f"grpcs://{srv.grpc_url}", "grpc", tls=full) as client:
            assert client.is_ready()
    finally:
        srv.stop()
