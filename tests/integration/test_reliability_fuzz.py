"""Hostile input, generated deterministically from a seed, against the live server (HTTP and gRPC)
and against the image loader and `mmtrt infer`: every case gets a clear error or a correct
answer (equal to onnxruntime in-process on the same input), never a crash, a hang or a silent
wrong answer; the number of cases tried is printed (run with -s).

- request tensors through tritonclient: data types, shapes, NaN/Inf, huge and tiny values,
  empty and oversized batches, oversized payloads, wrong names, models and outputs;
- raw requests below tritonclient: malformed JSON, lying binary-size headers, random bodies,
  compressed bodies (HTTP); inconsistent shapes and contents (gRPC protobuf);
- image files: truncated and corrupted PNG/JPEG, decompression bombs (a PNG header claiming
  100000 x 100000, a real 10000 x 10000 zlib bomb...), non-images, 16-bit, RGB/RGBA/palette/CMYK,
  EXIF rotation, tiny and huge sizes, through `load_image` and `mmtrt infer`.

Two single requests abort tritonserver 2.51 itself (defects of its HTTP front end, documented in
model_repository/README.md): a JSON tensor whose shape claims ~2^56 elements (std::bad_alloc)
and ~100000 levels of nested JSON (stack overflow). They are kept out of the random cases here
and sent (mmtrt.bench.http_abort.CRASHERS) in tests/integration/test_reliability_serving.py, where
`mmtrt serve`'s watchdog restarts the server after each.

This module talks to the server below mmtrt's client on purpose (the one exception to "only
mmtrt.serving.client imports tritonclient", with the plain-HTTP requests of helpers.post_infer): it
builds requests that client never sends (a declared data type other than the data's, JSON instead
of the binary format, model versions, extra inputs) with tritonclient, and raw gRPC protobuf
messages.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import re
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import MAX_BATCH, needs_server, ort_session, png_header_only
from PIL import Image

from mmtrt.cli import main
from mmtrt.data import DataError, load_image, synth_xray

SEED = 20251126
CASE_LIMIT_S = 30.0  # per case: a case that takes longer counts as a hang
FIGURES: dict[str, int] = {}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ort_ref(export_dir):
    return {
        "multimix": ort_session(export_dir / "multimix.onnx"),
        "classifier": ort_session(export_dir / "encoder.onnx"),
    }


# --------------------------------------------------------------------------- tensor cases


@dataclass
class Case:
    id: str
    protocol: str  # http | grpc | raw-http | raw-grpc
    send: Callable  # (server) -> ("ok", outputs dict) | ("error", message)
    expect: str  # "ok" (a correct answer), "error", "ok-or-error"
    words: tuple[str, ...] = ()  # an error must contain one of these (case-insensitive)
    x: np.ndarray | None = None  # the input, to compute the correct answer
    model: str = "multimix"
    notes: list = field(default_factory=list)
    invalid: bool = False  # a fault of the request: its error must be HTTP 400 / gRPC INVALID_ARGUMENT


def _clients(server):
    # tritonclient itself, not mmtrt's client: see the module docstring
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    return {
        "http": (
            httpclient,
            httpclient.InferenceServerClient(
                server.http_url, connection_timeout=CASE_LIMIT_S, network_timeout=CASE_LIMIT_S
            ),
        ),
        "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url)),
    }


def _tensor_send(
    protocol,
    arr,
    *,
    datatype=None,
    name="image",
    model="multimix",
    outputs=None,
    extra=None,
    binary=True,
    version="",
):
    """A request made with tritonclient, which serialises ``arr`` with the declared shape."""

    def send(clients):
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        module, client = clients[protocol]
        dt = datatype or np_to_triton_dtype(arr.dtype)
        inp = module.InferInput(name, list(arr.shape), dt)
        if protocol == "http":
            inp.set_data_from_numpy(arr, binary_data=binary)
        else:
            inp.set_data_from_numpy(arr)
        inputs = [inp]
        for extra_name, extra_arr in extra or []:
            e = module.InferInput(extra_name, list(extra_arr.shape), np_to_triton_dtype(extra_arr.dtype))
            e.set_data_from_numpy(extra_arr)
            inputs.append(e)
        outs = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
        kwargs = {"client_timeout": CASE_LIMIT_S} if protocol == "grpc" else {}
        try:
            r = client.infer(model, inputs, outputs=outs, model_version=version, **kwargs)
        except InferenceServerException as e:
            return "error", str(e)
        names = outputs or (
            ["probs", "label", "mask", "saliency"] if model == "multimix" else ["probs", "label"]
        )
        return "ok", {n: r.as_numpy(n) for n in names}

    return send


# Faults of the request itself: answered as invalid input (HTTP 400, gRPC INVALID_ARGUMENT), by
# model.py (TritonError.INVALID_ARG) or by Triton's own checks, never as a server error.
INVALID_INPUT_KINDS = {
    "extreme-values",  # when refused: outputs not finite for this input
    "non-finite",
    "dtype",
    "dtype-bytes",
    "dtype-bf16-declared",
    "shape",
    "batch-too-big",
    "payload-16MB",
    "payload-64MB",
}
INVALID_STATUS = re.compile(r"^\[(400|StatusCode\.INVALID_ARGUMENT)\] ")


def _images(rng, n, low=0.0, high=1.0):
    return (low + (high - low) * rng.random((n, 1, 256, 256))).astype(np.float32)


def tensor_cases(rng: np.random.Generator) -> list[Case]:
    cases: list[Case] = []
    protocols = ("http", "grpc")

    def add(kind, protocol, arr, expect, words=(), **kw):
        model = kw.get("model", "multimix")
        cases.append(
            Case(
                f"{kind}#{len(cases)}-{protocol}",
                protocol,
                _tensor_send(protocol, arr, **kw),
                expect,
                words,
                x=arr if expect != "error" else None,
                model=model,
                invalid=kind in INVALID_INPUT_KINDS,
            )
        )

    # finite but hostile values: a correct answer, or (overflow inside the graph) an error
    for k, value in enumerate((1e30, -1e30, 3.4e38, -3.4e38, 1e-45, -0.0, 255.0, 65535.0)):
        x = np.full((1, 1, 256, 256), value, np.float32)
        x[0, 0, rng.integers(0, 256, 64), rng.integers(0, 256, 64)] = 0.0
        add("extreme-values", protocols[k % 2], x, "ok-or-error", ("not finite",))
    add("constant-0", "http", np.zeros((1, 1, 256, 256), np.float32), "ok")
    add("constant-1", "grpc", np.ones((1, 1, 256, 256), np.float32), "ok")
    add("valid-json", "http", _images(rng, 1), "ok", binary=False)
    for p in protocols:
        # valid images (batched serving is tested in test_serving): a correct answer
        add("valid", p, _images(rng, int(rng.integers(1, 3))), "ok")
        add("valid-classifier", p, _images(rng, int(rng.integers(1, 3))), "ok", model="classifier")
        # non-finite values at random places, in random numbers: rejected by model.py
        for special in (np.nan, np.inf, -np.inf):
            for _ in range(6):
                x = _images(rng, int(rng.integers(1, 3)))
                k = int(rng.integers(1, 50))
                flat = x.reshape(-1)
                flat[rng.choice(flat.size, size=k, replace=False)] = special
                add(
                    "non-finite",
                    p,
                    x,
                    "error",
                    ("non-finite",),
                    model=str(rng.choice(["multimix", "classifier"])),
                )
        # wrong data types, right shape
        for dt in (
            "float16",
            "float64",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "bool",
        ):
            x = (_images(rng, 1) * 255).astype(dt)
            add("dtype", p, x, "error", ("data-type", "datatype", "data type"))
        add(
            "dtype-bytes",
            p,
            np.array([b"\x00" * 16, b"abc"], dtype=np.object_).reshape(2, 1),
            "error",
            ("data-type", "datatype", "data type", "shape"),
        )
        add(
            "dtype-bf16-declared",
            p,
            _images(rng, 1),
            "error",
            ("data-type", "datatype", "data type", "byte size"),
            datatype="BF16",
        )
        # wrong shapes
        shapes = [
            (),
            (256,),
            (256, 256),
            (1, 256, 256),
            (1, 1, 1, 256, 256),
            (1, 3, 256, 256),
            (2, 2, 256, 256),
            (1, 1, 255, 256),
            (1, 1, 256, 257),
            (1, 1, 1, 1),
            (1, 1, 512, 512),
            (0, 1, 256, 256),
            (1, 1, 0, 256),
            (1, 0, 256, 256),
        ]
        for _ in range(12):
            shapes.append((int(rng.integers(1, 4)), 1, int(rng.integers(1, 300)), int(rng.integers(1, 300))))
        for shape in shapes:
            x = rng.random(shape).astype(np.float32) if shape else np.float32(0.5).reshape(())
            add(
                "shape",
                p,
                np.asarray(x),
                "error",
                ("shape", "byte size", "batch", "dims", "dimension", "size"),
            )
        # oversized batches and payloads
        for n in sorted({MAX_BATCH + 1, int(rng.integers(MAX_BATCH + 2, 17)), 32}):
            add("batch-too-big", p, _images(rng, n), "error", ("batch",))
        add("payload-16MB", p, rng.random((1, 1, 2048, 2048)).astype(np.float32), "error", ("shape",))
        add("payload-64MB", p, np.zeros((1, 1, 4096, 4096), np.float32), "error", ("shape",))
        # names, extra inputs, models, versions, outputs
        for name in ("img", "", "IMAGE", "image ", "изображение"):
            add("input-name", p, _images(rng, 1), "error", ("input", "image", "name"), name=name)
        # Triton quotes the name in its error; over gRPC a 10-kB message exceeds the client's
        # 8-kB metadata limit and the client may report that instead
        add(
            "input-name-10kB",
            p,
            _images(rng, 1),
            "error",
            ("input", "metadata size exceeds"),
            name="x" * 10_000,
        )
        # Triton reads names as C strings: "image\0..." is "image", answered as such
        add("input-name-nul", p, _images(rng, 1), "ok-or-error", ("input",), name="image\x00junk")
        add(
            "extra-input",
            p,
            _images(rng, 1),
            "error",
            ("input", "expected 1"),
            extra=[("mask", np.zeros((1, 1, 256, 256), np.float32))],
        )
        add(
            "duplicate-input",
            p,
            _images(rng, 1),
            "error",
            ("input", "image", "duplicate", "twice"),
            extra=[("image", _images(rng, 1))],
        )
        for model in ("nope", "multimix/../classifier", "MULTIMIX", "../../etc/passwd", "a" * 5000):
            add(
                "model",
                p,
                _images(rng, 1),
                "error",
                ("model", "not found", "unknown", "not allowed"),
                model=model,
            )
        for version in ("2", "-1", "999999999999", "abc"):
            add("version", p, _images(rng, 1), "error", ("version", "model", "not found"), version=version)
        for outputs in (["nope"], ["probs", "nope"], ["skip1"]):
            add("output", p, _images(rng, 1), "error", ("output",), outputs=outputs)
    add("output-subset", "grpc", _images(rng, 1), "ok", outputs=["mask"])
    rng.shuffle(cases)
    return cases


# --------------------------------------------------------------------------- raw HTTP cases


def _raw_http_send(body: bytes, headers: dict | None = None, path="/v2/models/multimix/infer", method="POST"):
    def send(server):
        host, port = server.http_url.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=CASE_LIMIT_S)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            return "no-response", f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        if r.status == 200:
            return "ok", data
        try:
            message = json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            message = data.decode("utf-8", "replace")
        return "error", f"HTTP {r.status}: {message}"

    return send


def _binary_body(shape, data: bytes, *, size=None, datatype="FP32", header_len=None, extra=None):
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data) if size is None else size},
            }
        ]
    }
    header.update(extra or {})
    h = json.dumps(header).encode()
    return h + data, {
        "Inference-Header-Content-Length": str(len(h) if header_len is None else header_len),
        "Content-Type": "application/octet-stream",
    }


def raw_http_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    one = np.zeros((1, 1, 256, 256), np.float32).tobytes()

    def add(kind, body, headers=None, expect="error", words=(), **kw):
        cases.append(
            Case(
                f"{kind}#{len(cases)}-raw-http",
                "raw-http",
                _raw_http_send(body, headers, **kw),
                expect,
                words,
            )
        )

    # malformed / wrong JSON
    for body in (
        b"",
        b"{",
        b"null",
        b"[]",
        b"{}",
        b'{"inputs":"x"}',
        b'{"inputs":[{}]}',
        b'{"inputs":[{"name":"image"}]}',
        b'{"inputs":[1,2,3]}',
        b"\xff\xfe\x00",
        b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32"}]}',
        b'{"inputs":[{"name":"image","shape":"1,1,256,256","datatype":"FP32","data":[0]}]}',
        b'{"inputs":[{"name":"image","shape":[-1,1,256,256],"datatype":"FP32","data":[0]}]}',
        b'{"inputs":[{"name":"image","shape":[1.5,1,256,256],"datatype":"FP32","data":[0]}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,1,1],"datatype":"FP32","data":[NaN]}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,1,1],"datatype":"FP32","data":[1e999]}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":[0,1]}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":"abc"}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"NOPE","data":[0]}]}',
        b'{"inputs":[{"name":"image","shape":[4611686018427387904,4611686018427387904,256,256],'
        b'"datatype":"FP32","data":[0]}]}',
        b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32","data":[0]}],'
        b'"parameters":{"binary_data_output":"yes","priority":-5,"timeout":-1}}',
    ):
        add("json", body)
    # nesting: moderate depths only (100000 levels abort Triton 2.51, see the module docstring)
    for depth in (10, 100, 1000):
        add(
            "json-nesting",
            b'{"inputs":[{"name":"image","shape":[1,1,256,256],"datatype":"FP32",'
            b'"data":' + b"[" * depth + b"0" + b"]" * depth + b"}]}",
        )
    # a valid JSON tensor (no binary extension): the right answer
    x = np.random.default_rng(int(rng.integers(1 << 30))).random((1, 1, 256, 256)).astype(np.float32)
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 1, 256, 256], "datatype": "FP32", "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "probs"}],
        }
    ).encode()
    cases.append(Case(f"json-valid#{len(cases)}-raw-http", "raw-http", _raw_http_send(body), "ok", x=x))
    # binary tensor extension: lies about sizes
    add("binary-ok", *_binary_body([1, 1, 256, 256], one), expect="ok")
    add("binary-short", *_binary_body([1, 1, 256, 256], one[:1000]), words=("size",))
    add("binary-size-lie", *_binary_body([1, 1, 256, 256], one, size=10**12), words=("size", "expecting"))
    add("binary-size-neg", *_binary_body([1, 1, 256, 256], one, size=-1), words=("size", "parse"))
    add("header-len-lie", *_binary_body([1, 1, 256, 256], one, header_len=10**9), words=("header",))
    add("header-len-neg", *_binary_body([1, 1, 256, 256], one, header_len=-5), words=("header",))
    add("header-len-zero", *_binary_body([1, 1, 256, 256], one, header_len=0))
    add("header-len-text", _binary_body([1, 1, 256, 256], one)[0], {"Inference-Header-Content-Length": "abc"})
    add("binary-huge-shape", *_binary_body([2**31, 1, 256, 256], one), words=("size", "shape"))
    add("binary-64MB-big-shape", *_binary_body([1, 1, 4096, 4096], bytes(64 << 20)), words=("shape",))
    add("binary-64MB-small-shape", *_binary_body([1, 1, 256, 256], bytes(64 << 20)), words=("size",))
    add(
        "binary-nan",
        *_binary_body([1, 1, 256, 256], np.full((1, 1, 256, 256), np.nan, np.float32).tobytes()),
        words=("non-finite",),
    )
    add(
        "binary-fp16-declared",
        *_binary_body([1, 1, 256, 256], one[: len(one) // 2], datatype="FP16"),
        words=("data-type",),
    )
    # compressed bodies: a valid one is answered; a small "zip bomb" (16 MB of zeros after the
    # tensor) is refused (Triton inflates it in memory: see README for the limits a proxy sets)
    valid, headers = _binary_body([1, 1, 256, 256], one)
    add("gzip-valid", gzip.compress(valid), {**headers, "Content-Encoding": "gzip"}, expect="ok")
    add("deflate-valid", zlib.compress(valid), {**headers, "Content-Encoding": "deflate"}, expect="ok")
    add(
        "gzip-bomb-16MB",
        gzip.compress(valid + bytes(16 << 20), 9),
        {**headers, "Content-Encoding": "gzip"},
        words=("additional", "size"),
    )
    add(
        "gzip-garbage",
        b"\x1f\x8b" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)),
        {**headers, "Content-Encoding": "gzip"},
    )
    add("encoding-unknown", valid, {**headers, "Content-Encoding": "br"}, expect="ok-or-error")
    # random bodies, with and without the binary header
    for _ in range(30):
        body = bytes(rng.integers(0, 256, int(rng.integers(1, 300_000)), dtype=np.uint8))
        hdrs = (
            {"Inference-Header-Content-Length": str(int(rng.integers(0, len(body) + 10)))}
            if rng.random() < 0.5
            else {}
        )
        add("random-body", body, hdrs)
    # paths and methods
    for path in (
        "/v2/models/../../../etc/passwd/infer",
        "/v2/models/multimix/versions/9/infer",
        "/v2/models/%00/infer",
        "/v2/models/" + "a" * 8000 + "/infer",
        "/v2/repository/models/multimix/load",
        "/v2/repository/models/multimix/unload",
    ):
        add("path", b"{}", path=path)
    add("method-get", b"", method="GET")
    add("method-put", b"{}", method="PUT")
    return cases


# --------------------------------------------------------------------------- raw gRPC cases


def _grpc_send(build):
    def send(server):
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        channel = grpc.insecure_channel(
            server.grpc_url,
            options=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
            ],
        )
        try:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            r = stub.ModelInfer(build(), timeout=CASE_LIMIT_S)
        except grpc.RpcError as e:
            return "error", f"{e.code()}: {e.details()}"
        finally:
            channel.close()
        return "ok", {o.name: o for o in r.outputs}

    return send


def raw_grpc_cases(rng: np.random.Generator) -> list[Case]:
    from tritonclient.grpc import service_pb2

    cases = []
    one = np.zeros((1, 1, 256, 256), np.float32).tobytes()

    def request(
        shape,
        raw=None,
        datatype="FP32",
        fp32=None,
        name="image",
        model="multimix",
        n_raw=1,
        int_contents=None,
    ):
        def build():
            r = service_pb2.ModelInferRequest(model_name=model)
            i = r.inputs.add()
            i.name, i.datatype = name, datatype
            i.shape.extend(shape)
            if fp32 is not None:
                i.contents.fp32_contents.extend(fp32)
            if int_contents is not None:
                i.contents.int_contents.extend(int_contents)
            if raw is not None:
                for _ in range(n_raw):
                    r.raw_input_contents.append(raw)
            return r

        return build

    def add(kind, build, expect="error", words=()):
        cases.append(Case(f"{kind}#{len(cases)}-raw-grpc", "raw-grpc", _grpc_send(build), expect, words))

    add("raw-ok", request([1, 1, 256, 256], one), expect="ok")
    add("raw-two-copies", request([1, 1, 256, 256], one, n_raw=2), expect="ok-or-error")
    for shape in (
        [2**40, 1, 256, 256],
        [-1, 1, 256, 256],
        [2**62, 2**62, 256, 256],
        [0, 1, 256, 256],
        [1, 1, 256],
        [1, 1, 256, 256, 1],
        [],
        [1, 1, -256, -256],
    ):
        add("raw-shape", request(shape, one), words=("shape", "size", "expected"))
    for n in (10, 1000, 65535, 65537):
        add("contents-length", request([1, 1, 256, 256], fp32=[0.5] * n), words=("size",))
    add("contents-valid", request([1, 1, 256, 256], fp32=[0.25] * 65536), expect="ok")
    add("contents-nan", request([1, 1, 256, 256], fp32=[float("nan")] * 65536), words=("non-finite",))
    add("contents-huge-shape", request([2**40, 1, 256, 256], fp32=[0.0] * 10), words=("size",))
    add("contents-and-raw", request([1, 1, 256, 256], one, fp32=[0.0]), words=("contents",))
    add(
        "contents-wrong-type",
        request([1, 1, 256, 256], int_contents=[1] * 65536),
        words=("size", "contents", "datatype", "data-type"),
    )
    add("no-inputs", lambda: service_pb2.ModelInferRequest(model_name="multimix"), words=("input",))
    for dt in ("FP33", "", "BYTES", "INT8", "fp32"):
        add("datatype", request([1, 1, 256, 256], one, datatype=dt), words=("data-type", "size"))
    for model in ("", "nope", "multimi", "multimix/1"):
        add("model", request([1, 1, 256, 256], one, model=model), words=("model", "not found"))
    # a C string again: "multimix\0junk" is "multimix"
    add(
        "model-nul",
        request([1, 1, 256, 256], one, model="multimix\x00junk"),
        expect="ok-or-error",
        words=("model",),
    )
    for _ in range(10):
        size = int(rng.integers(0, 600_000))
        add(
            "raw-random",
            request([1, 1, 256, 256], bytes(rng.integers(0, 256, size, dtype=np.uint8))),
            expect="ok-or-error",
            words=("size", "non-finite", "not finite"),
        )
    return cases


# --------------------------------------------------------------------------- judging


def _correct(outputs: dict, x: np.ndarray, model: str, ort_ref) -> str | None:
    """None if ``outputs`` are what onnxruntime computes for ``x``, else what differs."""
    if model == "multimix":
        want = dict(
            zip(
                ("probs", "mask", "saliency"),
                ort_ref["multimix"].run(["probs", "mask", "saliency"], {"image": x}),
            )
        )
    else:
        want = {"probs": ort_ref["classifier"].run(["probs"], {"image": x})[0]}
    for name, got in outputs.items():
        if name == "label":
            if not np.array_equal(got[:, 0], want["probs"].argmax(axis=1)):
                return "label differs"
            continue
        if not isinstance(got, np.ndarray) or not np.all(np.isfinite(got)):
            return f"{name} not finite"
        if not np.allclose(got, want[name], rtol=1e-4, atol=1e-4):
            return f"{name} differs by {float(np.abs(got - want[name]).max()):.3g}"
    return None


def _judge(case: Case, outcome: str, payload, elapsed: float, ort_ref) -> str | None:
    """None when the case got what it may get; else the problem."""
    if elapsed > CASE_LIMIT_S:
        return f"took {elapsed:.1f} s (limit {CASE_LIMIT_S} s)"
    if outcome == "no-response":
        return f"no response: {payload}"
    if outcome == "error":
        if case.expect == "ok":
            return f"error instead of an answer: {payload}"
        text = str(payload).strip()
        if len(text) < 10:
            return f"unclear error {text!r}"
        if case.words and not any(w.lower() in text.lower() for w in case.words):
            return f"error does not say what is wrong (wanted one of {case.words}): {text[:300]}"
        if case.invalid and not INVALID_STATUS.match(text):
            return (
                f"a fault of the request not answered as invalid input (400 / INVALID_ARGUMENT): {text[:200]}"
            )
        return None
    if case.expect == "error":
        return "answered a request that should have been refused"
    if case.x is not None and isinstance(payload, dict):
        if case.protocol == "raw-grpc":
            return None
        return _correct(payload, case.x, case.model, ort_ref)
    if case.protocol == "raw-http" and case.x is not None:
        probs = np.asarray(json.loads(payload)["outputs"][0]["data"], np.float32).reshape(1, 2)
        return _correct({"probs": probs}, case.x, "multimix", ort_ref)
    return None


def _good_request_is_right(server, ort_ref) -> None:
    clients = _clients(server)
    try:
        x = np.random.default_rng(7).random((2, 1, 256, 256)).astype(np.float32)
        for protocol in ("http", "grpc"):
            outcome, out = _tensor_send(protocol, x)(clients)
            assert outcome == "ok", out
            assert _correct(out, x, "multimix", ort_ref) is None
    finally:
        for _, c in clients.values():
            c.close()


# --------------------------------------------------------------------------- the tests


@needs_server
def test_fuzz_requests(server, ort_ref):
    rng = np.random.default_rng(SEED)
    cases = tensor_cases(rng) + raw_http_cases(rng) + raw_grpc_cases(rng)
    clients = _clients(server)
    problems, tally, slowest = [], {"answered correctly": 0, "clear error": 0}, (0.0, "")
    by_protocol: dict[str, int] = {}
    t_all = time.monotonic()
    try:
        for case in cases:
            t0 = time.monotonic()
            try:
                if case.protocol in ("http", "grpc"):
                    outcome, payload = case.send(clients)
                else:
                    outcome, payload = case.send(server)
            except Exception as e:  # noqa: BLE001 - a client-side surprise is a finding too
                outcome, payload = "no-response", f"{type(e).__name__}: {e}"
            elapsed = time.monotonic() - t0
            slowest = max(slowest, (elapsed, case.id))
            problem = _judge(case, outcome, payload, elapsed, ort_ref)
            if problem is None and outcome == "ok" and case.expect == "ok-or-error" and case.x is not None:
                problem = _correct(payload, case.x, case.model, ort_ref)
            if problem:
                problems.append(f"{case.id}: {problem}")
            else:
                tally["answered correctly" if outcome == "ok" else "clear error"] += 1
            by_protocol[case.protocol] = by_protocol.get(case.protocol, 0) + 1
            if not server.is_running():
                problems.append(f"{case.id}: the server died")
                break
    finally:
        for _, c in clients.values():
            c.close()
    FIGURES["request cases"] = len(cases)
    print(
        f"\nfuzz over requests, seed {SEED}: {len(cases)} cases "
        f"({', '.join(f'{k} {v}' for k, v in sorted(by_protocol.items()))}) in "
        f"{time.monotonic() - t_all:.1f} s: {tally['answered correctly']} answered correctly, "
        f"{tally['clear error']} clear errors, {len(problems)} problems; slowest "
        f"{slowest[0]:.2f} s ({slowest[1]})"
    )
    assert not problems, "\n".join(problems[:30])
    assert len(cases) >= 300
    assert server.is_running() and server.dead_stubs() == []
    _good_request_is_right(server, ort_ref)


# --------------------------------------------------------------------------- image files


def png_zlib_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a valid 8-bit grey PNG of zeros, deflated (~1000:1)."""
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    chunks = []
    block = row * max(1, (1 << 22) // len(row))
    rows_per_block = len(block) // len(row)
    left = height
    while left > 0:
        n = min(rows_per_block, left)
        chunks.append(comp.compress(block[: n * len(row)]))
        left -= n
    chunks.append(comp.flush())
    return png_header_only(width, height, b"".join(chunks))


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_cases(rng: np.random.Generator) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, "ok" | "error") - each an image file a user may hand `mmtrt infer`."""
    xray = synth_xray(3, label=1)[0]
    grey = Image.fromarray(xray)
    cases = []

    def ok(name, data):
        cases.append((name, data, "ok"))

    def bad(name, data):
        cases.append((name, data, "error"))

    png, jpg = _save(grey, "PNG"), _save(grey.convert("RGB"), "JPEG", quality=90)
    ok("grey.png", png)
    ok("rgb.png", _save(grey.convert("RGB"), "PNG"))
    rgba = grey.convert("RGBA")
    rgba.putalpha(Image.fromarray((rng.random(xray.shape) * 255).astype(np.uint8)))
    ok("rgba.png", _save(rgba, "PNG"))
    ok("la.png", _save(grey.convert("LA"), "PNG"))
    ok("palette.png", _save(grey.convert("P"), "PNG"))
    ok("onebit.png", _save(grey.convert("1"), "PNG"))
    ok("sixteen.png", _save(Image.fromarray(xray.astype(np.uint16) * 257), "PNG"))
    ok("grey.jpg", _save(grey, "JPEG"))
    ok("rgb.jpg", jpg)
    ok("cmyk.jpg", _save(grey.convert("CMYK"), "JPEG"))
    ok("progressive.jpg", _save(grey, "JPEG", progressive=True))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    ok("exif-rotated.jpg", _save(grey.resize((200, 300)), "JPEG", exif=exif))
    ok("grey.bmp", _save(grey, "BMP"))
    frames = [grey, grey.transpose(Image.FLIP_LEFT_RIGHT)]
    ok("animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    ok("grey.tif", _save(grey, "TIFF"))
    ok("sixteen.tif", _save(Image.fromarray(xray.astype(np.uint16) * 257), "TIFF"))
    ok("int32.tif", _save(Image.fromarray(xray.astype(np.int32) * 300), "TIFF"))
    ok("png-named.jpg", png)  # wrong extension: read by content
    for w, h in ((2, 3), (1, 1000), (1000, 1), (257, 255), (6000, 6000)):
        ok(f"size-{w}x{h}.png", _save(grey.resize((w, h)), "PNG"))
    bad("size-1x1.png", _save(grey.resize((1, 1)), "PNG"))  # one pixel: no contrast
    # not supported / not images
    bad("float32.tif", _save(Image.fromarray(xray.astype(np.float32) / 255), "TIFF"))
    bad("empty.png", b"")
    bad("text.png", b"this is not an image\n" * 10)
    bad("html.jpg", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>")
    bad("pdf.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    bad("zip.png", b"PK\x03\x04" + bytes(200))
    bad("elf.png", b"\x7fELF\x02\x01\x01" + bytes(100))
    bad("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="1e9" height="1e9"></svg>')
    bad("pickle.png", b"\x80\x04\x95\x00\x00cos\nsystem\n(S'echo pwned'\ntR.")
    for k in range(4):
        bad(f"random-{k}.png", bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8)))
    # truncated and corrupted
    for frac in (0.1, 0.5, 0.9, 0.99):
        bad(f"truncated-{int(frac * 100)}.png", png[: int(len(png) * frac)])
    for frac in (0.05, 0.3):
        bad(f"truncated-{int(frac * 100)}.jpg", jpg[: int(len(jpg) * frac)])
    bad("signature-only.png", png[:8])
    corrupt = bytearray(png)
    idat = corrupt.find(b"IDAT")
    for _ in range(3):
        corrupt[idat + 8 + int(rng.integers(0, 200))] ^= 0xFF
    bad("crc-error.png", bytes(corrupt))
    # decompression bombs: headers that claim a huge image (no pixels behind them), and a real
    # zlib bomb just above Pillow's limit (89.5 Mpx; between it and twice it Pillow only warns)
    bad("bomb-header-100000x100000.png", png_header_only(100_000, 100_000))
    gif = bytearray(_save(grey.convert("P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen claims 65535 x 65535
    bad("bomb-header-65535x65535.gif", bytes(gif))
    bad("bomb-10000x10000.png", png_zlib_bomb(10_000, 10_000))  # real: 100 Mpx in ~100 kB
    jpeg_big = bytearray(jpg)
    sof = jpeg_big.find(b"\xff\xc0")
    jpeg_big[sof + 5 : sof + 9] = struct.pack(">HH", 65500, 65500)
    bad("bomb-header-65500x65500.jpg", bytes(jpeg_big))
    return cases


@pytest.fixture(scope="module")
def image_files() -> list[tuple[str, bytes, str]]:
    return image_cases(np.random.default_rng(SEED + 1))


def test_fuzz_image_files(tmp_path, image_files):
    cases = image_files
    problems, n_ok, n_err = [], 0, 0
    t_all = time.monotonic()
    for name, data, expect in cases:
        path = tmp_path / name
        path.write_bytes(data)
        t0 = time.monotonic()
        try:
            arr = load_image(path)
            outcome, detail = "ok", arr
        except DataError as e:
            outcome, detail = "error", str(e)
        except Exception as e:  # noqa: BLE001 - anything but DataError is a finding
            problems.append(f"{name}: {type(e).__name__} instead of DataError: {e}")
            continue
        elapsed = time.monotonic() - t0
        if elapsed > CASE_LIMIT_S:
            problems.append(f"{name}: took {elapsed:.1f} s")
        if outcome == "ok":
            n_ok += 1
            if (
                arr.shape != (256, 256)
                or arr.dtype != np.float32
                or not np.isfinite(arr).all()
                or arr.min() < 0
                or arr.max() > 1
            ):
                problems.append(f"{name}: bad array {arr.shape} {arr.dtype} [{arr.min()}, {arr.max()}]")
            if expect == "error":
                problems.append(f"{name}: loaded, expected a DataError")
        else:
            n_err += 1
            if not detail.startswith(f"{path}: "):
                problems.append(f"{name}: the error does not start with the path: {detail}")
            if expect == "ok":
                problems.append(f"{name}: {detail}")
            if name.startswith("bomb") and "decompression bomb" not in detail:
                problems.append(f"{name}: not reported as a bomb: {detail}")
    FIGURES["image files"] = len(cases)
    print(
        f"\nfuzz over image files, seed {SEED + 1}: {len(cases)} files in "
        f"{time.monotonic() - t_all:.1f} s: {n_ok} loaded, {n_err} clear DataErrors, "
        f"{len(problems)} problems"
    )
    assert not problems, "\n".join(problems)


@needs_server
def test_fuzz_image_files_through_infer(server, tmp_path, image_files):
    """The hostile files (and a few good ones) through `mmtrt infer`: each bad file is reported
    with its path, the good ones get their JSON, no traceback, exit status 1."""
    cases = image_files
    good = [c for c in cases if c[2] == "ok"][:4]
    bad = [c for c in cases if c[2] == "error"]
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data, _ in good + bad:
        (folder / name).write_bytes(data)
    files = [folder / name for name, _, _ in good + bad]
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = CliRunner().invoke(
        main, ["infer", "--url", server.grpc_url, "--protocol", "grpc", "--out", str(out), *map(str, files)]
    )
    elapsed = time.monotonic() - t0
    print(f"\nmmtrt infer over {len(files)} hostile/good files: {elapsed:.1f} s, exit {r.exit_code}")
    assert isinstance(r.exception, SystemExit) and r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    for name, _, _ in bad:
        assert f"{folder / name}: " in r.stderr, name
    assert f"{len(bad)} of {len(files)} image(s) failed" in r.stderr
    for name, _, _ in good:
        assert (out / f"{Path(name).stem}.json").is_file(), name
    FIGURES["files through mmtrt infer"] = len(files)


def test_fuzz_figures():
    """The counts of the tests above (run with -s)."""
    if FIGURES:
        print(
            "\nhostile cases tried: "
            + ", ".join(f"{k} {v}" for k, v in FIGURES.items())
            + f"; total {sum(v for k, v in FIGURES.items() if k != 'files through mmtrt infer')}"
        )
