"""A model update under load: the real Triton server run as `mmtrt serve` runs it (explicit model
control, admin key) serves version 1 (--export-a) while 16 clients send requests; `mmtrt update`
adds --export-b as version 2 and, later, rolls back to version 1. Once over HTTP, once over gRPC.
Reported: requests answered and failed, the answers of each version, latency percentiles over
the run, how long each switch took, and whether every answer equals what its version's export
answers in process, its calibration applied (a probe client sends the same images throughout).

    python -m benchmarks.model_update --export-a runs/demo/export --export-b runs/demo/export-b
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import command_line, report_option, script

CONCURRENCY = 16
SECONDS = 30.0
SWITCH_AT = (6.0, 18.0)  # seconds into the run: add version 2, then roll back to 1


def _one_run(protocol: str, repo: Path, exports: dict[str, Path], work: Path) -> dict:
    import os

    from mmtrt.bench.load import run_load
    from mmtrt.calibration import Calibration
    from mmtrt.data import synth_xray
    from mmtrt.runtimes import ort
    from mmtrt.serving import TritonServer
    from mmtrt.serving.admin import KEY_FILE_ENV, AdminKey
    from mmtrt.serving.client import TritonClient
    from mmtrt.serving.update import add_version, load_on, serve_version

    x = (
        np.stack([synth_xray(s, label=s % 2, size=256)[0] for s in (1, 2)]).astype(np.float32)[:, None]
        / 255.0
    )
    expected = {}  # what each version's export answers in process: its graph, then its calibration
    for v, e in exports.items():
        probs = ort.runner(e / "multimix.onnx")({"image": x}, outputs=["probs"])["probs"]
        manifest = json.loads((e / "manifest.json").read_text())
        expected[v] = Calibration.from_manifest(manifest).probabilities(probs)
    key = AdminKey.create()
    os.environ[KEY_FILE_ENV] = str(key.path)
    server = TritonServer(repo, log_file=work / f"triton-{protocol}.log", model_control_mode="explicit",
                          extra_args=key.tritonserver_args())  # fmt: skip
    server.start(timeout=300)
    url = server.http_url if protocol == "http" else server.grpc_url
    result, answers, switches = {}, [], []
    stop = threading.Event()
    try:

        def load():
            result["m"] = run_load(
                protocol, url, "multimix", x, 1, CONCURRENCY, SECONDS, outputs=("probs",), warmup=0
            )

        def probe():
            with TritonClient(server.http_url, "http", timeout_s=120) as client:
                while not stop.is_set():
                    out, version = client.infer_versioned("multimix", {"image": x}, ("probs",))
                    answers.append((version, out["probs"]))

        threads = [threading.Thread(target=load), threading.Thread(target=probe)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for at, action in zip(SWITCH_AT, ("add", "rollback")):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            s0 = time.monotonic()
            if action == "add":
                version = add_version(repo, exports["2"])
                exports[str(version)] = exports["2"]
                expected[str(version)] = expected["2"]
            else:
                version = 1
            serve_version(repo, version)
            load_on([server.grpc_url], "grpc", ["multimix"], say=lambda _m: None)
            switches.append(
                {"to_version": version, "at_s": round(s0 - t0, 2), "took_s": round(time.monotonic() - s0, 2)}
            )
        threads[0].join()
        stop.set()
        threads[1].join()
    finally:
        server.stop()
        key.remove()
    m = result["m"]
    wrong = sum(not np.allclose(p, expected[v], rtol=1e-5, atol=1e-6) for v, p in answers)
    return {
        "protocol": protocol,
        "concurrency": CONCURRENCY,
        "seconds": SECONDS,
        "requests_answered": m.calls,
        "failed": m.extra["failures"],
        "answered_versions": m.extra["answered_versions"],
        "latency_ms": {k: round(v, 1) for k, v in m.latency_ms.items()},
        "switches": switches,
        "probe_answers": len(answers),
        "probe_answers_not_their_versions": int(wrong),
    }


@script(__doc__)
@click.option("--export-a", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--export-b", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@report_option("model_update")
def main(export_a: Path, export_b: Path, out: Path):
    from mmtrt.bench.report import environment, markdown_table
    from mmtrt.serving import build_repository

    rows = []
    for protocol in ("http", "grpc"):
        with tempfile.TemporaryDirectory(prefix="mmtrt-update-") as work:
            repo = build_repository(export_a, Path(work) / "repo", models=("multimix",), ort_threads=1)
            rows.append(_one_run(protocol, repo, {"1": export_a, "2": export_b}, Path(work)))
        click.echo(json.dumps(rows[-1]))
    env = environment()
    out.with_suffix(".json").write_text(
        json.dumps({"command": command_line(), "environment": env, "rows": rows}, indent=2) + "\n"
    )
    table = [
        {
            "protocol": r["protocol"],
            "answered": str(r["requests_answered"]),
            "failed": str(r["failed"]),
            "by version": ", ".join(f"v{k}: {v}" for k, v in r["answered_versions"].items()),
            "p50 / p99 ms": f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f}",
            "switches (at s: took s)": "; ".join(f"-> v{s['to_version']} at {s['at_s']}: {s['took_s']}" for s in r["switches"]),
            "probe answers (not their version's)": f"{r['probe_answers']} ({r['probe_answers_not_their_versions']})",
        }
        for r in rows
    ]  # fmt: skip
    out.with_suffix(".md").write_text(
        f"# A model update under load ({env['date']})\n\nCommand: `{command_line()}`  \n"
        f"Machine: {env['cpu']}, {env['cpu_cores']} cores\n\n"
        f"{CONCURRENCY} clients send one-image requests to `multimix` for {SECONDS:.0f} s (mmtrt's "
        f"load generator); `mmtrt update` adds `{export_b}` as version 2 at {SWITCH_AT[0]:.0f} s "
        f"and rolls back to version 1 at {SWITCH_AT[1]:.0f} s (loads over gRPC). A probe client "
        "sends the same two images throughout; each answer is compared with what the export of the "
        "version that answered gives in process (onnxruntime).\n\n" + markdown_table(table) + "\n"
    )
    click.echo(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
