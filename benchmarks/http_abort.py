"""What one request that aborts Triton 2.51's HTTP front end costs under `mmtrt serve`.

Runs `mmtrt serve` (watchdog on, loopback, free ports) on a CPU-flavour repository, keeps
``--clients`` gRPC clients sending batch-1 `multimix` requests back to back (no retries: each
request's own fate is recorded), probes HTTP ``/v2/health/ready`` and gRPC ``ServerReady`` every
50 ms, and sends each request of tests/test_reliability_serving.py's CRASHERS over HTTP, one at a
time once the server is steady again. Per crasher it reports: seconds until HTTP and gRPC answer
ready again, until the first gRPC inference succeeds again, and what the gRPC requests in flight
at that moment got.

    .venv/bin/python benchmarks/http_abort.py --export EXPORT_DIR [--clients 2] [--out FILE.json]

EXPORT_DIR: ``multimix.onnx``, ``encoder.onnx``, ``manifest.json`` (``mmtrt export``; the tests'
export lies in ``.pytest_cache/d/mmtrt-export-*``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CRASHERS = {
    "JSON tensor whose shape claims 2^56 elements": b'{"inputs":[{"name":"image","shape":[1099511627776,1,256,256],"datatype":"FP32",'
    b'"data":[0]}]}',
    "JSON data nested 100000 levels deep": b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":'
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}]}",
}


def _post(address: str, body: bytes) -> str:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v2/models/multimix/infer", body=body)
        r = conn.getresponse()
        return f"HTTP {r.status}"
    except (OSError, http.client.HTTPException) as e:
        return f"no response ({type(e).__name__})"
    finally:
        conn.close()


def _ready_http(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=1)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import tritonclient.grpc as grpcclient

    from mmtrt.serving import build_repository
    from mmtrt.serving.faults import classify
    from mmtrt.serving.infer import _grpc_channel_args

    work = Path(tempfile.mkdtemp(prefix="mmtrt-http-abort-"))
    repo = build_repository(args.export, work / "repo", ort_threads=1)
    serve = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mmtrt.cli import main; main()",
            "serve",
            str(repo),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ]
        + ["--metrics-port", "0"],
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
        raise SystemExit(f"no line {pattern!r}:\n" + "\n".join(lines))

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        ),
        "?",
    )
    figures: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "command": " ".join(["benchmarks/http_abort.py", *(argv if argv is not None else sys.argv[1:])]),
        "clients": args.clients,
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
        x = np.random.default_rng(0).random((1, 1, 256, 256)).astype(np.float32)

        def client_loop():
            c = grpcclient.InferenceServerClient(grpc_url, channel_args=_grpc_channel_args(grpcclient))
            while not stop.is_set():
                inp = grpcclient.InferInput("image", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                t0 = time.monotonic()
                try:
                    c.infer("multimix", [inp], client_timeout=60)
                    status, message = "ok", ""
                except Exception as e:  # noqa: BLE001 - recorded
                    status, message = classify(e), str(e)[:160]
                records.append((t0, time.monotonic(), status, message))
                if status != "ok":
                    time.sleep(0.05)
            c.close()

        def probe_loop():
            c = grpcclient.InferenceServerClient(grpc_url, channel_args=_grpc_channel_args(grpcclient))
            while not stop.is_set():
                try:
                    g = bool(c.is_server_ready(client_timeout=1))
                except Exception:  # noqa: BLE001
                    g = False
                probes.append((time.monotonic(), _ready_http(http_url), g))
                time.sleep(0.05)
            c.close()

        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.clients)]
        threads.append(threading.Thread(target=probe_loop, daemon=True))
        for t in threads:
            t.start()
        for n, (what, body) in enumerate(CRASHERS.items(), start=1):
            # steady: every client answered since the last restart
            t_steady = time.monotonic()
            while sum(r[2] == "ok" and r[0] > t_steady for r in records) < 2 * args.clients:
                time.sleep(0.1)
            t_send = time.monotonic()
            reply = _post(http_url, body)
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
            print(json.dumps({what: figures["crashers"][what]}, indent=2), flush=True)
    finally:
        stop.set()
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    figures["serve_exit"] = serve.returncode
    figures["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
