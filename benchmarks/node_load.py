"""The DICOM node under load and faults, with real components: the Triton server, a real Orthanc as
the destination, `mmtrt dicom-node` as its own process, and four modalities (pynetdicom SCUs)
sending 200 radiographs over 4 concurrent associations. The runs:

- plain: every image's results stored in Orthanc; the time from an image's C-STORE to its results
  stored (acknowledged by Orthanc: the image moves to the spool's done/), p50 / p95;
- node killed: the node is SIGKILLed when half of the images are in, and started again;
- Triton stopped: the server stops when half are in and comes back 15 s later;
- destination down: Orthanc is frozen (SIGSTOP) when half are in, for 15 s.

Each counts, in Orthanc, the images with no SR (lost) and any image with more than one SR
(duplicated), and the spool's failed/. The throughput of the node is compared with `mmtrt infer`
on the same files (the same server, DICOM results written, no sending), the two measured one
after the other ``--pairs`` times.

    python -m benchmarks.node_load --export runs/demo/export
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import ROOT, command_line, report_option, script

IMAGES = 200
SENDERS = 4
SIZE = 512  # rows and columns of each radiograph (12-bit)
PAUSE_S = 15.0


def _radiographs(n: int, folder: Path) -> list[Path]:
    from tests.data.dicom_fixtures import xray_dataset, xray_pixels

    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        stored = np.round(xray_pixels(1000 + i, (SIZE, SIZE)) / 255 * 4095).astype(np.uint16)
        ds = xray_dataset(stored)
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class _Node:
    """`mmtrt dicom-node` as a process."""

    def __init__(self, spool: Path, port: int, triton_url: str, pacs, log: Path):
        self.args = ["--spool", str(spool), "--port", str(port), "--url", triton_url, "--protocol", "http"]
        self.args += ["--store", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--allow-aet", "MODALITY"]
        self.log, self.proc = log, None

    def start(self) -> None:
        code = "from mmtrt.cli import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "dicom-node", *self.args],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def _send_all(paths: list[Path], port: int, sent: dict, stop_after_half: threading.Event) -> None:
    """Four associations, each sending its quarter; an image whose C-STORE is not answered with
    success (the node down) is sent again, as a modality does."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

    def sender(part: list[Path]) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        queue = list(part)
        while queue:
            assoc = ae.associate("127.0.0.1", port, ae_title="MMTRT")
            if not assoc.is_established:
                time.sleep(0.5)
                continue
            try:
                while queue:
                    ds = pydicom.dcmread(queue[0])
                    status = assoc.send_c_store(ds)
                    if not status or status.Status != 0x0000:
                        break
                    sent[ds.SOPInstanceUID] = time.monotonic()
                    queue.pop(0)
                    if len(sent) >= len(paths) // 2:
                        stop_after_half.set()
            finally:
                if assoc.is_established:
                    assoc.release()

    parts = [paths[k::SENDERS] for k in range(SENDERS)]
    threads = [threading.Thread(target=sender, args=(part,)) for part in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _run(kind: str, paths, export: Path, work: Path) -> dict:
    from mmtrt.serving import TritonServer, build_repository
    from mmtrt.serving.server import _free_port
    from tests.helpers import Orthanc

    work.mkdir()
    repo = build_repository(export, work / "repo", ort_threads=1)
    triton = TritonServer(repo, log_file=work / "triton.log").start(timeout=300)
    (work / "orthanc").mkdir()
    pacs = Orthanc(work / "orthanc")
    port = _free_port("127.0.0.1")
    spool = work / "spool"
    node = _Node(spool, port, triton.http_url, pacs, work / "node.log")
    node.start()
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    half = threading.Event()
    watching = threading.Event()

    def watch_done() -> None:  # an image in done/ has its results acknowledged by Orthanc
        while not watching.is_set():
            if (spool / "done").is_dir():
                for p in (spool / "done").glob("*.dcm"):
                    done.setdefault(p.stem, time.monotonic())
            time.sleep(0.1)

    def fault() -> None:
        half.wait()
        if kind == "node killed":
            node.kill()
            time.sleep(2.0)
            node.start()
        elif kind == "Triton stopped":
            triton.stop()
            time.sleep(PAUSE_S)
            triton.die_with_parent = False  # this thread ends soon; the server must outlive it
            triton.restart(timeout=300)
        elif kind == "destination down":
            os.kill(pacs.proc.pid, signal.SIGSTOP)
            time.sleep(PAUSE_S)
            os.kill(pacs.proc.pid, signal.SIGCONT)

    watcher = threading.Thread(target=watch_done)
    faulter = threading.Thread(target=fault, daemon=True)
    watcher.start()
    faulter.start()
    me = os.getpid()  # (its own threads only: the servers are its children)
    cpu0 = {
        "triton": _cpu_seconds(triton.pid),
        "orthanc": _cpu_seconds(pacs.proc.pid),
        "script": _cpu_seconds(me, False),
    }
    t0 = time.monotonic()
    try:
        _send_all(paths, port, sent, half)
        deadline = time.monotonic() + 900
        while len(done) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        cpu = {  # where the machine's time went (the node killed: its second process only)
            "triton": _cpu_seconds(triton.pid) - cpu0["triton"],
            "node": _cpu_seconds(node.proc.pid),
            "orthanc": _cpu_seconds(pacs.proc.pid) - cpu0["orthanc"],
            "modalities (this script)": _cpu_seconds(me, False) - cpu0["script"],
        }
        reports = {}  # source SOP Instance UID -> SRs in Orthanc that reference it
        for item in pacs.post(
            "/tools/find",
            json.dumps({"Level": "Instance", "Query": {"Modality": "SR"}, "Expand": True}).encode(),
            "application/json",
        ):
            tags = pacs.get(f"/instances/{item['ID']}/simplified-tags")
            for source in _referenced(tags) & set(sent):
                reports[source] = reports.get(source, 0) + 1
    finally:
        watching.set()
        watcher.join()
        node.stop()
        triton.stop()
        pacs.stop()
    uids = list(sent)
    latency = np.array([done[u] - sent[u] for u in uids if u in done])
    return {
        "run": kind,
        "images": len(paths),
        "accepted": len(sent),
        "results_in_orthanc": sum(1 for u in uids if reports.get(u, 0) >= 1),
        "lost": sum(1 for u in uids if reports.get(u, 0) == 0),
        "duplicated": sum(1 for u in uids if reports.get(u, 0) > 1),
        "failed_in_spool": len(list((spool / "failed").glob("*.dcm"))),
        "node_retries": (work / "node.log").read_text(errors="replace").count("retrying "),
        "seconds": round(elapsed, 1),
        "all_accepted_after_s": round(max(sent.values()) - t0, 1) if sent else None,
        "images_per_s": round(len(done) / elapsed, 2),
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "store_to_results_s": {
            "p50": round(float(np.percentile(latency, 50)), 2) if latency.size else None,
            "p95": round(float(np.percentile(latency, 95)), 2) if latency.size else None,
        },
    }


def _cpu_seconds(pid: int | None, children: bool = True) -> float:
    """CPU time (user + system) of a process (and its children) so far; 0 once it is gone."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True) if children else []
    except (psutil.Error, ValueError, TypeError):
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _referenced(tags: dict) -> set[str]:
    """Every SOP Instance UID an SR references (the source image, and the SEG where there is one)."""
    import re

    return set(re.findall(r'"ReferencedSOPInstanceUID": "([0-9.]+)"', json.dumps(tags)))


def _infer_throughput(paths, export: Path, work: Path) -> dict:
    from mmtrt.serving import TritonServer, build_repository
    from mmtrt.serving.client import Servers
    from mmtrt.serving.infer import infer_files

    work.mkdir()
    repo = build_repository(export, work / "repo", ort_threads=1)
    triton = TritonServer(repo, log_file=work / "triton.log").start(timeout=300)
    try:
        cpu0 = {"triton": _cpu_seconds(triton.pid), "script": _cpu_seconds(os.getpid(), False)}
        t0 = time.monotonic()
        results = infer_files(paths, Servers([triton.http_url]), out=work / "out", dicom_out=work / "dicom")
        elapsed = time.monotonic() - t0
        cpu = {
            "triton": _cpu_seconds(triton.pid) - cpu0["triton"],
            "infer": _cpu_seconds(os.getpid(), False) - cpu0["script"],
        }
    finally:
        triton.stop()
    return {
        "images": len(results),
        "seconds": round(elapsed, 1),
        "images_per_s": round(len(results) / elapsed, 2),
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
    }


@script(__doc__)
@click.option("--export", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--faults", default="node killed,Triton stopped,destination down", help="Fault runs, comma-separated."
)
@click.option(
    "--pairs",
    default=3,
    show_default=True,
    type=click.IntRange(1, 10),
    help="How many times `mmtrt infer` and the node's plain run are measured, one after the other "
    "(the overhead is given per pair and as their median: a shared machine's speed drifts).",
)
@report_option("node_load")
def main(export: Path, faults: str, pairs: int, out: Path):
    from mmtrt.bench.report import environment, markdown_table

    rows, infers = [], []
    with tempfile.TemporaryDirectory(prefix="mmtrt-node-load-") as work:
        work = Path(work)
        paths = _radiographs(IMAGES, work / "images")
        for i in range(pairs):
            infers.append(_infer_throughput(paths, export, work / f"infer{i}"))
            click.echo(f"mmtrt infer: {infers[-1]}")
            rows.append(_run("plain", paths, export, work / f"plain{i}"))
            click.echo(json.dumps(rows[-1]))
        for i, kind in enumerate(k.strip() for k in faults.split(",") if k.strip()):
            rows.append(_run(kind, paths, export, work / f"fault{i}"))
            click.echo(json.dumps(rows[-1]))
    plains = [r for r in rows if r["run"] == "plain"]
    overheads = [1 - r["images_per_s"] / infer["images_per_s"] for r, infer in zip(plains, infers)]
    overhead = float(np.median(overheads))
    env = environment()
    report = {
        "command": command_line(),
        "environment": env,
        "infer": infers,
        "rows": rows,
        "node_overhead": {"per_pair": [round(o, 3) for o in overheads], "median": round(overhead, 3)},
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = [
        {k: str(r[k]) for k in ("run", "accepted", "results_in_orthanc", "lost", "duplicated", "failed_in_spool", "node_retries", "all_accepted_after_s", "seconds", "images_per_s")}
        | {"C-STORE -> results p50 / p95 s": f"{r['store_to_results_s']['p50']} / {r['store_to_results_s']['p95']}"}
        | {"CPU s (node / Triton)": f"{r['cpu_s'].get('node')} / {r['cpu_s'].get('triton')}"}
        for r in rows
    ]  # fmt: skip
    pair_table = [
        {
            "pair": str(i + 1),
            "mmtrt infer images/s (CPU s)": f"{infer['images_per_s']} ({infer['cpu_s']['infer']})",
            "node images/s (CPU s)": f"{r['images_per_s']} ({r['cpu_s'].get('node')})",
            "overhead": f"{o:.0%}",
        }
        for i, (infer, r, o) in enumerate(zip(infers, plains, overheads))
    ]
    out.with_suffix(".md").write_text(
        f"# The DICOM node under load and faults ({env['date']})\n\nCommand: `{command_line()}`  \n"
        f"Machine: {env['cpu']}, {env['cpu_cores']} cores\n\n"
        f"{IMAGES} radiographs ({SIZE} x {SIZE}, 12-bit DX) sent by {SENDERS} modalities over {SENDERS} "
        "concurrent associations to `mmtrt dicom-node` (its own process), which infers through the "
        "Triton server and C-STOREs SEG + SC + SR into a real Orthanc; faults at half-way "
        f"(pauses of {PAUSE_S:.0f} s). Lost: an accepted image with no SR in Orthanc; duplicated: "
        "one with more than one.\n\n"
        + markdown_table(table)
        + "\n\nThroughput against `mmtrt infer` on the same files (the same server, DICOM results "
        "written, nothing sent), each pair measured one after the other:\n\n"
        + markdown_table(pair_table)
        + f"\n\nNode overhead (C-STORE in, durable spool, results out): **median {overhead:.0%}** "
        f"({', '.join(f'{o:.0%}' for o in overheads)}).\n"
    )
    click.echo(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
