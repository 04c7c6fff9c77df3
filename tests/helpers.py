"""The helpers of the test suite, in one place: the image kinds every parity test runs on (from
:mod:`mmtrt.parity`), the export folder of the real MultiMix graphs, onnxruntime sessions set up
like the served ones, the real Triton server started in-process or as `mmtrt serve`, a client of
it (mmtrt.serving.client), and process listing. The fixtures built on them (``model``, ``export_dir``, ``repo``, ``server``) are in
conftest.py; the stand-in for TensorRT is fake_tensorrt.py."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtrt.parity import image_batch, relative_error  # noqa: F401 (re-exported for the tests)
from mmtrt.serving import ServingError, TritonServer, find_tritonserver
from mmtrt.serving.client import TritonClient

MAX_BATCH = 8
BATCH_SIZES = (1, 3, 8)


# --------------------------------------------------------------------------- images


def random_images(batch: int, seed: int, size: int = 256) -> torch.Tensor:
    """Fresh uniform noise in [0, 1]: no ties anywhere."""
    return image_batch("random", batch, seed, size)


def flat_region_images(batch: int, seed: int, size: int = 256) -> torch.Tensor:
    """Images with exactly flat regions, like real X-rays: black borders, a saturated block and
    quantised plateaus, so that many max-pool windows hold ties."""
    return image_batch("flat", batch, seed, size)


def xray_images(batch: int, seed: int, size: int = 256) -> torch.Tensor:
    """Synthetic chest X-rays from the data generator (black borders, saturated markers)."""
    return image_batch("xray", batch, seed, size)


IMAGE_KINDS = {"random": random_images, "flat": flat_region_images, "xray": xray_images}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR claims width x height (8-bit grey), with the given IDAT bytes: what a
    decompression bomb looks like to a decoder that checks the header (no pixels behind it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def encoded(array, fmt: str = "PNG", **options) -> bytes:
    """The bytes of ``array`` (uint8 or uint16 grey) saved by Pillow as ``fmt``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


try:
    find_tritonserver()
    _NO_SERVER = None
except ServingError as _e:  # pragma: no cover - depends on the machine
    _NO_SERVER = str(_e)
needs_server = pytest.mark.skipif(_NO_SERVER is not None, reason=f"no tritonserver: {_NO_SERVER}")


# --------------------------------------------------------------------------- DICOM conformance

DCIODVFY = shutil.which("dciodvfy")


def dicom_conformance(*paths: Path) -> dict[str, list[str]]:
    """Run the standard's validator, dciodvfy (Debian package dicom3tools), on each DICOM file and
    fail on any line of its output that contains "Error"; return each file's warnings. Without
    dciodvfy: fail in CI (CI=true, where scripts/setup.sh installs it), else skip, saying why.
    Call it after a test's other checks (a skip ends the test)."""
    if DCIODVFY is None:
        why = "dciodvfy is not installed (apt-get install dicom3tools; scripts/setup.sh does it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    warnings = {}
    for path in paths:
        done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
        lines = (done.stdout + done.stderr).splitlines()  # its exit status is no verdict: read it
        errors = [line for line in lines if "Error" in line]
        assert not errors, f"dciodvfy {path}:\n" + "\n".join(lines)
        warnings[Path(path).name] = [line for line in lines if line.startswith("Warning")]
    return warnings


# --------------------------------------------------------------------------- certificates


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
             "-out", str(cert), "-subj", f"/CN={name}")  # fmt: skip
    return cert, key


def _signed(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    cert, key, csr, extfile = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"
    )
    extfile.write_text(ext + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-out", str(cert), "-extfile", str(extfile))  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def make_pki(d: Path) -> dict[str, tuple[Path, Path]]:
    """(certificate, key) PEM files made with openssl in ``d``: a CA, the server's certificate for
    127.0.0.1 and a client's, both signed by it, and another CA. Skips without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make certificates")
    ca = _ca(d, "hospital-ca")
    return {
        "ca": ca,
        "server": _signed(d, "server", ca, "subjectAltName=IP:127.0.0.1"),
        "client": _signed(d, "client", ca, "extendedKeyUsage=clientAuth"),
        "other_ca": _ca(d, "other-ca"),
    }


# --------------------------------------------------------------------------- monitoring rules

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"


def metrics_page(server: TritonServer) -> str:
    """The server's Prometheus metrics page, as Prometheus scrapes it."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        return r.read().decode()


def rule_groups() -> dict:
    """deploy/monitoring/'s Prometheus rule file (inside its ConfigMap), as Prometheus reads it."""
    import yaml

    (config_map,) = [d for d in yaml.safe_load_all((MONITORING / "mmtrt-rules.yaml").read_text()) if d]
    return yaml.safe_load(config_map["data"]["mmtrt-rules.yml"])


def recording_rules() -> set[str]:
    return {r["record"] for g in rule_groups()["groups"] for r in g["rules"] if "record" in r}


def rule_series() -> set[str]:
    """The scraped series the rules read (mmtrt_* and nv_*; histograms by their _sum / _count /
    _bucket series)."""
    names = set()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:mmtrt|nv)_[a-z_]+)\b", rule["expr"]))
    return names


