"""Image files on the wire: the served model ``multimix_image`` (the ensemble file_decoder ->
multimix) decodes PNG, JPEG, 16-bit PNG and DICOM files in the real Triton server with mmtrt's
decoder, answers what multimix answers for the same files decoded by ``load_image`` (plus each
file's size), over HTTP and gRPC with mmtrt's client, with a plain standard-library HTTP client
(JSON and the binary-data extension) and with the curl command of model_repository/README.md;
a request with a bad file fails alone, as invalid input, naming the problem; `mmtrt infer --send`
sends files or tensors; the load generator of `mmtrt bench` sends files; a file the input gate
refuses is answered, not failed (accepted false, the reason, zeros).

One server for the module: its repository has multimix_image (and so file_decoder and multimix)
with small limits (2 MB, 4 million pixels) so that the oversize and bomb cases stay small, and
the input gate's modality rule relaxed (pydicom's CT_small, a real DICOM file, is decoded and
answered; the body-part and view rules stay strict).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from data.dicom_fixtures import save, xray_dataset, xray_pixels
from helpers import (
    client_for,
    dicom_conformance,
    encoded,
    metrics_page,
    model_statistics,
    needs_server,
    ort_session,
    png_header_only,
    post_infer,
    rule_series,
)

from mmtrt.cli import main
from mmtrt.data import load_image, synth_xray
from mmtrt.serving import ServingError, build_repository, validate_repository
from mmtrt.serving.client import ACCEPTED, IMAGE_MODEL, REFUSAL_REASON, Servers, file_inputs, image_inputs
from mmtrt.serving.errors import RequestError
from mmtrt.serving.faults import INVALID, classify
from mmtrt.serving.settings import AuditSettings, ImageLimits

pytestmark = needs_server
ROOT = Path(__file__).resolve().parents[2]
LIMITS = ImageLimits(max_bytes=2_000_000, max_pixels=4_000_000, allow="modality")
QUEUE_DELAY_US = 50_000  # concurrent requests meet in one execution
OUTPUTS = ("probs", "label", "mask", "saliency", "original_size")
CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"  # 128 x 128, shipped


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit") / "trail"


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory, audit_dir):
    return build_repository(
        export_dir,
        tmp_path_factory.mktemp("built") / "repo",
        models=("multimix_image",),
        max_queue_delay_us=QUEUE_DELAY_US,
        ort_threads=1,
        image_limits=LIMITS,
        audit=AuditSettings(folder=str(audit_dir)),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An 8-bit PNG, a JPEG, a 12-bit radiograph in a 16-bit PNG and a DICOM file (CT_small)."""
    d = tmp_path_factory.mktemp("files")
    xray = synth_xray(5, label=1, size=600)[0][:, 50:550]  # 600 rows x 500 columns
    (d / "xray.png").write_bytes(encoded(xray))
    (d / "xray.jpg").write_bytes(encoded(synth_xray(6, label=0, size=480)[0], "JPEG", quality=90))
    (d / "xray16.png").write_bytes(encoded(synth_xray(7, label=1, size=512)[0].astype(np.uint16) * 16))
    shutil.copy(CT, d / "ct.dcm")
    return {p.name: p for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def expected(export_dir, files) -> dict[str, dict]:
    """name -> multimix.onnx in-process on load_image of the file, and the file's size."""
    session = ort_session(export_dir / "multimix.onnx")
    out = {}
    for name, path in files.items():
        with warnings.catch_warnings():  # CT_small: Modality CT, read anyway
            warnings.simplefilter("ignore")
            image = load_image(path)
        probs, mask, saliency = session.run(["probs", "mask", "saliency"], {"image": image[None, None]})
        native = pydicom.dcmread(path) if name.endswith(".dcm") else None
        size = (native.Rows, native.Columns) if native else _size(path)
        out[name] = {"probs": probs[0], "mask": mask[0], "saliency": saliency[0], "size": size}
    return out


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.height, img.width


def _send_files(protocol, server, datas, request_id=""):
    with client_for(protocol, server) as client:
        return client.infer(IMAGE_MODEL, file_inputs(datas), OUTPUTS, request_id=request_id)


def _assert_answer(got, want, name, j=0):
    np.testing.assert_allclose(got["probs"][j], want["probs"], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["mask"][j], want["mask"], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got["saliency"][j], want["saliency"], rtol=1e-5, atol=1e-5, err_msg=name)
    assert int(got["label"][j, 0]) == int(np.argmax(want["probs"])), name
    assert tuple(got["original_size"][j]) == want["size"], name


# --------------------------------------------------------------------------- mmtrt's client


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_files_decoded_in_the_server_answer_as_load_image_tensors(server, files, expected, protocol):
    """One request of four files (PNG, JPEG, 16-bit PNG, DICOM): multimix's outputs for the same
    files decoded by load_image (in-process onnxruntime), and each file's rows and columns; the
    tensor model of the same server agrees."""
    names = list(files)
    got = _send_files(protocol, server, [files[n].read_bytes() for n in names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = np.stack([load_image(files[n]) for n in names])[:, None]
    assert got["original_size"].dtype == np.int32 and got["original_size"].shape == (len(names), 2)
    for j, name in enumerate(names):
        _assert_answer(got, expected[name], name, j)
    with client_for(protocol, server) as client:  # and the gate accepted each (CT_small: relaxed)
        datas = file_inputs([files[n].read_bytes() for n in names])
        verdict = client.infer(IMAGE_MODEL, datas, ("probs", ACCEPTED))
    assert verdict[ACCEPTED].dtype == bool and verdict[ACCEPTED].tolist() == [[True]] * len(names)
    with client_for(protocol, server) as client:
        tensors = client.infer("multimix", image_inputs(x), ("probs",))["probs"]
    np.testing.assert_allclose(got["probs"], tensors, rtol=1e-6, atol=1e-6)


def test_bad_files_fail_alone_among_good_ones(server, files, expected):
    """Eight concurrent one-file requests over HTTP and gRPC, six of them bad: each bad one gets
    its own invalid-input error naming the problem, the good ones their answers, and the eight
    met in shared executions of file_decoder."""
    ct = pydicom.dcmread(CT)
    ct.Rows = ct.Columns = 40_000  # claims 1.6 Gpx; the pixel data stays small
    dicom_bomb = io.BytesIO()
    ct.save_as(dicom_bomb, enforce_file_format=True)
    jobs = {  # name: (bytes, words its message must contain; None for a good file)
        "xray.png": (files["xray.png"].read_bytes(), None),
        "ct.dcm": (files["ct.dcm"].read_bytes(), None),
        "pdf": (b"%PDF-1.4 not an image", ["not an image file", "b'%PDF-1.4"]),
        "bomb-png": (
            png_header_only(40_000, 40_000),
            ["decompression bomb: 1600000000 pixels, over 4000000"],
        ),
        "bomb-png-warning-zone": (
            png_header_only(2500, 2000),
            ["decompression bomb: 5000000 pixels, over 4000000"],
        ),
        "bomb-dicom": (dicom_bomb.getvalue(), ["decompression bomb", "40000 x 40000", "4000000"]),
        "oversize": (
            b"\x89PNG\r\n\x1a\n" + bytes(2_100_000),
            ["payload 2.0 MiB > limit 1.9 MiB", "max_image_bytes"],
        ),
        "constant": (encoded(np.full((300, 200), 128, np.uint8)), ["no contrast", "nearly constant"]),
    }
    before = model_statistics(server, "file_decoder")
    results = {}
    barrier = threading.Barrier(len(jobs), timeout=60)

    def worker(i, name, data):
        protocol = "grpc" if i % 2 else "http"
        barrier.wait()
        try:
            results[name] = (protocol, _send_files(protocol, server, [data], request_id=f"job-{i}"))
        except Exception as e:  # noqa: BLE001 - collected for the asserts
            results[name] = (protocol, e)

    threads = [
        threading.Thread(target=worker, args=(i, name, data))
        for i, (name, (data, _)) in enumerate(jobs.items())
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    after = model_statistics(server, "file_decoder", since=before)
    for i, (name, (_, words)) in enumerate(jobs.items()):
        protocol, got = results[name]
        if words is None:
            assert isinstance(got, dict), f"{name}: {got}"
            _assert_answer(got, expected[name], name)
            continue
        assert isinstance(got, RequestError), f"{name} was answered"
        message = str(got)
        print(f"\n{name} ({protocol}): {message}")
        assert got.status == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"), message
        assert classify(got) == INVALID
        assert f"model 'file_decoder': image 0 of request 'job-{i}': " in message
        for word in words:
            assert word in message, f"{name}: {word!r} not in {message!r}"
    assert after["inferences"] - before["inferences"] == len(jobs)
    assert after["executions"] - before["executions"] < len(jobs), (before, after)  # batched
    assert server.is_running() and server.dead_stubs() == []


# --------------------------------------------------------------------------- plain HTTP


def _outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def test_plain_http_client_sends_files_as_json_and_as_binary_data(server, files, expected):
    """KServe v2 with the standard library only: the binary-data extension (each file's bytes
    behind a 4-byte length) and JSON (each file as base64 text); a bad file is HTTP 400 with the
    error in the JSON body."""
    names = ["xray16.png", "ct.dcm"]
    datas = [files[n].read_bytes() for n in names]
    wanted = [{"name": n, "parameters": {"binary_data": False}} for n in ("probs", "label", "original_size")]
    tensor = b"".join(struct.pack("<I", len(d)) + d for d in datas)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "file",
                    "shape": [len(datas), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": wanted,
        }
    ).encode()
    status, answer = post_infer(
        server,
        "multimix_image",
        header + tensor,
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200, answer
    binary = _outputs(answer)
    as_json = {
        "inputs": [
            {
                "name": "file",
                "shape": [len(datas), 1],
                "datatype": "BYTES",
                "data": [base64.b64encode(d).decode() for d in datas],
            }
        ],
        "outputs": [{"name": n} for n in ("probs", "label", "original_size")],
    }
    status, answer = post_infer(
        server, "multimix_image", json.dumps(as_json).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    text = _outputs(answer)
    for got in (binary, text):
        for j, name in enumerate(names):
            np.testing.assert_allclose(got["probs"][j], expected[name]["probs"], rtol=1e-5, atol=1e-5)
            assert tuple(got["original_size"][j]) == expected[name]["size"]
            assert got["label"][j, 0] == np.argmax(expected[name]["probs"])
    as_json["inputs"][0]["data"] = [base64.b64encode(d).decode() for d in (datas[0], b"%PDF-1.4 no image")]
    status, answer = post_infer(
        server, "multimix_image", json.dumps(as_json).encode(), {"Content-Type": "application/json"}
    )
    assert status == 400 and "image 1: not an image file" in answer["error"], answer


def _readme_curl() -> str:
    text = (ROOT / "model_repository" / "README.md").read_text()
    blocks = [
        b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "curl" in b and "multimix_image/infer" in b
    ]
    assert len(blocks) == 1, "model_repository/README.md documents one curl command for multimix_image"
    assert blocks[0] in (ROOT / "README.md").read_text(), "README.md shows the same command"
    return blocks[0]


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="no curl on PATH: the documented command cannot run here"
)
@pytest.mark.parametrize("name", ["xray.png", "ct.dcm"])
def test_the_documented_curl_command(server, files, expected, name):
    """The curl command of model_repository/README.md, as written, with this server and file."""
    command = _readme_curl().replace("127.0.0.1:8000", server.http_url).replace("xray.png", str(files[name]))
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    got = _outputs(json.loads(done.stdout))
    assert sorted(got) == ["label", "original_size", "probs"]
    np.testing.assert_allclose(got["probs"][0], expected[name]["probs"], rtol=1e-5, atol=1e-5)
    assert tuple(got["original_size"][0]) == expected[name]["size"]


# --------------------------------------------------------------------------- the input gate

REFUSED = {  # DICOM files the server's gate refuses (body part, view: strict), and why
    "leg.dcm": (
        {"modality": "CR", "photometric": "MONOCHROME1", "BodyPartExamined": "EXTREMITY"},
        "Body Part Examined (0018,0015) is 'EXTREMITY', not a chest (CHEST, THORAX, LUNG, LUNGS) "
        "[rule body-part]",
    ),
    "lateral.dcm": (
        {"ViewPosition": "LL", "BodyPartExamined": "CHEST"},
        "View Position (0018,5101) is 'LL' (left lateral), not a frontal view (AP or PA) [rule view]",
    ),
}


@pytest.fixture(scope="module")
def refused_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("refused")
    twelve = xray_pixels(8, (320, 256)).astype(np.uint16) * 16
    return {name: save(xray_dataset(twelve, **attrs), d / name) for name, (attrs, _) in REFUSED.items()}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_refused_files_are_answered_not_failed(server, files, expected, refused_files, protocol):
    """One request of a radiograph, a CR of a leg, a lateral chest and a CT (modality relaxed in
    this repository): the request succeeds; the refused files say accepted false and why, their
    outputs are zeros and label -1 (nothing to take for a result); the others are answered as
    alone."""
    names = ["xray.png", "leg.dcm", "lateral.dcm", "ct.dcm"]
    paths = {**files, **refused_files}
    wanted = (*OUTPUTS, ACCEPTED, REFUSAL_REASON)
    with client_for(protocol, server) as client:
        got = client.infer(IMAGE_MODEL, file_inputs([paths[n].read_bytes() for n in names]), wanted)
    assert got[ACCEPTED].tolist() == [[True], [False], [False], [True]]
    reasons = [r[0].decode() for r in got[REFUSAL_REASON]]
    assert reasons == ["", REFUSED["leg.dcm"][1], REFUSED["lateral.dcm"][1], ""]
    for j in (1, 2):
        for name in ("probs", "mask", "saliency", "original_size"):
            assert not got[name][j].any(), (names[j], name)
        assert got["label"][j, 0] == -1
    for j in (0, 3):
        _assert_answer(got, expected[names[j]], names[j], j)


def test_infer_prints_refused_and_writes_the_reason(server, files, refused_files, tmp_path):
    """`mmtrt infer`: its own gate refuses the leg before sending; with --allow view the lateral
    is sent as bytes and the server's gate refuses it. Both are printed refused with the reason,
    their JSON says so, no overlay, no DICOM results; the radiograph beside them is answered and
    the command succeeds."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in (files["xray.png"], *refused_files.values()):
        shutil.copy(path, inputs / path.name)
    out, dicom_out = tmp_path / "out", tmp_path / "dicom"
    r = _infer("--url", server.http_url, "--allow", "view", "--out", out, "--dicom-out", dicom_out, inputs)
    assert r.exit_code == 0, r.output
    for name, by in (("leg.dcm", "mmtrt infer"), ("lateral.dcm", "multimix_image")):
        reason = REFUSED[name][1]
        assert f"refused: {inputs / name}: {reason}" in r.stderr
        record = json.loads((out / name.replace(".dcm", ".json")).read_text())
        assert (record["outcome"], record["refusal_reason"], record["refused_by"]) == ("refused", reason, by)
        assert record["label"] is None and record["probabilities"] is None
    assert json.loads((out / "xray.json").read_text())["outcome"] == "answered"
    assert sorted(p.name for p in out.iterdir()) == ["lateral.json", "leg.json", "xray.json", "xray.png"]
    assert not dicom_out.exists() or not any(dicom_out.iterdir())
    assert "3 image(s): 1 ok (" in r.stdout and "2 refused, 0 failed" in r.stdout
    assert r.stdout.count("REFUSED") == 2


# --------------------------------------------------------------------------- mmtrt infer, bench


def _infer(*args):
    return CliRunner().invoke(main, ["infer", *map(str, args)])


def test_infer_sends_files_or_tensors(server, files, tmp_path):
    """`mmtrt infer --send`: bytes (one server, and two --url: the fail-over client), tensor,
    and auto (DICOM as bytes, the rest as tensors) give the same numbers; DICOM results are
    written from files sent as bytes; bytes with the classifier is refused before connecting."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("xray.png", "ct.dcm"):
        shutil.copy(files[name], inputs / name)
    url = server.http_url
    runs = {
        "tensor": ["--send", "tensor", "--url", url],
        "bytes": ["--send", "bytes", "--url", url, "--dicom-out", tmp_path / "dicom"],
        "two-urls": ["--send", "bytes", "--url", url, "--url", url.replace("127.0.0.1", "localhost")],
        "auto": ["--url", url],
    }
    records = {}
    for run, args in runs.items():
        args += ["--allow", "modality"]  # ct.dcm: as the server, relax the modality rule
        r = _infer(*args, "--out", tmp_path / run, "--retries", "1", "--retry-delay", "0.2", inputs)
        assert r.exit_code == 0, r.output
        records[run] = {s: json.loads((tmp_path / run / f"{s}.json").read_text()) for s in ("xray", "ct")}
    sent = {run: {s: (rec["sent"], rec["model"]) for s, rec in recs.items()} for run, recs in records.items()}
    assert sent["tensor"] == {"xray": ("tensor", "multimix"), "ct": ("tensor", "multimix")}
    assert (
        sent["bytes"]
        == sent["two-urls"]
        == {"xray": ("bytes", "multimix_image"), "ct": ("bytes", "multimix_image")}
    )
    assert sent["auto"] == {"xray": ("tensor", "multimix"), "ct": ("bytes", "multimix_image")}
    for run, recs in records.items():
        for stem, rec in recs.items():
            want = list(records["tensor"][stem]["probabilities"].values())
            np.testing.assert_allclose(list(rec["probabilities"].values()), want, rtol=1e-5, atol=1e-6)
            size = [rec["image"]["rows"], rec["image"]["columns"]]
            assert rec["original_size"] == (size if rec["sent"] == "bytes" else None), (run, stem)
    seg = pydicom.dcmread(tmp_path / "dicom" / "ct.seg.dcm")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (seg.Rows, seg.Columns) == (128, 128) and "model=multimix_image" in algorithm.AlgorithmParameters
    results = sorted((tmp_path / "dicom").iterdir())
    assert [p.name for p in results] == ["ct.sc.dcm", "ct.seg.dcm", "ct.sr.dcm"]
    r = _infer("--send", "bytes", "--model", "classifier", "--url", url, "--out", tmp_path / "no", inputs)
    assert r.exit_code == 2 and "--model classifier takes decoded images only" in r.output, r.output
    dicom_conformance(*results)


def test_infer_auto_sends_tensors_to_a_server_without_the_file_model(server, files, monkeypatch):
    """`--send auto` and a server that lacks the file model (a repository built before it): said
    once, then every file as a tensor; `--send bytes` fails naming the model."""
    from mmtrt.serving import client, infer

    monkeypatch.setitem(client.FILE_MODELS, "multimix", "multimix_files_absent")
    lines = []
    relaxed = frozenset({"modality"})
    results = infer.infer_files(
        [files["ct.dcm"]], Servers(server.http_url, say=lines.append), relaxed=relaxed
    )
    with pytest.raises(infer.InferError, match="model 'multimix_files_absent' is not ready"):
        infer.infer_files([files["ct.dcm"]], Servers(server.http_url), send="bytes", relaxed=relaxed)
    assert results[0].ok and results[0].served_size is None
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and "sending the DICOM files as decoded images to 'multimix'" in notes[0], lines


def test_load_generator_sends_files(server):
    """The load of `mmtrt bench`'s triton-bytes target: PNG files to multimix_image."""
    from mmtrt.bench.load import run_load
    from mmtrt.bench.runner import file_pool

    pool = file_pool(3, size=96)
    m = run_load("grpc", server.grpc_url, "multimix_image", pool, 2, 1, 1.0, outputs=("probs",), warmup=1)
    assert m.images_per_s > 0 and m.extra["failures"] == 0 and m.calls >= 1


# --------------------------------------------------------------------------- the repository


def test_repository_renders_the_limits_and_checks_the_decoder(repo, tmp_path, monkeypatch):
    """file_decoder's limits come from build_repository; validate_repository refuses a copy
    of mmtrt without the decoder modules, or where this Python lacks a library they need."""
    from mmtrt.serving import checks
    from mmtrt.serving.config import parse_config

    params = parse_config((repo / "file_decoder" / "config.pbtxt").read_text()).parameters
    assert params["max_image_bytes"].string_value == "2000000"
    assert params["max_image_pixels"].string_value == "4000000"
    assert params["gate_allow"].string_value == "modality"
    package = repo / "file_decoder" / "1" / checks.BACKEND_PACKAGE
    for module in ("decoded", "dicom", "images", "gate"):
        assert (package / f"{module}.py").read_bytes() == (
            ROOT / "mmtrt" / "data" / f"{module}.py"
        ).read_bytes()
    validate_repository(repo)
    broken = shutil.copytree(repo, tmp_path / "broken")
    (broken / "file_decoder" / "1" / checks.BACKEND_PACKAGE / "dicom.py").unlink()
    with pytest.raises(
        ServingError, match=r"file_decoder: its copy of mmtrt is incomplete: .* lacks dicom\.py"
    ):
        validate_repository(broken)
    monkeypatch.setattr(
        checks, "DECODER_REQUIREMENTS", (*checks.DECODER_REQUIREMENTS, ("mmtrt_absent", "absent-lib"))
    )
    with pytest.raises(ServingError, match="imports absent-lib, which this Python .* pip install absent-lib"):
        validate_repository(repo)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        ImageLimits(max_pixels=0)


# --------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^(mmtrt_[a-z_]+)\{([^}]*)\} (\S+)$")


def _mmtrt_metrics(page: str) -> dict[tuple, float]:
    """mmtrt's series on a metrics page: (name, sorted labels) -> value."""
    series = {}
    for line in page.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = tuple(sorted(tuple(kv.split("=", 1)) for kv in re.findall(r'\w+="[^"]*"', m.group(2))))
            series[(m.group(1), tuple((k, v.strip('"')) for k, v in labels))] = float(m.group(3))
    return series


def _delta(before, after, name, **labels) -> float:
    """How much the series ``name`` with (at least) ``labels`` moved, summed over the rest."""

    def total(series):
        return sum(
            v
            for (n, ls), v in series.items()
            if n == name and all((k, str(w)) in ls for k, w in labels.items())
        )

    return total(after) - total(before)


def test_served_models_publish_what_they_answer(server, files, refused_files):
    """The models' own metrics on Triton's metrics port move exactly as the requests sent imply:
    tensors to multimix (HTTP and gRPC), a NaN tensor (invalid), files to multimix_image with one
    refused by the gate, an undecodable file (invalid at the decoder)."""
    x = np.stack([load_image(files[n]) for n in ("xray.png", "xray.jpg", "xray16.png")])[:, None]
    before = _mmtrt_metrics(metrics_page(server))
    labels = []
    with client_for("http", server) as client:
        labels += client.infer("multimix", image_inputs(x), ("label",))["label"].ravel().tolist()
    with client_for("grpc", server) as client:
        labels += client.infer("multimix", image_inputs(x[:2]), ("label",))["label"].ravel().tolist()
        bad = x[:1].copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(RequestError):
            client.infer("multimix", image_inputs(bad))
        two = [files["xray.png"].read_bytes(), refused_files["lateral.dcm"].read_bytes()]
        got = client.infer(IMAGE_MODEL, file_inputs(two), ("label", ACCEPTED))
        labels += got["label"].ravel().tolist()[:1]
        with pytest.raises(RequestError):
            client.infer(IMAGE_MODEL, file_inputs([b"not an image at all"]))
    page = metrics_page(server)
    after = _mmtrt_metrics(page)
    assert got[ACCEPTED].ravel().tolist() == [True, False]
    mm, fd = {"model": "multimix"}, {"model": "file_decoder"}
    # multimix: 3 requests of tensors + the ensemble's one answered, the NaN one invalid
    assert _delta(before, after, "mmtrt_requests_total", outcome="answered", **mm) == 3
    assert _delta(before, after, "mmtrt_requests_total", outcome="invalid", **mm) == 1
    assert _delta(before, after, "mmtrt_images_total", outcome="answered", **mm) == 6
    assert _delta(before, after, "mmtrt_images_total", outcome="refused", **mm) == 1
    for k, name in enumerate(("NORMAL", "PNEUMONIA")):
        assert _delta(before, after, "mmtrt_predictions_total", label=name, **mm) == labels.count(k)
    assert _delta(before, after, "mmtrt_pneumonia_probability_count", **mm) == 6
    assert _delta(before, after, "mmtrt_lung_mask_fraction_count", **mm) == 6
    assert _delta(before, after, "mmtrt_pneumonia_probability_bucket", le="1", **mm) == 6
    # file_decoder: one request answered (one file refused by the gate), one invalid
    assert _delta(before, after, "mmtrt_requests_total", outcome="answered", **fd) == 1
    assert _delta(before, after, "mmtrt_requests_total", outcome="invalid", **fd) == 1
    assert _delta(before, after, "mmtrt_images_total", outcome="answered", **fd) == 1
    assert _delta(before, after, "mmtrt_images_total", outcome="refused", **fd) == 1
    assert _delta(before, after, "mmtrt_decode_seconds_count", **fd) == 2
    assert ("mmtrt_requests_total", (("model", "multimix"), ("outcome", "failed"), ("version", "1"))) in after
    # every series the Prometheus rules of deploy/monitoring/ read is on the real page (the
    # baseline gauges need a calibrated export: tests/evaluate/test_eval_served.py)
    names = set(re.findall(r"^(\w+)[{ ]", page, re.M))
    missing = {n for n in rule_series() if not n.startswith("mmtrt_baseline_")} - names
    assert not missing, missing


# --------------------------------------------------------------------------- the audit trail


def _audit_lines(audit_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (audit_dir / "multimix_0_0.jsonl").read_text().splitlines()]


def test_audit_trail_one_line_per_image(server, files, refused_files, audit_dir, tmp_path):
    """One JSON line per image answered or refused, over HTTP and gRPC, for tensors and files:
    the client's request id, model, version, the image's SOP Instance UID or sha256, outcome,
    gate verdict; `mmtrt infer` sends an id per request and records it; no patient data; 0600."""
    import hashlib

    x = np.stack([load_image(files[n]) for n in ("xray.png", "xray.jpg")])[:, None]
    before = len(_audit_lines(audit_dir)) if (audit_dir / "multimix_0_0.jsonl").exists() else 0
    with client_for("http", server) as client:
        client.infer("multimix", image_inputs(x), ("label",), request_id="audit-http-1")
    three = [files["xray.png"], refused_files["lateral.dcm"], files["ct.dcm"]]
    with client_for("grpc", server) as client:
        client.infer(
            IMAGE_MODEL, file_inputs([p.read_bytes() for p in three]), ("label",), request_id="audit-grpc-1"
        )
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main,
        [
            "infer",
            "--url",
            server.http_url,
            "--out",
            str(out),
            "--allow",
            "modality",
            str(files["xray.jpg"]),
            str(files["ct.dcm"]),
        ],
    )
    assert r.exit_code == 0, r.output
    lines = _audit_lines(audit_dir)[before:]
    assert len(lines) == 2 + 3 + 2, lines
    http, grpc, infer = lines[:2], lines[2:5], lines[5:]
    for line in lines:
        assert (line["model"], line["version"]) == ("multimix", "1") and "checkpoint_sha256" in line
        assert line["latency_ms"] > 0 and line["time"].endswith("+00:00")
    assert [line["request_id"] for line in http] == ["audit-http-1"] * 2
    assert [line["source"] for line in http] == [
        {"tensor_sha256": hashlib.sha256(x[k].tobytes()).hexdigest()} for k in range(2)
    ]
    assert [line["outcome"] for line in http] == ["answered"] * 2 and all(
        0 <= line["p_pneumonia"] <= 1 for line in http
    )
    # files through multimix_image: the PNG by its sha256, the DICOM files by their SOP Instance UID
    assert [line["request_id"] for line in grpc] == ["audit-grpc-1"] * 3
    assert grpc[0]["source"] == {"file_sha256": hashlib.sha256(three[0].read_bytes()).hexdigest()}
    assert grpc[1]["source"] == {"sop_instance_uid": pydicom.dcmread(three[1]).SOPInstanceUID}
    assert grpc[2]["source"] == {"sop_instance_uid": pydicom.dcmread(three[2]).SOPInstanceUID}
    assert [line["outcome"] for line in grpc] == ["answered", "refused", "answered"]
    assert (
        grpc[1]["gate"] == {"accepted": False, "reason": REFUSED["lateral.dcm"][1]} and "label" not in grpc[1]
    )
    # mmtrt infer: one id per request, recorded in each image's JSON
    recorded = {
        json.loads((out / f"{stem}.json").read_text())["server"]["request_id"] for stem in ("xray", "ct")
    }
    assert {line["request_id"] for line in infer} == recorded and all(len(i) == 32 for i in recorded)
    text = (audit_dir / "multimix_0_0.jsonl").read_text()
    for patient in ("Test^Synthetic", "SYN-0001", "19700101", "CompressedSamples"):
        assert patient not in text
    assert (audit_dir.stat().st_mode & 0o777, (audit_dir / "multimix_0_0.jsonl").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )


def test_audit_trail_bounds_what_a_client_claims(server, files, audit_dir):
    """multimix's optional inputs can come from any client: a `source` that is not what
    file_decoder writes is answered and recorded only as a bounded claim."""
    x = load_image(files["xray.png"])[None, None]
    claim = np.array([[b"not json " * 200]], dtype=np.object_)
    with client_for("http", server) as client:
        got = client.infer("multimix", {"image": x, "source": claim}, ("label",), request_id="audit-claim")
    assert got["label"].shape == (1, 1)
    (line,) = [line for line in _audit_lines(audit_dir) if line["request_id"] == "audit-claim"]
    assert line["source"] == {"claimed": ("not json " * 200)[:512]} and line["outcome"] == "answered"
