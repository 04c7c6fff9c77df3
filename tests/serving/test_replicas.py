"""`mmtrt serve --replicas N`: N real tritonservers on distinct loopback ports, printed; the
watchdog of each restarts its own crashed server while the other keeps serving; SIGTERM stops
them all (no process left), exit 0."""

from __future__ import annotations

import os
import re
import signal

import pytest
from helpers import ServeCommand, needs_server, processes_mentioning

from mmtrt.serving.client import connect
from mmtrt.serving.replicas import replica_ports

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