# --------------------------------------------------------------------------- a real PACS: Orthanc

ORTHANC = shutil.which("Orthanc")
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    """A real Orthanc (Debian packages orthanc + orthanc-dicomweb) as a plain process on loopback
    ports, with a temporary storage folder: ``rest`` is its REST root, ``dicomweb`` its DICOMweb
    root, ``dicom_port`` / ``aet`` its DIMSE side; ``modalities`` are the AEs it may send to."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]] | None = None):
        import json

        if ORTHANC is None or not ORTHANC_DICOMWEB.exists():
            why = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        from mmtrt.serving.server import _free_port

        self.http_port, self.dicom_port, self.aet = (
            _free_port("127.0.0.1"),
            _free_port("127.0.0.1"),
            "TESTPACS",
        )
        self.rest = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = self.rest + "/dicom-web"
        config = {
            "Name": "TESTPACS",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(ORTHANC_DICOMWEB)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(ae) for name, ae in (modalities or {}).items()},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                assert self.proc.poll() is None, (folder / "orthanc.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "Orthanc did not answer /system within 30 s"
                time.sleep(0.1)

    def get(self, path: str):
        import json
        import urllib.request

        with urllib.request.urlopen(self.rest + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes, content_type: str = "application/dicom"):
        import json
        import urllib.request

        request = urllib.request.Request(self.rest + path, data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.log.close()


# --------------------------------------------------------------------------- the export under test


def _export_key() -> str:
    """What the exported files depend on: the sources of the mmtrt modules the exporter runs
    (mmtrt.model, mmtrt.graphs, the loaded mmtrt.export modules) and the library versions."""
    import sys

    import onnx
    import onnxscript
    import torch

    import mmtrt.export.onnx_graphs  # noqa: F401 - loads what it depends on

    names = sorted(
        n
        for n in sys.modules
        if n in ("mmtrt.model", "mmtrt.graphs", "mmtrt.graph_modules", "mmtrt.ood")
        or n.startswith("mmtrt.export")
    )
    digest = hashlib.sha256()
    for name in names:
        source = Path(sys.modules[name].__file__)
        digest.update(name.encode() + b"\0" + source.read_bytes())
    digest.update(
        f"{torch.__version__} {onnx.__version__} {onnxscript.__version__} seed=0 "
        f"max_batch={MAX_BATCH}".encode()
    )
    return digest.hexdigest()[:16]


def real_export(request, graphs=("multimix", "encoder")) -> Path:
    """An export folder of the real graphs of ``mmtrt.graphs`` over
    ``torch.manual_seed(0); MultiMix().eval()``: ``<graph>.onnx`` written by
    ``mmtrt.export.onnx_graphs.export_onnx(..., max_batch=8)`` for each of ``graphs`` (and any
    exported before), plus manifest.json with their sha256 and ``max_batch``.

    The export is deterministic (byte-identical files) but slow (~10-30 s a graph), so the folder
    is kept in pytest's cache under a key of the sources and versions it depends on; set
    MMTRT_TEST_FRESH_EXPORT=1 to export into the session's temp folder instead.
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None and not os.environ.get("MMTRT_TEST_FRESH_EXPORT"):
        folder = Path(cache.mkdir(f"mmtrt-export-{_export_key()}"))
        for stale in folder.parent.glob("mmtrt-export-*"):  # other sources, untouched for a day
            if stale != folder and time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
    else:
        folder = request.getfixturevalue("tmp_path_factory").getbasetemp() / "real-export"
        folder.mkdir(exist_ok=True)
    with _locked(folder / ".lock"):  # parallel test workers: one exports, the others wait for it
        return _real_export_into(folder, graphs)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _real_export_into(folder: Path, graphs) -> Path:
    missing = [g for g in graphs if not (folder / f"{g}.onnx").is_file()]
    if missing:
        import torch

        from mmtrt.export.onnx_graphs import export_onnx
        from mmtrt.graphs import GRAPHS
        from mmtrt.model import MultiMix

        torch.manual_seed(0)
        model = MultiMix().eval()
        for graph in missing:
            t0 = time.monotonic()
            tmp = folder / f".{graph}.{os.getpid()}.tmp.onnx"
            export_onnx(GRAPHS[graph], model, tmp, max_batch=MAX_BATCH)
            os.replace(tmp, folder / f"{graph}.onnx")  # atomic: a parallel run sees all or nothing
            print(f"\nexported {graph}.onnx in {time.monotonic() - t0:.1f} s")
    import onnx

    from mmtrt.export.manifest import file_entry, graph_record, write_manifest

    files = sorted(folder.glob("[!.]*.onnx"))
    write_manifest(  # atomic: a parallel run sees all or nothing
        folder,
        {
            "max_batch": MAX_BATCH,
            "image_size": 256,
            "note": "tests real_export (seed 0, untrained)",
            "graphs": {f.stem: graph_record(f, onnx.load(str(f), load_external_data=False)) for f in files},
            "files": {f.name: file_entry(f, kind="onnx", graph=f.stem) for f in files},
        },
    )
    return folder


