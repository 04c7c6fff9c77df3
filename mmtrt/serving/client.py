"""Talking to Triton: the one module of mmtrt that imports tritonclient.

- :class:`TritonClient`: one connection to one server over HTTP or gRPC (headers and TLS passed
  through to tritonclient): readiness, model metadata, statistics, and :meth:`~TritonClient.infer`
  of named numpy arrays, the one request builder (:func:`image_inputs` for decoded images,
  :func:`file_inputs` for image files as BYTES, any other array as its own data type).
  tritonclient's errors come out as :class:`~mmtrt.serving.errors.RequestError`.
- :class:`Servers`: the scheduler over N servers, N = 1 included. :meth:`~Servers.first_ready`
  waits for a ready server; a :class:`Session` (one per thread) sends each request to the next
  usable server and, when it fails transiently, to the next one; :meth:`~Servers.map` sends
  each of a list of jobs exactly once, on one thread per server.
- :func:`connect`: a ready client of one server (``Servers([url]).first_ready()``).

What is sent again is decided by the one rule of :mod:`.faults` (transient: yes, on this or
another server; invalid input: never), and every wait before trying again follows
:class:`Backoff`: a server that failed is left alone for ``first_s``, then twice as long after
each further failure in a row, and given up after ``retries`` failures in a row.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .admin import KEY_FILE_ENV, admin_headers
from .errors import InferError, NoServerLeft, RequestError, ServerNotReady
from .faults import TRANSIENT, classify

__all__ = [
    "PROTOCOLS",
    "DEFAULT_PORTS",
    "JOINT_MODEL",
    "CLASSIFIER_MODEL",
    "IMAGE_MODEL",
    "FILE_MODELS",
    "IMAGE_INPUT",
    "FILE_INPUT",
    "ORIGINAL_SIZE",
    "ACCEPTED",
    "REFUSAL_REASON",
    "Backoff",
    "Tls",
    "TensorInfo",
    "ModelInfo",
    "TritonClient",
    "Endpoint",
    "Answer",
    "Servers",
    "Session",
    "connect",
    "parse_url",
    "image_inputs",
    "file_inputs",
]

PROTOCOLS = ("http", "grpc")
#: Triton's ports (`mmtrt serve`'s defaults); an address without a port gets its protocol's
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

#: the served models a client talks to (both repository flavours serve the first two)
JOINT_MODEL = "multimix"  # image -> probs, label, mask, saliency
CLASSIFIER_MODEL = "classifier"  # image -> probs, label
IMAGE_MODEL = "multimix_image"  # image files (BYTES), decoded in the server -> JOINT_MODEL's outputs
#: a model that takes decoded images -> the model that takes the image files themselves
FILE_MODELS = {JOINT_MODEL: IMAGE_MODEL}
IMAGE_INPUT = "image"  # FP32 [n, 1, 256, 256] in [0, 1]
FILE_INPUT = "file"  # BYTES [n, 1], one file per row
ORIGINAL_SIZE = "original_size"  # INT32 [n, 2]: rows, columns of each file as the server decoded it
#: the input gate's verdict on each file (mmtrt.data.gate): BOOL [n, 1], and BYTES [n, 1], the
#: reason of a refusal (empty when accepted). A refused file's other outputs are zeros (label -1)
ACCEPTED = "accepted"
REFUSAL_REASON = "refusal_reason"


def __getattr__(name: str):
    # Triton's model configuration schema, for mmtrt.serving.config (config.pbtxt parsing) and
    # the tests: loaded on first use, so that importing this module loads no gRPC code.
    if name == "model_config_pb2":
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quiet(_line: str) -> None:
    pass


# --------------------------------------------------------------------------- addresses, TLS


def parse_url(url: str, protocol: str) -> tuple[str, bool]:
    """(``host:port`` as tritonclient wants it, TLS?) from ``host:port``, ``http://host:port``,
    ``https://host:port``, ``grpc://`` or ``grpcs://``. A missing port gets the protocol's
    default."""
    ssl = False
    text = url.strip()
    for scheme in ("https://", "http://", "grpcs://", "grpc://"):
        if text.lower().startswith(scheme):
            ssl = scheme in ("https://", "grpcs://")
            text = text[len(scheme) :]
            break
    text = text.rstrip("/")
    if "/" in text:
        raise InferError(f"--url {url!r}: give host:port (a path is not supported)")
    if not text:
        raise InferError("--url is empty")
    host_has_port = (
        text.rsplit(":", 1)[-1].isdigit()
        and (":" in text)
        and not (text.startswith("[") and text.endswith("]"))
    )
    if not host_has_port:
        text = f"{text}:{DEFAULT_PORTS[protocol]}"
    return text, ssl


@dataclass(frozen=True)
class Tls:
    """TLS of a connection, passed to tritonclient: PEM files of the certificate authorities to
    trust (default: the system's), and of a client certificate and key (mutual TLS). Giving one
    turns TLS on, as an ``https://`` or ``grpcs://`` address does. ``verify`` False (HTTP only)
    skips the check of the server's certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    def http_options(self) -> dict:
        files = {"ca_certs": self.ca_file, "certfile": self.cert_file, "keyfile": self.key_file}
        return {k: v for k, v in files.items() if v}

    def grpc_options(self) -> dict:
        return dict(
            root_certificates=self.ca_file, certificate_chain=self.cert_file, private_key=self.key_file
        )


# --------------------------------------------------------------------------- waiting


@dataclass(frozen=True)
class Backoff:
    """The one schedule of waits before trying again: ``first_s``, then twice as long after each
    further failure in a row, at most ``max_s``."""

    first_s: float = 0.5
    max_s: float = math.inf

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` (>= 1) failures in a row."""
        return min(self.first_s * 2 ** max(failures - 1, 0), self.max_s)


# --------------------------------------------------------------------------- one server


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # Triton's: FP32, INT64, BYTES ...
    shape: tuple[int, ...]  # -1: any size (the batch dimension included)


@dataclass(frozen=True)
class ModelInfo:
    """What a server says of one of its models (its metadata and configuration)."""

    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int
    config: dict  # the configuration as Triton's JSON (over gRPC: protobuf's JSON form of it)

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def newest_version(self) -> str | None:
        return max(self.versions, key=lambda v: (len(v), v)) if self.versions else None


def _module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return module


def _grpc_channel_args(module) -> list[tuple]:
    """tritonclient's own gRPC channel options, plus a reconnect back-off capped at 1 s: after the
    server went away gRPC waits up to 120 s between connection attempts by default, and a call in
    that wait fails at once with UNAVAILABLE even after the server is back, which would use up
    the retries while a restarted server is already serving."""
    keepalive = module.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", module.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", module.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


@contextmanager
def _answers():
    """tritonclient's InferenceServerException as RequestError (same text, same status)."""
    from tritonclient.utils import InferenceServerException

    try:
        yield
    except InferenceServerException as e:
        raise RequestError(str(e.message() or ""), str(e.status() or "")) from e


def image_inputs(images: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs of a request of decoded images: float32 [n, 1, H, W] in [0, 1]."""
    return {IMAGE_INPUT: np.ascontiguousarray(images, dtype=np.float32)}


def file_inputs(files: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The inputs of a request of image files sent as they are (to :data:`IMAGE_MODEL`): a BYTES
    tensor [n, 1], one file per row."""
    array = np.empty((len(files), 1), dtype=np.object_)
    array[:, 0] = list(files)
    return {FILE_INPUT: array}


#: the calls to Triton's admin APIs that mmtrt's tools make (restricted by `mmtrt serve`)
_ADMIN_METHODS = frozenset(
    {"get_model_config", "get_model_repository_index", "get_inference_statistics", "load_model"}
)


def is_restricted(error: RequestError) -> bool:
    """True when the server refused a call to an API restricted to a key it was not sent."""
    return "restricted" in error.message.lower()


class TritonClient:
    """One connection to the Triton server at ``url`` over ``protocol`` ("http" or "grpc").

    ``headers`` go with every call (a proxy's auth, Triton's restricted APIs); ``tls`` (or an
    https:// / grpcs:// address) encrypts; ``timeout_s`` bounds each call, ``connect_timeout_s``
    the connection and the readiness probes. Not thread-safe (tritonclient's HTTP client is not):
    one per thread. The server's errors are raised as RequestError, a lost connection as the
    OSError it is."""

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        *,
        headers: Mapping[str, str] | None = None,
        tls: Tls | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
    ):
        self.url, self.protocol = url, protocol
        self._module = _module(protocol)
        self.address, ssl = parse_url(url, protocol)
        self.headers = dict(headers) if headers else None
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        ssl = ssl or tls is not None
        tls = tls or Tls()
        with _answers():
            if protocol == "http":
                self._client = self._module.InferenceServerClient(
                    self.address,
                    connection_timeout=self.connect_timeout_s,
                    network_timeout=self.timeout_s,
                    ssl=ssl,
                    ssl_options=tls.http_options() or None,
                    insecure=not tls.verify,
                )
            else:
                self._client = self._module.InferenceServerClient(
                    self.address, ssl=ssl, channel_args=_grpc_channel_args(self._module), **tls.grpc_options()
                )

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def _call(self, method: str, *args, timeout_s: float | None = None, **kwargs):
        if self.protocol == "grpc":  # (HTTP's time-outs are the connection's)
            kwargs["client_timeout"] = timeout_s or self.timeout_s
        headers = self.headers
        if method in _ADMIN_METHODS:  # the admin key goes only where it is asked for
            try:
                admin = admin_headers(self.protocol)
            except ValueError as e:  # e.g. the key of a server that has stopped since
                raise InferError(
                    f"{e} (named by {KEY_FILE_ENV}: point it to the running server's key file, or unset it)"
                ) from None
            headers = {**admin, **(headers or {})} or None
        with _answers():
            return getattr(self._client, method)(*args, headers=headers, **kwargs)

    # ------------------------------------------------------------------ health

    def is_live(self) -> bool:
        return bool(self._call("is_server_live", timeout_s=self.connect_timeout_s))

    def is_ready(self) -> bool:
        return bool(self._call("is_server_ready", timeout_s=self.connect_timeout_s))

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether model ``name`` is ready: ``version`` of it, or (``""``) any version the
        server's version policy serves."""
        return bool(self._call("is_model_ready", name, version))

    # ------------------------------------------------------------------ models

    def models(self) -> list[dict]:
        """The repository index: a dict per model (name, version, state, reason)."""
        index = self._call("get_model_repository_index")
        if self.protocol == "http":
            return [dict(m) for m in index]
        return [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models
        ]

    def model(self, name: str) -> ModelInfo:
        """The metadata and configuration of model ``name``, ready or not. A server that keeps its
        configuration to an admin key this client has not got (`mmtrt serve`: MMTRT_ADMIN_KEY_FILE)
        gives the metadata alone: max_batch_size 0 (unknown, batches are not capped), config {}."""
        meta = self._call("get_model_metadata", name)
        if self.protocol == "http":
            versions = tuple(meta.get("versions", ()))
            inputs, outputs = (
                tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in meta.get(key, ()))
                for key in ("inputs", "outputs")
            )
        else:
            versions = tuple(meta.versions)
            inputs, outputs = (
                tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in tensors)
                for tensors in (meta.inputs, meta.outputs)
            )
        try:
            answer = self._call("get_model_config", name)
        except RequestError as e:
            if not is_restricted(e):
                raise
            return ModelInfo(name, versions, inputs, outputs, 0, {})
        if self.protocol == "http":
            config = dict(answer)
        else:
            from google.protobuf import json_format

            config = json_format.MessageToDict(answer.config, preserving_proto_field_name=True)
        return ModelInfo(name, versions, inputs, outputs, int(config.get("max_batch_size", 0)), config)

    def load_model(self, name: str, timeout_s: float = 300.0) -> None:
        """Load model ``name`` again from the repository (explicit model control): Triton loads
        the versions its configuration's version policy names while the loaded ones keep
        serving, then unloads the ones no longer named once their requests are answered."""
        self._call("load_model", name, timeout_s=timeout_s)

    def ready_model(self, name: str, version: str = "") -> ModelInfo:
        """:meth:`model` of a model that is ready (``version`` of it when given); InferError
        naming the models there otherwise."""
        what = f"version {version} of model '{name}'" if version else f"model '{name}'"
        try:
            if not self.model_ready(name, version):
                raise InferError(
                    f"{what} is not ready on the server at {self.address} ({self._model_list()})"
                )
            return self.model(name)
        except RequestError as e:
            raise InferError(f"model '{name}' at {self.address}: {_short(e)}") from None

    def _model_list(self) -> str:
        try:
            names = [f"{m['name']} ({m.get('state') or '?'})" for m in self.models()]
        except Exception:  # noqa: BLE001 - only for a message
            return "the model list is not available"
        return "models on the server: " + (", ".join(names) or "none")

    def statistics(self, name: str) -> dict:
        """Triton's statistics of model ``name`` (its newest version) in the form of its HTTP
        API: inference_count, execution_count, inference_stats {success, fail, queue,
        compute_input, compute_infer, compute_output: {count, ns}}, batch_stats."""
        stats = self._call("get_inference_statistics", name)
        if self.protocol == "http":
            return stats["model_stats"][0]
        s = stats.model_stats[0]

        def duration(d):
            return {"count": int(d.count), "ns": int(d.ns)}

        steps = ("compute_input", "compute_infer", "compute_output")
        return {
            "name": s.name,
            "version": s.version,
            "inference_count": int(s.inference_count),
            "execution_count": int(s.execution_count),
            "inference_stats": {
                k: duration(getattr(s.inference_stats, k))
                for k in ("success", "fail", "queue", *steps, "cache_hit", "cache_miss")
            },
            "batch_stats": [
                {"batch_size": int(b.batch_size), **{k: duration(getattr(b, k)) for k in steps}}
                for b in s.batch_stats
            ],
        }

    # ------------------------------------------------------------------ inference

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        model_version: str = "",
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`infer_versioned`'s outputs."""
        return self.infer_versioned(
            model, inputs, outputs, request_id=request_id, model_version=model_version, timeout_s=timeout_s
        )[0]

    def infer_versioned(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        request_id: str = "",
        model_version: str = "",
        timeout_s: float | None = None,
    ) -> tuple[dict[str, np.ndarray], str]:
        """One request: each input array is sent as its own data type (FP32, BYTES for an object
        array of bytes ...), in Triton's binary tensor format; returns ``outputs`` (all the model's
        when None) by name. ``model_version``: the version that must answer (``""``: the newest
        the server serves); a version the server does not serve is an InferError. Also returns
        the version that answered (the response's model_version)."""
        from tritonclient.utils import np_to_triton_dtype

        module = self._module
        with _answers():  # (tritonclient refuses e.g. an array it cannot serialise)
            tensors = []
            for name, array in inputs.items():
                array = np.ascontiguousarray(array)
                tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            requested = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
        result = self._call(
            "infer",
            model,
            tensors,
            model_version=model_version,
            outputs=requested,
            request_id=request_id,
            timeout_s=timeout_s,
        )
        response = result.get_response()
        if self.protocol == "http":
            answered_by = str(response.get("model_version", ""))
            names = [o["name"] for o in response["outputs"]]
        else:
            answered_by, names = response.model_version, [o.name for o in response.outputs]
        return {name: result.as_numpy(name) for name in outputs or names}, answered_by


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _reason(e: BaseException) -> str:
    """Why a server could not be used, for a message."""
    return _short(e) if isinstance(e, (RequestError, InferError)) else f"{type(e).__name__}: {_short(e)}"


# --------------------------------------------------------------------------- N servers


@dataclass
class Endpoint:
    """One server of a :class:`Servers`, and what happened to it."""

    url: str
    protocol: str
    answered_requests: int = 0
    answered_images: int = 0  # the batch sizes of the requests it answered, summed
    failures: int = 0  # failures in a row (of requests and of readiness probes)
    total_failures: int = 0
    gave_up: bool = False
    reason: str = ""  # the last failure, or why it is not used
    down_until: float = 0.0  # time.monotonic() before which it is left alone
    in_flight: int = 0  # requests sent and not answered yet

    def describe(self) -> str:
        where = f"the server at {self.url} ({self.protocol})"
        if self.failures:
            return f"{where} still failing after {self.failures} attempt(s): {self.reason}"
        return f"{where}: {self.reason}"


@dataclass
class Answer:
    """A request's outputs, and the server that answered it."""

    outputs: dict[str, np.ndarray]
    endpoint: Endpoint
    model_version: str = ""  # the version that answered


class Servers:
    """N Triton servers (N = 1 included) used as one, with fail-over.

    ``retries``: failures in a row (of requests or readiness probes) after which a server is
    given up (None: never); also the rounds of :meth:`first_ready`. ``backoff``: how long a
    server that failed is left alone. ``say``: a line per event (a failure, a retry, a server
    given up or back). :attr:`check`, when set, is run on each (re)connected server: it returns
    None, or why that server must not be used (e.g. it serves other models); such a server is
    given up at once. The other settings are those of :class:`TritonClient`."""

    def __init__(
        self,
        urls: str | Sequence[str],
        protocol: str = "http",
        *,
        headers: Mapping[str, str] | None = None,
        tls: Tls | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int | None = 5,
        backoff: Backoff = Backoff(),
        say: Callable[[str], None] = _quiet,
    ):
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise InferError("no server given")
        _module(protocol)  # an unknown protocol is refused at once
        addresses = [parse_url(u, protocol)[0] for u in urls]  # so is an unusable address
        if len(set(addresses)) != len(addresses):
            raise InferError(f"the same server is given twice in {urls}")
        self.protocol = protocol
        self.endpoints = [Endpoint(u, protocol) for u in urls]
        self._settings = dict(
            headers=headers, tls=tls, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )
        self.retries = retries
        self.backoff = backoff
        self.say = say
        self.check: Callable[[TritonClient], str | None] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def client(self, endpoint: Endpoint) -> TritonClient:
        """A new client of ``endpoint`` (not checked for readiness)."""
        return TritonClient(endpoint.url, self.protocol, **self._settings)

    def close(self) -> None:
        """Wake and stop whatever waits for a server."""
        self._closed.set()

    def _probe(self, endpoint: Endpoint) -> TritonClient:
        """A client of a live and ready ``endpoint``; else what failed: ServerNotReady, or the
        error of the connection (refused, reset, a time-out ...)."""
        client = self.client(endpoint)
        try:
            if client.is_ready():
                return client
            raise ServerNotReady("the server is up but not ready (models still loading?)")
        except BaseException:
            client.close()
            raise

    def first_ready(self) -> TritonClient:
        """A ready client of the first server that answers ready (in the order given), probing
        them all up to ``1 + retries`` times, :attr:`backoff` apart (a line said before each
        wait); InferError saying what failed after that."""
        rounds = 1 + (self.retries or 0)
        addresses = ", ".join(parse_url(ep.url, self.protocol)[0] for ep in self.endpoints)
        for attempt in range(1, rounds + 1):
            reasons = []
            for ep in self.endpoints:
                try:
                    return self._probe(ep)
                except Exception as e:  # noqa: BLE001 - not reachable, whatever the reason
                    reasons.append(_reason(e) if len(self.endpoints) == 1 else f"{ep.url}: {_reason(e)}")
            reason = "; ".join(reasons)
            if attempt < rounds:
                delay = self.backoff.delay(attempt)
                self.say(
                    f"no ready server at {addresses} ({self.protocol}): {reason}; retrying in "
                    f"{delay:.1f} s ({attempt}/{rounds - 1})"
                )
                if self._closed.wait(delay):
                    break
        raise InferError(
            f"cannot reach a ready Triton server at {addresses} over {self.protocol} after "
            f"{rounds} attempt(s): {reason}. Is `mmtrt serve` running there, and are --url and "
            "--protocol right (HTTP and gRPC use different ports)?"
        )

    def session(self, offset: int = 0) -> Session:
        """A :class:`Session` for one thread, starting at server ``offset`` (mod N)."""
        return Session(self, offset)

    def no_server_left(self) -> NoServerLeft | None:
        with self._lock:
            if not all(ep.gave_up for ep in self.endpoints):
                return None
            return NoServerLeft("; ".join(ep.describe() for ep in self.endpoints))

    # ------------------------------------------------------------------ bookkeeping

    def _failed(self, ep: Endpoint, reason: str, what: str | None) -> None:
        """A failure of ``ep``: a request (``what`` it carried) or, ``what`` None, a probe."""
        with self._lock:
            ep.failures += 1
            ep.total_failures += 1
            ep.reason = reason
            ep.gave_up = self.retries is not None and ep.failures > self.retries
            delay = self.backoff.delay(ep.failures)
            ep.down_until = time.monotonic() + delay
            others = any(not e.gave_up for e in self.endpoints if e is not ep)
        who = f"server {ep.url} ({self.protocol})"
        event = f"{who} failed {what}: {reason}" if what else f"{who} not reachable: {reason}"
        if ep.gave_up:
            self.say(f"{event}; giving up on it after {ep.failures} failure(s) in a row")
            return
        of = f"{ep.failures}/{self.retries}" if self.retries is not None else f"{ep.failures}"
        then = "; the request goes to the next free server" if what and others else ""
        self.say(f"{event}; retrying in {delay:.1f} s ({of}){then}")

    def _refused(self, ep: Endpoint, reason: str) -> None:
        with self._lock:  # (it answers: not a failure, a server not to use)
            ep.gave_up, ep.reason, ep.failures = True, reason, 0
        self.say(f"server {ep.url}: {reason}; not using it")

    def _answered(self, ep: Endpoint, images: int) -> None:
        with self._lock:
            ep.failures = 0
            ep.answered_requests += 1
            ep.answered_images += images

    # ------------------------------------------------------------------ each job once

    def map(
        self, jobs: Sequence, send: Callable[[Session, object], object], *, workers: int | None = None
    ) -> Iterator[tuple[object, object]]:
        """Each of ``jobs`` sent exactly once, by ``send(session, job)`` on one of ``workers``
        threads (one per server by default), each with its own :class:`Session`: yields (job,
        what send returned, or the exception it raised) on the calling thread, in the order
        they complete. Once no server is left, the jobs not started are settled with that
        NoServerLeft, unsent. At most two results per worker wait for the caller."""
        jobs = list(jobs)
        workers = max(1, min(workers or len(self.endpoints), len(jobs) or 1))
        pending = collections.deque(jobs)
        done: queue.Queue = queue.Queue(maxsize=2 * workers)
        stop = threading.Event()
        none_left: list[NoServerLeft] = []

        def work(offset: int) -> None:
            session = self.session(offset)
            try:
                while not stop.is_set():
                    try:
                        job = pending.popleft()
                    except IndexError:
                        return
                    if none_left:
                        done.put((job, none_left[0]))
                        continue
                    try:
                        value = send(session, job)
                    except NoServerLeft as e:
                        none_left.append(e)
                        value = e
                    except Exception as e:  # noqa: BLE001 - the job's outcome
                        value = e
                    done.put((job, value))
            finally:
                session.close()

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(workers)]
        for t in threads:
            t.start()
        settled = 0
        try:
            while settled < len(jobs):
                try:
                    item = done.get(timeout=0.5)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        raise InferError("the request threads ended with jobs unanswered") from None
                    continue
                settled += 1
                yield item
        finally:
            stop.set()
            if settled < len(jobs):  # the caller stopped early: wake the waiting workers
                self.close()
            while any(t.is_alive() for t in threads):  # (a worker may wait to hand a result over)
                try:
                    done.get(timeout=0.1)
                except queue.Empty:
                    pass


class Session:
    """One thread's way to the servers of a :class:`Servers`: a client per server, made when
    first needed (and again after a failure), and the server to try next."""

    def __init__(self, servers: Servers, offset: int = 0):
        self.servers = servers
        self._clients: dict[int, TritonClient] = {}
        self._turn = offset % len(servers.endpoints)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _drop(self, k: int) -> None:
        client = self._clients.pop(k, None)
        if client is not None:
            client.close()

    def _pick(self, deadline: float | None) -> int | None:
        """The server with the fewest requests in flight (the next in turn among equals) that is
        neither given up nor left alone, waiting for one if need be; None when the deadline passes
        first. NoServerLeft when every one is given up."""
        servers, n = self.servers, len(self.servers.endpoints)
        while True:
            if servers._closed.is_set():
                raise InferError("stopped")
            with servers._lock:
                order = [(self._turn + i) % n for i in range(n)]
                usable = [k for k in order if not servers.endpoints[k].gave_up]
                now = time.monotonic()
                up = [k for k in usable if servers.endpoints[k].down_until <= now]
                if up:
                    k = min(up, key=lambda j: servers.endpoints[j].in_flight)  # (min keeps the first)
                    self._turn = (k + 1) % n
                    servers.endpoints[k].in_flight += 1
                    return k
                wake = min((servers.endpoints[k].down_until for k in usable), default=None)
            if wake is None:
                raise servers.no_server_left()
            if deadline is not None and wake > deadline:
                return None
            servers._closed.wait(wake - now)

    def _connected(self, k: int) -> TritonClient:
        """The client of server ``k``, ready and checked; else the failure is counted and
        raised (the connection's error, or InferError when :attr:`Servers.check` refuses it)."""
        if k in self._clients:
            return self._clients[k]
        servers, ep = self.servers, self.servers.endpoints[k]
        try:
            client = servers._probe(ep)
            refusal = servers.check(client) if servers.check is not None else None
        except Exception as e:
            servers._failed(ep, _reason(e), None)
            raise
        if refusal is not None:
            client.close()
            servers._refused(ep, refusal)
            raise InferError(f"server {ep.url}: {refusal}")
        if ep.failures:
            servers.say(f"server {ep.url} is ready again")
        self._clients[k] = client
        return client

    def _attempt(
        self, k, model, inputs, outputs, tried, what, request_id="", model_version=""
    ) -> tuple[Answer | None, Exception | None]:
        """One attempt on server ``k``: (its answer, None), or (None, the transient failure:
        counted). A failure that is not transient is raised."""
        servers, ep = self.servers, self.servers.endpoints[k]
        try:
            client = self._connected(k)
        except Exception as e:  # not reachable, not ready or refused (counted)
            return None, e
        if tried is not None:
            tried.append(ep.url)
        try:
            answer, answered_by = client.infer_versioned(
                model, inputs, outputs, request_id=request_id, model_version=model_version
            )
        except Exception as e:
            if classify(e) != TRANSIENT:
                raise
            self._drop(k)
            servers._failed(ep, _short(e), what)
            return None, e
        first = next(iter(inputs.values()), None)
        servers._answered(ep, len(first) if first is not None and np.ndim(first) else 1)
        return Answer(answer, ep, answered_by), None

    def send(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        tried: list[str] | None = None,
        max_attempts: int | None = None,
        deadline: float | None = None,
        what: str = "a request",
        request_id: str = "",
        model_version: str = "",
    ) -> Answer:
        """Send one request to the next usable server; while it fails transiently, to the next
        (the same one when it is the only one, once its back-off has passed). An attempt is a
        send, or a connection to a server that failed; ``tried`` (when given) gets the url of
        each server the request was sent to; ``request_id`` goes with every send (the server's
        audit trail records it). Raises the error of a request that is not
        transient (invalid input: never sent again), NoServerLeft, and, after ``max_attempts``
        attempts or once ``deadline`` (time.monotonic()) has passed, the last failure.
        ``model_version``: as in :meth:`TritonClient.infer`."""
        servers = self.servers
        attempts, last = 0, None
        while True:
            k = self._pick(deadline)
            if k is None:
                raise last or InferError("no server could take the request before its deadline")
            ep = servers.endpoints[k]
            attempts += 1
            try:
                answer, last = self._attempt(
                    k, model, inputs, outputs, tried, what, request_id, model_version
                )
            finally:
                with servers._lock:
                    ep.in_flight -= 1
            if answer is not None:
                return answer
            gone = servers.no_server_left()
            if gone is not None:
                raise gone from last
            if (max_attempts is not None and attempts >= max_attempts) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                raise last


def connect(
    url: str,
    protocol: str = "http",
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    headers: Mapping[str, str] | None = None,
    tls: Tls | None = None,
    say: Callable[[str], None] = _quiet,
) -> TritonClient:
    """A client of the live and ready server at ``url``: :meth:`Servers.first_ready` of that one
    server (``1 + retries`` tries, ``backoff_s`` then twice as long each time: 0.5, 1, 2, 4, 8 s
    by default, about 15 s in all, longer than `mmtrt serve`'s watchdog takes to restart a
    server on 2 busy cores)."""
    servers = Servers(
        [url], protocol, headers=headers, tls=tls, timeout_s=timeout_s, retries=retries,
        backoff=Backoff(backoff_s), say=say,
    )  # fmt: skip
    return servers.first_ready()
