"""What a burst of oversize requests leaves behind in the Triton server: its memory (tritonserver
and its python stubs, resident) and the python backend's shared memory in /dev/shm, before and
after 4 concurrent requests each carrying one file far above the repository's image-size limit,
sent to the file model directly and through the nginx guard of deploy/nginx/ (mmtrt.serving.guard),
over gRPC and over HTTP. Each row runs on a fresh server.

    python -m benchmarks.oversize_burst --export EXPORT_DIR [--mib 256] [--out benchmarks/results/oversize_burst]
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import click

from benchmarks import command_line, report_option, script

REQUESTS = 4
MODEL = "file_decoder"  # the first step of multimix_image: where a file's bytes arrive


def _tree_rss_mib(pid: int) -> float:
    from mmtrt.bench.soak import server_rss  # tritonserver and its stubs (its process group)

    return server_rss(pid)[0] / 2**20


def _shm_mib() -> float:
    return sum(p.stat().st_size for p in Path("/dev/shm").glob("*triton_python_backend*")) / 2**20


def _send_grpc(address: str, payload: bytes) -> str:
    from mmtrt.serving.client import TritonClient, file_inputs
    from mmtrt.serving.errors import RequestError

    try:
        with TritonClient(address, "grpc", timeout_s=300) as client:
            client.infer(MODEL, file_inputs([payload]))
        return "answered"
    except RequestError as e:
        return e.status or str(e)[:60]
    except OSError as e:
        return f"no answer ({type(e).__name__})"


def _send_http(address: str, payload: bytes) -> str:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "file",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload) + 4},
                }
            ]
        }
    ).encode()
    body = header + len(payload).to_bytes(4, "little") + payload
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        conn.request(
            "POST",
            f"/v2/models/{MODEL}/infer",
            body=body,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        )
        response = conn.getresponse()
        response.read()
        return f"HTTP {response.status}"
    except OSError as e:
        return f"no answer ({type(e).__name__})"
    finally:
        conn.close()


def _one_row(export: Path, protocol: str, through: str, mib: int, work: Path) -> dict:
    from mmtrt.serving import TritonServer, build_repository
    from mmtrt.serving.guard import NginxGuard

    repo = build_repository(export, work / "repo", models=(MODEL,))
    server = TritonServer(repo, log_file=work / "triton.log").start(timeout=180)
    guard = (
        NginxGuard(server.http_url, server.grpc_url, work / "nginx").start() if through == "guard" else None
    )
    try:
        address = {"direct": {"grpc": server.grpc_url, "http": server.http_url}}.get(through) or {
            "grpc": guard.grpc,
            "http": guard.http,
        }
        address = address[protocol]
        send = _send_grpc if protocol == "grpc" else _send_http
        time.sleep(2)
        before, shm_before = _tree_rss_mib(server.pid), _shm_mib()
        payload = b"\0" * (mib << 20)
        answers: list[str] = []
        peak = [before]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_mib(server.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        threads = [
            threading.Thread(target=lambda: answers.append(send(address, payload))) for _ in range(REQUESTS)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        time.sleep(3)  # what stays, once the server has let go of what it can
        done.set()
        watcher.join()
        after, shm_after = _tree_rss_mib(server.pid), _shm_mib()
        return {
            "protocol": protocol,
            "through": "nginx guard" if guard else "direct",
            "answers": ", ".join(sorted(set(answers))),
            "seconds": round(seconds, 2),
            "rss_before_mib": round(before),
            "rss_peak_mib": round(peak[0]),
            "rss_after_mib": round(after),
            "after_over_before": round(after / before, 2),
            "shm_after_mib": round(shm_after - shm_before),
            "server_alive": server.is_running(),
        }
    finally:
        if guard:
            guard.stop()
        server.stop()


@script(__doc__)
@click.option("--export", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mib", type=click.IntRange(min=66), default=256, help="Size of each request's file, MiB.")
@report_option("oversize_burst")
def main(export: Path, mib: int, out: Path):
    from mmtrt.bench.report import environment, markdown_table

    rows = []
    for protocol in ("grpc", "http"):
        for through in ("direct", "guard"):
            with tempfile.TemporaryDirectory(prefix="mmtrt-oversize-") as work:
                row = _one_row(export, protocol, through, mib, Path(work))
            click.echo(json.dumps(row))
            rows.append(row)
    env = environment()
    report = {
        "command": command_line(),
        "environment": env,
        "requests": REQUESTS,
        "mib_each": mib,
        "rows": rows,
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# Oversize requests: the server's memory after a burst ({env['date']})\n\n"
        f"Command: `{command_line()}`  \nMachine: {env['cpu']}, {env['cpu_cores']} cores\n\n"
        f"{REQUESTS} concurrent requests to `{MODEL}` (the file model's first step), each one file of "
        f"{mib} MiB (the repository's limit: 64 MiB; the guard's: 65 MB), on a fresh server per row. "
        "RSS: tritonserver and its python stubs, resident MiB; shm: growth of the python "
        "backend's regions in /dev/shm.\n\n" + markdown_table(rows) + "\n"
    )
    click.echo(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