def gated_export(folder: Path, data: Path, graphs=("multimix", "encoder"), seed: int = 0) -> Path:
    """An export like :func:`real_export`'s (``seed``, untrained) whose image gate is fitted, as
    `mmtrt export` fits it, on the classification root ``data`` (train/ and val/): its graphs
    answer ``in_distribution`` false for images unlike those; ``ood.npz`` and the manifest's
    ``ood`` record are written as an export's."""
    import onnx
    import torch

    from mmtrt.export.manifest import file_entry, graph_record, write_file, write_manifest
    from mmtrt.export.onnx_graphs import export_onnx
    from mmtrt.graphs import GRAPHS
    from mmtrt.model import MultiMix
    from mmtrt.ood import MANIFEST_KEY, STATS_FILE, fit_gate, stats_bytes

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = MultiMix().eval()
    record = fit_gate(model, data, quantile=0.99, echo=lambda *_: None)
    for graph in graphs:
        export_onnx(GRAPHS[graph], model, folder / f"{graph}.onnx", max_batch=MAX_BATCH)
    write_file(folder / STATS_FILE, stats_bytes(model.ood))
    files = sorted(folder.glob("*.onnx"))
    write_manifest(
        folder,
        {
            "max_batch": MAX_BATCH,
            "note": f"tests gated_export (seed {seed}, untrained, image gate fitted)",
            "graphs": {f.stem: graph_record(f, onnx.load(str(f))) for f in files},
            "files": {
                **{f.name: file_entry(f, kind="onnx", graph=f.stem) for f in files},
                STATS_FILE: file_entry(folder / STATS_FILE, kind="out-of-distribution statistics"),
            },
            MANIFEST_KEY: {**record, "sha256": file_entry(folder / STATS_FILE)["sha256"]},
        },
    )
    return folder


def ort_session(path: Path):
    """An onnxruntime session set up like the served one (one intra-op thread)."""
    from mmtrt.runtimes import ort

    return ort.session(path, threads=1)


def start_server(repo: Path, log: Path) -> TritonServer:
    srv = TritonServer(repo, log_file=log)
    t0 = time.monotonic()
    srv.start(timeout=180)
    print(f"\ntritonserver ready in {time.monotonic() - t0:.2f} s: {' '.join(srv.command)}")
    return srv


def client_for(protocol: str, server: TritonServer) -> TritonClient:
    """A :class:`~mmtrt.serving.client.TritonClient` of ``server`` over "http" or "grpc" (a long
    time-out: requests queue on a busy 2-core machine); close it."""
    url = server.http_url if protocol == "http" else server.grpc_url
    return TritonClient(url, protocol, timeout_s=120.0)


def model_statistics(server: TritonServer, model: str, since: dict | None = None) -> dict:
    """Triton's counts of ``model``: requests (inferences), executions, executions of more than
    one request, the batch sizes it ran. With ``since`` (an earlier reading), the counts once
    they have moved on from it and settled: Triton records an execution after its responses
    have gone out, so a client can hold every answer before the counts include them."""

    def read() -> dict:
        with TritonClient(server.http_url) as client:
            s = client.statistics(model)
        multi = sum(b["compute_infer"]["count"] for b in s["batch_stats"] if b["batch_size"] > 1)
        return {
            "inferences": s["inference_count"],
            "executions": s["execution_count"],
            "multi_executions": multi,
            "batch_sizes": sorted(b["batch_size"] for b in s["batch_stats"]),
        }

    now = read()
    deadline = time.monotonic() + 10
    while since is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        again = read()
        if again == now and now["executions"] != since["executions"]:
            break
        now = again
    return now


