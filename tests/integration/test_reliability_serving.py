"""Reliability of the served joint pipeline (the real Triton server, CPU flavour) under load and
faults, with figures printed (run with -s to see them):

- soak: the fused `multimix` model under concurrency 16 (half HTTP, half gRPC) for 60 s, every
  answer checked against onnxruntime: nothing lost, p99 per 10-s window stable, server memory
  (tritonserver + its stub processes, from /proc) growing < 10 % after warm-up;
- a model's python-backend stub process SIGKILLed: the server stays up and the other model keeps
  serving, the affected clients get a clear error; `mmtrt serve`'s watchdog restarts the server
  on the same ports and the model serves again, under load, with `mmtrt infer` losing nothing;
  the two single HTTP requests that abort tritonserver 2.51 (found by the fuzz) are recovered
  from the same way;
- the server SIGKILLed during `mmtrt infer` and restarted: the client retries with its bounded
  back-off and finishes every image (and the killed server's shared memory is cleaned up); if
  the server stays away it gives up with a clear message;
- the server listens on loopback only unless told otherwise (psutil's table of sockets).

The load is bounded: every loop has a deadline and every request a client time-out.
The soak is mmtrt.bench.soak's; benchmarks/soak.py runs it for 10 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import ServeCommand, client_for, needs_server, processes_mentioning
from PIL import Image

from mmtrt.bench import soak as soak_module
from mmtrt.bench.http_abort import CRASHERS, post_raw
from mmtrt.serving import build_repository, liveness
from mmtrt.serving.client import TritonClient
from mmtrt.serving.errors import RequestError
from mmtrt.serving.processes import python_stub_processes, stub_argvs

pytestmark = needs_server
SOAK_SECONDS = 60.0
CONCURRENCY = 16


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory) -> Path:
    """The module server's repository: conftest's, with the soak's small file-size limit for the
    image-file model (its oversize requests stay cheap)."""
    from mmtrt.serving.settings import ImageLimits

    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        ort_threads=1,
        image_limits=ImageLimits(max_bytes=soak_module.SOAK_MAX_IMAGE_BYTES),
    )


@pytest.fixture
def own_repo(export_dir, tmp_path) -> Path:
    """A repository of its own, for a test that starts its own server (so that its processes
    can be told apart from the module server's)."""
    return build_repository(export_dir, tmp_path / "own_repo", ort_threads=1)


@pytest.fixture(scope="module")
def pool():
    from mmtrt.bench.runner import xray_pool

    return xray_pool(8, seed=40)


@pytest.fixture(scope="module")
def references(export_dir, pool):
    return soak_module.reference_outputs(export_dir / "multimix.onnx", pool)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, pool) -> Path:
    d = tmp_path_factory.mktemp("xrays")
    for i, x in enumerate(pool[:6]):
        Image.fromarray((x[0] * 255).round().astype(np.uint8)).save(d / f"xray_{i}.png")
    return d


# --------------------------------------------------------------------------- helpers


def listening_sockets(port: int) -> list[str]:
    """Local addresses ("127.0.0.1", "0.0.0.0", "::"...) with a socket listening on ``port``
    (IPv4-mapped IPv6 addresses as IPv4)."""
    import ipaddress

    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.laddr.port != port:
            continue
        address = ipaddress.ip_address(conn.laddr.ip.split("%")[0])
        # gRPC listens on an AF_INET6 socket bound to ::ffff:127.0.0.1: still IPv4 loopback
        mapped = getattr(address, "ipv4_mapped", None)
        found.append(str(mapped or address))
    return found


def _shm_regions(server_pid: int) -> list[Path]:
    """The /dev/shm files of the server's stubs (the third argument of each stub's command), in
    the server's own /dev/shm (``/proc/<pid>/root``: the same as the host's when not private)."""
    return [Path(f"/proc/{server_pid}/root/dev/shm") / argv[2] for _pid, argv in stub_argvs(server_pid)]


def _processes_in_mount_namespace(namespace: str) -> list[int]:
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{name}/ns/mnt") == namespace:
                pids.append(int(name))
        except OSError:
            pass
    return pids


def _old_processes(namespace: str, server_pid: int) -> list[int]:
    """Processes in the mount namespace ``namespace`` that are not of the server ``server_pid``'s
    process group (the namespace's number may have been reused by the new server)."""
    old = []
    for pid in _processes_in_mount_namespace(namespace):
        try:
            if os.getpgid(pid) != server_pid:
                old.append(pid)
        except ProcessLookupError:  # gone meanwhile
            pass
    return old


