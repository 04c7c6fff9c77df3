"""What one request that aborts Triton 2.51's HTTP front end costs under `mmtrt serve`.

:func:`measure` runs `mmtrt serve` (watchdog on, loopback, free ports) on a CPU-flavour repository,
keeps ``clients`` gRPC clients sending batch-1 `multimix` requests back to back (one attempt each:
each request's own fate is recorded), probes HTTP and gRPC readiness every 50 ms, and sends each
request of :data:`CRASHERS` over HTTP, one at a time once the server is steady again. Per crasher
it reports: seconds until HTTP and gRPC answer ready again, until the first gRPC inference succeeds
again, and what the gRPC requests in flight at that moment got. ``benchmarks/http_abort.py`` is its
command line.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmtrt.serving.client import JOINT_MODEL

# Single HTTP requests that abort tritonserver 2.51, in its HTTP front end, before any model code
# (found by tests/integration/test_reliability_fuzz.py, which leaves them out of its random cases).
# They are not valid JSON requests of any client library, so they go out as raw bytes.
CRASHERS = {
    # the front end reserves shape-product elements before it reads "data": std::bad_alloc
    "JSON tensor whose shape claims 2^56 elements": b'{"inputs":[{"name":"image","shape":[1099511627776,1,256,256],"datatype":"FP32",'
    b'"data":[0]}]}',
    # it parses the JSON recursively, one stack frame per level: stack overflow
    "JSON data nested 100000 levels deep": b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":'
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}]}",
}


def post_raw(address: str, body: bytes, path: str = f"/v2/models/{JOINT_MODEL}/infer") -> str:
    """POST ``body`` as it is (no client library could send a crasher): "HTTP <status>", or
    "no response (<exception>)"."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body)
        return f"HTTP {conn.getresponse().status}"
    except (OSError, http.client.HTTPException) as e:
        return f"no response ({type(e).__name__})"
    finally:
        conn.close()


def _ready(url: str, protocol: str) -> bool:
    from mmtrt.serving.client import TritonClient

    try:
        with TritonClient(url, protocol, timeout_s=1.0, connect_timeout_s=1.0) as client:
            return client.is_ready()
    except Exception:  # noqa: BLE001 - not answering is the answer
        return False


def measure(export: Path, *, clients: int = 2, command: str = "", say: Callable[[str], None] = print) -> dict:
    """The figures of each crasher (module docstring), with the machine and the command."""
    from mmtrt.bench.report import cpu_model
    from mmtrt.serving import build_repository
    from mmtrt.serving.client import TritonClient, image_inputs
    from mmtrt.serving.faults import classify

    work = Path(tempfile.mkdtemp(prefix="mmtrt-http-abort-"))
    repo = build_repository(export, work / "repo", ort_threads=1)
    serve = subprocess.Popen(
        [sys.executable, "-c", "from mmtrt.cli import main; main()", "serve", str(repo)]
        + ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(x.rstrip()) for x in serve.stdout], daemon=True).start()

    def wait_line(pattern: str, timeout: float = 180.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                m = re.search(pattern, line)
                if m:
                    return m
            time.sleep(0.05)
        raise RuntimeError(f"no line {pattern!r}:\n" + "\n".join(lines))

    figures: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "command": command,
        "clients": clients,
        "crashers": {},
    }
    stop = threading.Event()
    records: list[tuple] = []  # (t_start, t_end, status, message)
    probes: list[tuple] = []  # (t, http_ready, grpc_ready)
    try:
        wait_line(r"^ready in")
        text = "\n".join(lines)
        http_url = re.search(r"^HTTP +http://(\S+)$", text, re.M).group(1)
        grpc_url = re.search(r"^gRPC +(\S+)$", text, re.M).group(1)
        x = image_inputs(np.random.default_rng(0).random((1, 1, 256, 256)))

        def client_loop():
            with TritonClient(grpc_url, "grpc", timeout_s=60.0) as client:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        client.infer(JOINT_MODEL, x)
                        status, message = "ok", ""
                    except Exception as e:  # noqa: BLE001 - recorded
                        status, message = classify(e), str(e)[:160]
                    records.append((t0, time.monotonic(), status, message))
                    if status != "ok":
                        time.sleep(0.05)

        def probe_loop():
            while not stop.is_set():
                probes.append((time.monotonic(), _ready(http_url, "http"), _ready(grpc_url, "grpc")))
                time.sleep(0.05)

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
        threads.append(threading.Thread(target=probe_loop, daemon=True))
        for t in threads:
            t.start()
        for n, (what, body) in enumerate(CRASHERS.items(), start=1):
            # steady: every client answered since the last restart
            t_steady = time.monotonic()
            while sum(r[2] == "ok" and r[0] > t_steady for r in records) < 2 * clients:
                time.sleep(0.1)
            t_send = time.monotonic()
            reply = post_raw(http_url, body)
            again = wait_line(rf"^serving again after ([\d.]+) s \(pid \d+, restart {n}\)")
            t_back = time.monotonic()

            # the first moment each probe answered again, once it had stopped answering
            def first_up(k, t_send=t_send):
                down = next((p[0] for p in probes if p[0] >= t_send and not p[k]), None)
                if down is None:
                    return None, None
                up = next((p[0] for p in probes if p[0] > down and p[k]), None)
                return down - t_send, (None if up is None else up - t_send)

            while time.monotonic() - t_back < 3:  # let the probes and clients see it back
                time.sleep(0.1)
            http_down, http_up = first_up(1)
            grpc_down, grpc_up = first_up(2)
            in_flight = [r for r in records if r[0] < t_send < r[1]]
            after = [r for r in records if r[0] >= t_send]
            first_ok = next((r[1] - t_send for r in sorted(after, key=lambda r: r[1]) if r[2] == "ok"), None)
            failed = [r for r in records if r[1] >= t_send and r[2] != "ok" and r[0] < t_back]
            how = re.findall(r"exited on its own \((.*?)\)", "\n".join(lines))[-1]
            figures["crashers"][what] = {
                "sender_got": reply,
                "tritonserver": how,
                "watchdog_restart_s": float(again.group(1)),
                "http_not_ready_after_s": http_down,
                "http_ready_again_s": http_up,
                "grpc_not_ready_after_s": grpc_down,
                "grpc_ready_again_s": grpc_up,
                "first_grpc_inference_ok_s": first_ok,
                "grpc_in_flight": len(in_flight),
                "grpc_in_flight_outcomes": sorted({f"{r[2]}: {r[3][:100]}" for r in in_flight}),
                "grpc_failed_until_back": len(failed),
                "grpc_failure_kinds": sorted({r[2] for r in failed}),
            }
            say(json.dumps({what: figures["crashers"][what]}, indent=2))
    finally:
        stop.set()
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    figures["serve_exit"] = serve.returncode
    figures["load_average_at_end"] = os.getloadavg()
    return figures