def post_infer(server: TritonServer, model: str, body: bytes, headers: dict) -> tuple[int, dict]:
    """POST ``body`` to ``/v2/models/<model>/infer`` with the standard library: (HTTP status, the
    JSON answer). The raw protocol on purpose: for requests no client library sends (hand-made
    JSON, lying binary headers) and for what a plain HTTP client gets."""
    import http.client
    import json

    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def processes_mentioning(text: str) -> list[str]:
    """tritonserver / python-backend stub processes whose command line contains ``text``."""
    ps = subprocess.run(
        ["ps", "-ww", "-e", "-o", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in ps.splitlines()
        if text in line and ("tritonserver" in line or "triton_python_backend_stub" in line)
    ]


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc`` (if it still runs), then SIGKILL if it has not ended within ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServeCommand:
    """`mmtrt serve` in a subprocess; its output lines collected by a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from mmtrt.cli import main; main()", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))

    def endpoints(self) -> tuple[str, str]:
        """The (HTTP, gRPC) addresses, host:port, of the one server this `mmtrt serve` printed."""
        text = "\n".join(self.lines)
        http = re.search(r"^HTTP +http://(127\.0\.0\.1:\d+)$", text, re.M).group(1)
        grpc = re.search(r"^gRPC +(127\.0\.0\.1:\d+)$", text, re.M).group(1)
        return http, grpc

    def stop(self):
        """After a failed assert: SIGTERM (mmtrt serve cleans up), SIGKILL if that hangs."""
        stop_process(self.proc, 60)

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        while True:
            line = self._queue.get(timeout=5)
            if line is None:
                return code
            self.lines.append(line)


# --------------------------------------------------------------------------- training


def tiny_train_args(out: Path, cache: Path, *extra: str, epochs: int = 2, steps: int = 3) -> list[str]:
    """`mmtrt train` arguments of a run small enough for a test: 64-pixel synthetic data, batch 1,
    ``epochs`` x ``steps`` steps, a checkpoint and a log record every step."""
    return [
        "--out", str(out), "--synth-cache", str(cache), "--image-size", "64",
        "--synth-cls", "24,8,4", "--synth-seg", "8,4,2", "--seg-labels", "3", "--cls-labels", "8",
        "--batch-size", "1", "--epochs", str(epochs), "--steps-per-epoch", str(steps),
        "--compile", "off", "--progress", "off", "--log-every", "1", "--ckpt-every", "1",
        *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------- ONNX


def tiny_saliency_graph(opset=18, *, saliency=True):
    """An ONNX model of a forward pass, its backward half and a decoder, in miniature:
    image -> conv_f -> f -> probs (sigmoid of its mean);
    (f > 0) gates image -> conv_g -> saliency (|.|): a backward half reading a forward gate;
    image -> conv_b -> centred by its spatial mean -> mask."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), n) for n in ("wf", "wb")
    ]
    inits.append(numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "wg"))
    inits.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    nodes = [
        helper.make_node("Conv", ["image", "wf"], ["f"], name="conv_f", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["f", "axes"], ["f_mean"], name="f_mean", keepdims=0),
        helper.make_node("Sigmoid", ["f_mean"], ["probs"], name="probs"),
        helper.make_node("Greater", ["f", "zero"], ["gate_bool"], name="gate"),
        helper.make_node("Cast", ["gate_bool"], ["gate_f"], name="gate_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["gate_f", "image"], ["gated"], name="gated"),
        helper.make_node("Conv", ["gated", "wg"], ["g"], name="conv_g", pads=[1, 1, 1, 1]),
        helper.make_node("Abs", ["g"], ["saliency"], name="abs"),
        helper.make_node("Conv", ["image", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["b", "axes"], ["b_mean"], name="mean", keepdims=1),
        helper.make_node("Sub", ["b", "b_mean"], ["b_centered"], name="sub"),
        helper.make_node("Sigmoid", ["b_centered"], ["mask"], name="sigmoid"),
    ]
    value = lambda n, *shape: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *shape])
    outputs = [value("probs", 2), value("mask", 2, 64, 64)]
    if saliency:
        outputs.insert(1, value("saliency", 2, 64, 64))
    graph = helper.make_graph(nodes, "tiny", [value("image", 1, 64, 64)], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