def _client(protocol: str, url: str) -> TritonClient:
    """One connection, one attempt a request: what each request got is the point here."""
    return TritonClient(url, protocol, timeout_s=120.0)


# Every message a client may get while a stub is dead or the server restarts: each says what
# happened (anything else, e.g. a wrong answer or a hang, fails the test).
CLEAR_FAILURES = re.compile(
    r"Stub process '\w+' is not healthy"  # the stub died: requests to its model
    r"|has no available versions"  # the server stopping: models unloading
    r"|Connection refused|UNAVAILABLE"  # the server is restarting
    r"|Connection reset|HTTPConnectionClosed|Broken pipe|connection closed|Socket closed"
    r"|failed to connect|RST_STREAM|EOF"
    r"|not reachable behind the proxy"  # the guard in front, while tritonserver restarts
)


class Load:
    """``n`` client threads (alternately HTTP and gRPC) sending batch-1 `multimix` requests back
    to back until stop() or ``max_s``; each answer is checked against the references."""

    def __init__(self, http_url, grpc_url, pool, references, n=4, max_s=150.0):
        self.records: list[tuple[float, str, str, str]] = []  # (t_end, protocol, status, message)
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run,
                daemon=True,
                args=(i, "http" if i % 2 else "grpc", http_url if i % 2 else grpc_url, pool, references),
            )
            for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def _run(self, i, protocol, url, pool, references):
        client = _client(protocol, url)
        k = i
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                j = k % len(pool)
                k += 1
                try:
                    got = client.infer("multimix", {"image": pool[j : j + 1]})
                    problem = soak_module.mismatch(got, references[j])
                    status, message = ("ok", "") if problem is None else ("wrong", problem)
                except Exception as e:  # noqa: BLE001 - counted and checked
                    status, message = "failed", f"{type(e).__name__}: {e}"
                with self._lock:
                    self.records.append((time.monotonic(), protocol, status, message))
                if status == "failed":
                    self._stop.wait(0.2)
        finally:
            client.close()

    def count(self, status: str, after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for r in self.records if r[2] == status and r[0] > after)

    def wait_for(self, status: str, n: int, after: float = 0.0, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(status, after) < n:
            assert time.monotonic() < deadline, f"fewer than {n} {status} answers: {self.records[-5:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(150)
        assert not any(t.is_alive() for t in self._threads), "a client hung"


class InferRun:
    """`mmtrt infer ARGS` (the click command, in-process: no interpreter start-up) in a thread, so
    that the main thread can kill and restart servers meanwhile (a server must be restarted from
    the thread that outlives it: TritonServer's parent-death signal follows the starting thread)."""

    def __init__(self, *args):
        from click.testing import CliRunner

        from mmtrt.cli import main

        self.result = None
        self._thread = threading.Thread(
            target=lambda: setattr(self, "result", CliRunner().invoke(main, ["infer", *map(str, args)])),
            daemon=True,
        )
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = 300.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "mmtrt infer hung"
        return self.result


def _infer_one_image_a_request(url: str, out: Path, images: Path, *options: str) -> InferRun:
    """`mmtrt infer IMAGES --url URL --batch-size 1 --out OUT OPTIONS`: one image a request, so
    that the run is still going when a server is made to fail."""
    return InferRun("--url", url, "--batch-size", "1", "--out", out, *options, images)


def _wait_for_json(folder: Path, run: InferRun, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob("*.json")):
        assert run.running(), f"mmtrt infer ended early: {run.result.output if run.result else ''}"
        assert time.monotonic() < deadline, "mmtrt infer wrote nothing"
        time.sleep(0.02)


# --------------------------------------------------------------------------- soak


def test_soak_concurrency_16(server, pool, references):
    """60 s of the fused model under 16 concurrent clients, every 5th request a bad one (wrong
    dtype, shape, batch, non-finite values; undecodable, flat, oversize and bomb files): zero valid
    requests failed or wrong, every bad one rejected as invalid input, p99 stable over 10-s
    windows, memory growth < 10 % after a 10-s warm-up."""
    figures = soak_module.soak(
        server.http_url,
        server.grpc_url,
        pool=pool,
        references=references,
        seconds=SOAK_SECONDS,
        concurrency=CONCURRENCY,
        server_pid=server.pid,
        window_s=10.0,
        warmup_s=10.0,
        bad_every=5,
    )
    env = soak_module.environment()
    env["server"] = f"tritonserver pid {server.pid}, cpu flavour, ort_intra_op_threads 1"
    text = soak_module.markdown(
        figures,
        command="pytest tests/integration/test_reliability_serving.py::test_soak_concurrency_16",
        environment=env,
    )
    print("\n" + text)
    stab, mem = figures["p99_stability"], figures["memory"]
    assert figures["hung_clients"] == 0
    assert figures["failed"] == figures["wrong"] == figures["invalid"] == 0, figures["error_messages"]
    bad = figures["bad_requests"]
    assert set(bad) == {
        "dtype",
        "shape",
        "batch",
        "non-finite",
        "undecodable",
        "degenerate",
        "oversize",
        "bomb",
    }, bad
    assert all(v["rejected"] == v["sent"] > 0 for v in bad.values()), (bad, figures["error_messages"])
    assert figures["ok"] >= CONCURRENCY, "the load did not run"
    assert set(figures["by_protocol"]) == {"http", "grpc"}
    # p99 stable: no 10-s window far above the others, no upward drift (the machine is shared,
    # so the bounds leave room for other work on its 2 cores)
    assert stab["windows"] >= 4
    assert stab["max_over_median"] < 3.0, stab
    assert stab["second_half_over_first_half"] < 2.0, stab
    assert mem["processes"] >= 3  # tritonserver + the two models' stubs
    assert mem["growth_after_warmup"] < 0.10, mem
    assert server.is_running() and server.dead_stubs() == []


# --------------------------------------------------------------------------- a stub killed


def test_killed_stub_fails_its_requests_clearly_server_stays_up(server, pool, references, tmp_path):
    """What Triton 2.51 does by itself when a model's stub process dies: the server stays live and
    ready, the other model serves on, the dead model's requests fail with a clear error, and
    nothing brings the model back (it is even still reported READY), until the server is
    restarted: TritonServer.dead_stubs() sees it, TritonServer.restart() cures it."""
    stubs = server.stub_processes()
    assert sorted(m for _, m, _ in stubs) == ["classifier", "file_decoder", "file_decoder", "multimix"], stubs
    assert _liveness_probe(server, tmp_path) == (0, "")
    victim = next(pid for pid, m, _ in stubs if m == "multimix")
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.dead_stubs() != ["multimix"]:
        assert time.monotonic() < deadline, server.stub_processes()
        time.sleep(0.05)
    # the Kubernetes liveness probe sees what Triton's health endpoints do not
    assert _liveness_probe(server, tmp_path) == (
        1,
        "not live: model multimix: 0 of 1 python stub process(es) alive",
    )
    x = pool[:1]
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        with _client(protocol, url) as client:
            for _ in range(2):  # it stays broken: Triton does not restart the stub
                with pytest.raises(RequestError, match=r"Stub process 'multimix_0_0' is not healthy"):
                    client.infer("multimix", {"image": x})
            assert client.is_live() and client.is_ready()
            assert client.model_ready("multimix")  # Triton does not notice
            probs = client.infer("classifier", {"image": x})["probs"]
            np.testing.assert_allclose(probs, references[0]["probs"], rtol=1e-4, atol=1e-5)
    assert server.is_running()
    old_pid, ports = server.pid, dict(server.ports)
    t0 = time.monotonic()
    server.restart(timeout=180)
    print(f"\nrestart after a dead stub: {time.monotonic() - t0:.1f} s")
    assert server.pid != old_pid and server.ports == ports and server.dead_stubs() == []
    assert _liveness_probe(server, tmp_path) == (0, "")
    with client_for("http", server) as client:
        assert soak_module.mismatch(client.infer("multimix", {"image": x}), references[0]) is None


def _liveness_probe(server, tmp_path) -> tuple[int, str]:
    """The cpu pods' livenessProbe command (deploy/cpu/deployment.yaml), run as the serving image
    runs it: the one file copied alone, by an isolated Python (standard library only)."""
    probe = tmp_path / "liveness.py"
    shutil.copy(liveness.__file__, probe)
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(probe),
            "--repository",
            str(server.repository),
            "--pid",
            str(server.pid),
            "--http",
            server.http_url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stderr.strip()


def test_serve_watchdog_restarts_a_killed_stub_under_load(own_repo, tmp_path, pool, references, image_files):
    """`mmtrt serve` (loopback, auto ports) under load from 4 clients and an `mmtrt infer` run:
    SIGKILL the multimix stub; the affected requests fail with a clear error, the watchdog
    restarts tritonserver on the same ports, the clients get correct answers again, and the
    retrying `mmtrt infer` loses no image. Then each request of CRASHERS (which aborts a bare
    tritonserver) is refused by the guard in front and the server runs on; tritonserver killed
    outright is restarted by the watchdog too."""
    repo = own_repo
    serve = ServeCommand(str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    load = None
    try:
        pid = int(serve.wait_for(r"^ready in .* \(pid (\d+)\)").group(1))
        text = "\n".join(serve.lines)
        http, grpc = serve.endpoints()
        metrics = int(re.search(r"^metrics +http://127\.0\.0\.1:(\d+)/", text, re.M).group(1))
        for port in (int(http.rsplit(":", 1)[1]), int(grpc.rsplit(":", 1)[1]), metrics):
            assert listening_sockets(port) == ["127.0.0.1"], (port, listening_sockets(port))

        load = Load(http, grpc, pool, references, n=4)
        load.wait_for("ok", 4)
        out = tmp_path / "out"
        key_file = re.search(r"MMTRT_ADMIN_KEY_FILE=(\S+)$", text, re.M).group(1)
        admin = f"triton-grpc-protocol-mmtrt-admin-key={Path(key_file).read_text().strip()}"
        infer = InferRun(  # (mmtrt infer reads the model's config: an admin API)
            "--url",
            grpc,
            "--protocol",
            "grpc",
            "--batch-size",
            "1",
            "--out",
            out,
            "--header",
            admin,
            image_files,
        )  # the default retries: 0.5 ... 8 s
        _wait_for_json(out, infer)
        victim = [p for p, m, _ in python_stub_processes(pid) if m == "multimix"]
        assert len(victim) == 1
        t_kill = time.monotonic()
        os.kill(victim[0], signal.SIGKILL)
        serve.wait_for(r"^warning: the python-backend stub process of model\(s\) multimix died", timeout=60)
        again = serve.wait_for(r"^serving again after ([\d.]+) s \(pid (\d+), restart 1\)", timeout=180)
        t_back = time.monotonic()
        new_pid = int(again.group(2))
        assert new_pid != pid
        load.wait_for("ok", 4, after=t_back)  # every client served again
        result = infer.wait()
        load.stop()
        recovery = t_back - t_kill
        failed = [r for r in load.records if r[2] == "failed"]
        print(
            f"\nstub killed under load: the watchdog restarted the server in "
            f"{float(again.group(1)):.1f} s, {recovery:.1f} s from the kill to serving again; "
            f"{load.count('ok')} ok, {len(failed)} failed (all after the kill, clear), "
            f"{load.count('wrong')} wrong; mmtrt infer: exit {result.exit_code}"
        )
        assert load.count("wrong") == 0
        assert failed, "the clients in flight must see the failure"
        for t, _proto, _status, message in failed:
            assert t >= t_kill, message
            assert CLEAR_FAILURES.search(message), message
        assert result.exit_code == 0, result.output
        assert "6 image(s): 6 ok" in result.stdout, result.stdout
        for port in (int(http.rsplit(":", 1)[1]), int(grpc.rsplit(":", 1)[1])):
            assert listening_sockets(port) == ["127.0.0.1"]
        assert sorted(m for _, m, _ in python_stub_processes(new_pid)) == [
            "classifier",
            "file_decoder",  # two decoder instances by default (DecoderQueue)
            "file_decoder",
            "multimix",
        ]

        # single HTTP requests that abort Triton 2.51's HTTP front end (Triton defects, see
        # model_repository/README.md) are refused by the guard: tritonserver never sees them
        for what, body in CRASHERS.items():
            status = post_raw(http, body)  # raw bytes: no client library sends these
            print(f"{what}: {status} from the guard")
            assert status.startswith("HTTP 4"), (what, status)
        time.sleep(1.0)  # (a crash would be seen at once)
        assert psutil.Process(new_pid).status() != psutil.STATUS_ZOMBIE, "tritonserver died"
        assert not [line for line in serve.lines if "tritonserver exited on its own" in line], serve.lines[
            -30:
        ]

        # tritonserver itself crashing (killed): the watchdog restarts it as well
        os.kill(new_pid, signal.SIGKILL)
        again = serve.wait_for(r"^serving again after ([\d.]+) s \(pid (\d+), restart 2\)", timeout=180)
        assert re.search(
            r"^warning: tritonserver exited on its own \(killed by SIGKILL", "\n".join(serve.lines), re.M
        ), serve.lines[-30:]
        with _client("grpc", grpc) as client:
            got = client.infer("multimix", {"image": pool[:1]})
            assert soak_module.mismatch(got, references[0]) is None
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0, "\n".join(serve.lines)
    finally:
        if load is not None:
            load._stop.set()
        serve.stop()
    assert not processes_mentioning(str(repo))


# --------------------------------------------------------------------------- the server killed


def test_infer_survives_server_kill_and_restart(server, image_files, references, tmp_path):
    """SIGKILL the whole server (tritonserver and its stubs) while `mmtrt infer` runs over HTTP,
    restart it on the same ports a moment later: the client retries each failed batch with its
    doubling back-off and every image comes out right. (Over gRPC the same retries happen in
    test_serve_watchdog_restarts_a_killed_stub_under_load, through the watchdog's restart.)"""
    out = tmp_path / "out"
    infer = _infer_one_image_a_request(
        server.http_url, out, image_files, "--retries", "6", "--retry-delay", "0.5"
    )
    regions = _shm_regions(server.pid)  # the python backend's shared memory in /dev/shm
    assert regions and all(r.exists() for r in regions)
    namespace = os.readlink(f"/proc/{server.pid}/ns/mnt")  # (its number may be reused later)
    if server.private_shm.kind is None:
        regions = [Path("/dev/shm") / r.name for r in regions]
    _wait_for_json(out, infer)
    os.killpg(server.pid, signal.SIGKILL)
    t0 = time.monotonic()
    time.sleep(1.0)
    server.restart(timeout=180)
    print(f"\nserver back {time.monotonic() - t0:.1f} s after the kill")
    if server.private_shm.kind is None:
        # a SIGKILLed server leaves its stubs' files in the host's /dev/shm; restart() removes them
        assert not [r for r in regions if r.exists()]
    else:  # its private /dev/shm went with the last process of its mount namespace
        deadline = time.monotonic() + 15  # SIGKILLed processes take a moment to finish exiting
        while _old_processes(namespace, server.pid):
            assert time.monotonic() < deadline, _old_processes(namespace, server.pid)
            time.sleep(0.1)
    r = infer.wait()
    print(r.stderr[-1500:])
    assert r.exit_code == 0, r.output
    assert "retrying in 0.5 s (1/6)" in r.stderr
    assert "6 image(s): 6 ok" in r.stdout
    for i in range(6):
        record = json.loads((out / f"xray_{i}.json").read_text())
        np.testing.assert_allclose(
            list(record["probabilities"].values()), references[i]["probs"][0], rtol=1e-4, atol=1e-5
        )


# --------------------------------------------------------------------------- trust boundary


def test_server_binds_loopback_by_default(server):
    """TritonServer (and `mmtrt serve`, tested above) listen on 127.0.0.1 only: nothing on
    0.0.0.0 or ::, for HTTP, gRPC and metrics."""
    for name, port in server.ports.items():
        assert listening_sockets(port) == ["127.0.0.1"], (name, port, listening_sockets(port))


def test_infer_gives_up_clearly_when_the_server_stays_away(server, image_files, tmp_path):
    """The server killed for good during a run: after its bounded back-off `mmtrt infer` stops,
    names the server and what it tried, keeps the results it has, and exits 1. (Last in the
    module: the server stays dead; the module fixture cleans up.)"""
    out = tmp_path / "out"
    infer = _infer_one_image_a_request(
        server.http_url, out, image_files, "--retries", "2", "--retry-delay", "0.2"
    )
    _wait_for_json(out, infer)
    os.killpg(server.pid, signal.SIGKILL)
    t0 = time.monotonic()
    r = infer.wait(120)
    elapsed = time.monotonic() - t0
    print(f"\ngave up {elapsed:.1f} s after the kill:\n{r.stderr[-1200:]}")
    assert r.exit_code == 1
    assert "retrying in 0.2 s (1/2)" in r.stderr and "retrying in 0.4 s (2/2)" in r.stderr
    assert (
        f"error: giving up: the server at {server.http_url} (http) still failing after 3 "
        "attempt(s)" in r.stderr
    )
    ok = len(list(out.glob("*.json")))
    assert 1 <= ok < 6
    assert f"6 image(s): {ok} ok" in r.stdout and f"{6 - ok} failed" in r.stdout
    assert f"{6 - ok - 1} image(s) were not sent" in r.stderr
    assert elapsed < 60  # 0.2 + 0.4 s of back-off, plus the request in flight
