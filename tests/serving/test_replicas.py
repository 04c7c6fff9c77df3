"""`mmtrt serve --replicas N`: N real tritonservers on distinct loopback ports, printed; the
watchdog of each restarts its own crashed server while the other keeps serving; SIGTERM stops
them all (no process left), exit 0; a replica past its restart limit is stopped while the others
go on, and none left is an error. (One server, N = 1, in test_serving_cli.py.)"""

from __future__ import annotations

import os
import re
import signal

import pytest
from helpers import ServeCommand, needs_server, processes_mentioning

from mmtrt.serving import build_repository
from mmtrt.serving.client import connect
from mmtrt.serving.errors import ServingError
from mmtrt.serving.replicas import ServeSettings, replica_ports, serve_replicas
from mmtrt.serving.supervisor import RestartPolicy

LINE = r"^replica (\d): HTTP http://(127\.0\.0\.1:\d+)  gRPC (127\.0\.0\.1:\d+)  metrics http://127\.0\.0\.1:(\d+)/metrics  \(pid (\d+)\)$"


def test_replica_ports():
    assert replica_ports(3, 8000, 8001, 8002) == [
        {"http": 8000, "grpc": 8001, "metrics": 8002},
        {"http": 8010, "grpc": 8011, "metrics": 8012},
        {"http": 8020, "grpc": 8021, "metrics": 8022},
    ]
    assert replica_ports(2, 0, 0, 0) == [{"http": 0, "grpc": 0, "metrics": 0}] * 2
    with pytest.raises(ValueError, match="overlap"):
        replica_ports(2, 8000, 8010, 8002)  # replica 1's HTTP port is replica 0's gRPC port
    with pytest.raises(ValueError, match="65535"):
        replica_ports(2, 65530, 8001, 8002)


@needs_server
def test_serve_replicas(repo):
    serve = ServeCommand(
        str(repo), "--replicas", "2", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"
    )
    try:
        found = [serve.wait_for(LINE) for _ in range(2)]
        hint = serve.wait_for(r"^clients: mmtrt infer (.*)$").group(1)
        serve.wait_for(r"^2 replicas ready in")
        http = [m.group(2) for m in found]
        grpc = [m.group(3) for m in found]
        ports = [int(u.rsplit(":", 1)[1]) for u in http + grpc] + [int(m.group(4)) for m in found]
        assert len(set(ports)) == 6, ports  # every port distinct
        for u in http:
            assert f"--url {u}" in hint
        for url, protocol in [(u, "http") for u in http] + [(u, "grpc") for u in grpc]:
            connect(url, protocol, retries=0).close()  # live and ready

        # replica 0's server crashes: its watchdog restarts it, replica 1 serves on meanwhile
        os.killpg(int(found[0].group(5)), signal.SIGKILL)
        connect(http[1], "http", retries=0).close()
        serve.wait_for(r"^warning: replica 0: tritonserver exited on its own", timeout=60)
        serve.wait_for(r"^replica 0 serving again after [\d.]+ s \(pid \d+, restart 1\)", timeout=180)
        connect(http[0], "http", retries=0).close()

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0, "\n".join(serve.lines)
        assert any(re.match(r"^SIGTERM: stopping 2 replicas", line) for line in serve.lines)
    finally:
        serve.stop()
    assert not processes_mentioning(str(repo))


@needs_server
def test_a_replica_past_its_restart_limit_stops_and_none_left_is_an_error(export_dir, tmp_path):
    """No restart allowed: each replica killed is given up and stopped; the other serves on
    until it too is gone, then ServingError (`mmtrt serve` exits 1). Each replica logs to
    <stem>.<i><suffix> beside --log-file."""
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    replicas: dict[int, re.Match] = {}
    lines: list[str] = []

    def echo(line: str, err: bool = False):  # (runs in serve_replicas' loop: kills in step with it)
        lines.append(line)
        m = re.match(LINE, line)
        if m:
            replicas[int(m.group(1))] = m
        if line.startswith("2 replicas ready in"):
            os.killpg(int(replicas[0].group(5)), signal.SIGKILL)
        if line.endswith("the others go on"):
            connect(replicas[1].group(2), "http", retries=0).close()  # replica 1 still serves
            os.killpg(int(replicas[1].group(5)), signal.SIGKILL)

    settings = ServeSettings(
        repo,
        replicas=2,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_file=tmp_path / "triton.log",
        timeout=120,
        restarts=RestartPolicy(max_restarts=0),
    )
    with pytest.raises(ServingError, match="^no replica left$"):
        serve_replicas(settings, echo)
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 2, lines
    for i, error in enumerate(errors):
        assert error.startswith(
            f"Error: replica {i}: tritonserver exited on its own (killed by SIGKILL) after 0 restarts "
            "in 10 minutes; giving up"
        ), error
    assert errors[0].endswith("\nstopping replica 0; the others go on")
    assert "the others go on" not in errors[1] and "stopped" not in lines
    assert (tmp_path / "triton.0.log").is_file() and (tmp_path / "triton.1.log").is_file()
    assert not processes_mentioning(str(repo))
