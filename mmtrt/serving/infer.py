"""The client side: send image files to a running Triton server and write what comes back.

Images are read with :func:`mmtrt.data.load_image` (THE normalisation: grayscale, [0, 1],
256 x 256 bilinear, exactly as in training), sent in batches through tritonclient (HTTP or gRPC),
and each gets a JSON file (probabilities, label, mask foreground fraction, source file, the image's
metadata: native size, pixel spacing, view, DICOM UIDs) and a PNG
overlay (the X-ray in grey, the lung-mask contour, the saliency as a heat map, the predicted class
and its probability); DICOM sources optionally a DICOM Segmentation and Secondary Capture
(:mod:`mmtrt.dicom_results`). Works with both repository flavours: it requests ``probs`` (plus ``mask``
and ``saliency`` when the model has them) and takes the label as argmax(probs).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmtrt.data.datasets import CLASSES
from mmtrt.data.dicom import DicomWarning
from mmtrt.data.images import IMAGE_EXTENSIONS, DataError, ImageMeta, looks_like_dicom, read_image
from mmtrt.files import atomic_write

from .errors import InferError

__all__ = [
    "ImageResult",
    "InferError",
    "SEND_MODES",
    "FILE_MODELS",
    "connect",
    "infer_files",
    "render_overlay",
    "summary_table",
    "expand_inputs",
    "parse_url",
]

MASK_THRESHOLD = 0.5


@dataclass
class ImageResult:
    source: Path
    meta: ImageMeta | None = None
    probs: np.ndarray | None = None
    mask_fraction: float | None = None
    json_path: Path | None = None
    overlay_path: Path | None = None
    dicom_paths: list[Path] | None = None
    error: str | None = None
    served_size: tuple[int, int] | None = None  # (rows, columns) the server decoded (sent as bytes)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label_index(self) -> int | None:
        return None if self.probs is None else int(np.argmax(self.probs))

    @property
    def label(self) -> str | None:
        return None if self.probs is None else CLASSES[self.label_index]


# --------------------------------------------------------------------------- connecting


def parse_url(url: str, protocol: str) -> tuple[str, bool]:
    """(``host:port`` as tritonclient wants it, ssl?) from ``host:port``, ``http://host:port``,
    ``https://host:port`` or ``grpc://host:port``. A missing port gets the protocol's default."""
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
        text = f"{text}:{8000 if protocol == 'http' else 8001}"
    return text, ssl


def _client_module(protocol: str):
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
    the retries of :func:`infer_files` while a restarted server is already serving."""
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


def connect(
    url: str,
    protocol: str = "http",
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    headers: dict | None = None,
    say: Callable[[str], None] = lambda _m: None,
):
    """A tritonclient client for a live and ready server at ``url``.

    Tries ``1 + retries`` times, sleeping ``backoff_s``, then twice as long each time (0.5, 1,
    2, 4, 8 s by default: about 15 s in all, longer than `mmtrt serve`'s watchdog takes to
    restart a server on 2 busy cores) and calling ``say`` with a line per retry; then raises
    InferError saying what failed.
    """
    module = _client_module(protocol)
    from tritonclient.utils import InferenceServerException

    address, ssl = parse_url(url, protocol)
    delay = float(backoff_s)
    reason = "?"
    for attempt in range(int(retries) + 1):
        client = None
        try:
            if protocol == "http":
                client = module.InferenceServerClient(
                    address, ssl=ssl, connection_timeout=5.0, network_timeout=timeout_s
                )
                ready = client.is_server_ready(headers=headers)
            else:
                client = module.InferenceServerClient(
                    address, ssl=ssl, channel_args=_grpc_channel_args(module)
                )
                ready = client.is_server_ready(headers=headers, client_timeout=5.0)
            if ready:
                return client
            reason = "the server is up but not ready (models still loading?)"
        except InferenceServerException as e:
            reason = _short(e)
        except (OSError, ConnectionError) as e:  # refused, reset, DNS...
            reason = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - any client-side failure is "not reachable"
            reason = f"{type(e).__name__}: {e}"
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        if attempt < retries:
            say(
                f"server at {address} ({protocol}) not reachable: {reason}; retrying in "
                f"{delay:.1f} s ({attempt + 1}/{retries})"
            )
            time.sleep(delay)
            delay *= 2
    raise InferError(
        f"cannot reach a ready Triton server at {address} over {protocol} after "
        f"{int(retries) + 1} attempt(s): {reason}. Is `mmtrt serve` running there, "
        f"and are --url and --protocol right (HTTP and gRPC use different ports)?"
    )


def _short(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _transient(e: Exception) -> bool:
    """Can the same request succeed later? The rule of :mod:`mmtrt.serving.faults`: unreachable,
    connection dropped, deadline, HTTP 5xx / gRPC UNAVAILABLE or INTERNAL (a stub process died, a
    model unloading while the server stops). A rejected input (HTTP 400, gRPC INVALID_ARGUMENT)
    is not transient."""
    from .faults import is_transient

    return is_transient(e)


def _model_info(client, protocol: str, model: str, headers: dict | None):
    """(max_batch_size, output names) of a ready model; InferError otherwise."""
    from tritonclient.utils import InferenceServerException

    try:
        if not client.is_model_ready(model, headers=headers):
            raise InferError(
                f"model '{model}' is not ready on the server ({_available_models(client, protocol, headers)})"
            )
        meta = client.get_model_metadata(model, headers=headers)
        config = client.get_model_config(model, headers=headers)
    except InferenceServerException as e:
        raise InferError(f"model '{model}': {_short(e)}") from None
    if protocol == "http":
        outputs = [o["name"] for o in meta["outputs"]]
        max_batch = int(config.get("max_batch_size", 0))
    else:
        outputs = [o.name for o in meta.outputs]
        max_batch = int(config.config.max_batch_size)
    if "probs" not in outputs:
        raise InferError(
            f"model '{model}' has no 'probs' output (outputs: {outputs}); is it a MultiMix model?"
        )
    return max_batch, outputs


def _available_models(client, protocol: str, headers: dict | None) -> str:
    try:
        index = client.get_model_repository_index(headers=headers)
        if protocol == "http":
            names = [f"{m['name']} ({m.get('state', '?')})" for m in index]
        else:
            names = [f"{m.name} ({m.state or '?'})" for m in index.models]
        return "models on the server: " + (", ".join(names) or "none")
    except Exception:  # noqa: BLE001 - only for the message
        return "the model list is not available"


# --------------------------------------------------------------------------- inputs


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for its image files (by extension, sorted, not
    recursive). A missing path is kept: it fails as that image's error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct file stem per input: ``name`` from ``name.png``; ``name-2``... on clashes
    (``a/x.png`` and ``b/x.png``, or ``x.png`` and ``x.jpg``)."""
    used: set[str] = set()
    stems = []
    for p in paths:
        base = p.stem or "image"
        stem, k = base, 1
        while stem.lower() in used:
            k += 1
            stem = f"{base}-{k}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


# --------------------------------------------------------------------------- overlay


def render_overlay(
    image: np.ndarray,
    path: Path,
    *,
    probs: np.ndarray,
    mask: np.ndarray | None = None,
    saliency: np.ndarray | None = None,
    title: str | None = None,
    size_px: int = 512,
) -> Path:
    """Write a PNG: ``image`` (H x W in [0, 1]) in grey, the saliency as a heat map whose opacity
    grows with its value, the mask's 0.5 contour, and the predicted class with its probability.
    Uses matplotlib's object API (no pyplot, no global backend change)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    handles = []
    if saliency is not None:
        s = np.asarray(saliency, dtype=np.float64)
        top = float(np.percentile(s, 99.5)) if s.size else 0.0
        s = np.clip(s / top, 0.0, 1.0) if top > 0 else np.zeros_like(s)
        rgba = colormaps["inferno"](Normalize(0.0, 1.0)(s))
        rgba[..., 3] = 0.75 * s  # weak saliency stays see-through
        ax.imshow(rgba, interpolation="bilinear")
        handles.append(Patch(color=colormaps["inferno"](0.8), label="saliency"))
    if mask is not None and float(mask.max()) > MASK_THRESHOLD > float(mask.min()):
        ax.contour(mask, levels=[MASK_THRESHOLD], colors=["#39ff14"], linewidths=1.6)
    if mask is not None:
        handles.append(Line2D([], [], color="#39ff14", lw=1.6, label="lung mask"))
    k = int(np.argmax(probs))
    colour = "#ff5050" if CLASSES[k] == "PNEUMONIA" else "#50c8ff"
    ax.text(
        0.02,
        0.98,
        f"{CLASSES[k]}  p = {float(probs[k]):.3f}",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=15,
        fontweight="bold",
        color=colour,
        bbox=dict(facecolor="black", alpha=0.7, edgecolor="none", pad=4),
    )
    if title:
        ax.text(
            0.02,
            0.02,
            title,
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=8,
            color="white",
            bbox=dict(facecolor="black", alpha=0.6, edgecolor="none", pad=2),
        )
    if handles:
        legend = ax.legend(
            handles=handles,
            loc="upper right",
            fontsize=8,
            framealpha=0.6,
            facecolor="black",
            edgecolor="none",
        )
        for text in legend.get_texts():
            text.set_color("white")
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the run


def infer_files(
    paths: Sequence[Path],
    *,
    client,
    protocol: str,
    model: str = "multimix",
    batch_size: int = 8,
    out: Path | None = None,
    overlays: bool = True,
    headers: dict | None = None,
    url: str = "",
    retries: int = 5,
    backoff_s: float = 0.5,
    say: Callable[[str], None] = lambda _m: None,
    dicom_out: Path | None = None,
    checkpoint_sha256: str | None = None,
    send: str = "auto",
) -> list[ImageResult]:
    """Run ``paths`` through ``model`` in batches of ``batch_size`` (at most the model's
    max_batch_size); write ``out/<stem>.json`` and ``out/<stem>.png`` per image when ``out``.

    ``send`` (:func:`send_modes`): ``tensor`` sends the decoded images to ``model``; ``bytes``
    sends the files themselves to the model that decodes them in the server (``multimix`` ->
    ``multimix_image``); ``auto`` sends DICOM files as bytes and the others as tensors (each
    batch holds files of one kind). Either way each file is also decoded here, for its overlay,
    its metadata and its DICOM results, and a file that cannot be decoded is not sent.

    A file that cannot be read is that image's error (its message names the file) and the others
    go on; a request the server rejects is the error of the images it carried. A request that
    fails because the server went away (killed, restarting) or a model's stub process died is
    sent again up to ``retries`` times, sleeping ``backoff_s``, then twice as long each time (as
    :func:`connect`); if it still fails, that batch and every image not sent yet get an error
    saying so, and no more requests are made. Raises InferError only when the model cannot be
    used at all.

    ``dicom_out``: for each DICOM source, also ``dicom_out/<stem>.seg.dcm`` (the lung mask as a
    DICOM Segmentation at the source's size) and ``dicom_out/<stem>.sc.dcm`` (the overlay as a
    Secondary Capture), see :mod:`mmtrt.dicom_results`; ``checkpoint_sha256`` is recorded in them.
    A source whose outputs cannot all be written gets an error and keeps none of them.
    """
    from tritonclient.utils import InferenceServerException

    module = _client_module(protocol)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    modes = send_modes(paths, send, model)
    routes, modes = model_routes(client, protocol, model, modes, send, headers, say)
    batch_size = capped_batch_size(batch_size, routes.values(), say)
    served = {
        kind: _served_version(client, protocol, r.model, headers) if dicom_out is not None else None
        for kind, r in routes.items()
    }
    stems = _output_stems(paths)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    results = [ImageResult(p) for p in paths]
    address = url or "the server"

    batches = plan_batches(modes, batch_size)
    for number, (kind, chunk) in enumerate(batches):
        route = routes[kind]
        loaded = read_batch(paths, chunk, results, say, with_bytes=kind == "bytes")
        if not loaded:
            continue
        inputs, requested = batch_request(module, route, loaded)
        delay = float(backoff_s)
        for attempt in range(int(retries) + 1):
            try:
                response = client.infer(route.model, inputs, headers=headers, outputs=requested)
                got = {o: response.as_numpy(o) for o in route.outputs}
                error = None
                break
            except Exception as e:  # noqa: BLE001 - sorted into transient or not below
                if not isinstance(e, InferenceServerException) and not _transient(e):
                    raise
                error = e
                if not _transient(e) or attempt == retries:
                    break
                say(
                    f"a batch of {len(loaded)} image(s) failed: {_short(e)}; retrying in "
                    f"{delay:.1f} s ({attempt + 1}/{retries})"
                )
                time.sleep(delay)
                delay *= 2
        if error is not None and _transient(error):
            attempts = int(retries) + 1
            reason = f"{address} ({protocol}) still failing after {attempts} attempt(s): {_short(error)}"
            for x in loaded:
                results[x.index].error = f"{paths[x.index]}: inference failed: {reason}"
            unsent = [i for _, later in batches[number + 1 :] for i in later]
            for i in unsent:
                results[i].error = f"{paths[i]}: not sent: giving up on the server at {reason}"
            say(
                f"error: giving up: the server at {reason}; a batch of {len(loaded)} image(s) "
                f"failed and {len(unsent)} image(s) were not sent"
            )
            break
        if error is not None:
            for x in loaded:
                results[x.index].error = f"{paths[x.index]}: inference failed: {_short(error)}"
            say(f"error: a batch of {len(loaded)} image(s) failed: {_short(error)}")
            continue
        dicom = (dicom_out, (route.model, served[kind], checkpoint_sha256)) if dicom_out is not None else None
        for j, x in enumerate(loaded):
            write_result(
                results[x.index],
                x.pixels,
                {o: got[o][j] for o in got},
                out=out,
                stem=stems[x.index],
                overlays=overlays,
                record=dict(model=route.model, url=url, protocol=protocol, sent=kind),
                dicom=dicom,
                say=say,
            )
    return results


# --------------------------------------------------------------------------- tensors or bytes

SEND_MODES = ("auto", "bytes", "tensor")
#: the served model that takes the image files themselves (decoded in the server) for a model
#: that takes decoded images
FILE_MODELS = {"multimix": "multimix_image"}
FILE_INPUT = "file"
ORIGINAL_SIZE = "original_size"


@dataclass(frozen=True)
class Route:
    """How a batch goes to the server: ``send`` "tensor" (the decoded images) or "bytes" (the
    files), the served ``model`` that takes them, its max_batch_size and the outputs asked for."""

    send: str
    model: str
    max_batch: int
    outputs: tuple[str, ...]


@dataclass
class Loaded:
    """An image of a batch: its index in the run, its decoded pixels and, for a batch sent as
    bytes, the file's bytes."""

    index: int
    pixels: np.ndarray
    data: bytes | None = None


def send_modes(paths: Sequence[Path], send: str, model: str) -> list[str]:
    """ "bytes" or "tensor" per path: ``auto`` sends DICOM files (by extension or DICM preamble)
    as bytes when ``model`` has a file-decoding variant, and the rest as tensors."""
    if send not in SEND_MODES:
        raise ValueError(f"send must be one of {', '.join(SEND_MODES)}, got {send!r}")
    if send == "bytes" and model not in FILE_MODELS:
        raise InferError(
            f"--send bytes: model '{model}' takes decoded images only; the files themselves go to "
            + ", ".join(f"'{v}' (for --model {k})" for k, v in FILE_MODELS.items())
        )
    if send == "auto":
        return ["bytes" if model in FILE_MODELS and looks_like_dicom(p) else "tensor" for p in paths]
    return [send] * len(paths)


def model_routes(
    client, protocol: str, model: str, modes: list[str], send: str, headers: dict | None, say
) -> tuple[dict[str, Route], list[str]]:
    """The :class:`Route` of each kind in ``modes``, and the modes: with ``send`` "auto", a
    server without the file-decoding model gets every file as a tensor (said once)."""
    routes = {}
    for kind in dict.fromkeys(modes):
        name = FILE_MODELS[model] if kind == "bytes" else model
        try:
            max_batch, outputs = _model_info(client, protocol, name, headers)
        except InferError as e:
            if kind != "bytes" or send != "auto":
                raise
            say(f"note: {e}: sending the DICOM files as decoded images to '{model}'")
            return model_routes(client, protocol, model, ["tensor"] * len(modes), "tensor", headers, say)
        wanted = tuple(o for o in ("probs", "mask", "saliency", ORIGINAL_SIZE) if o in outputs)
        routes[kind] = Route(kind, name, max_batch, wanted)
    return routes, modes


def capped_batch_size(batch_size: int, routes: Iterable[Route], say) -> int:
    """``batch_size``, at most every route's max_batch_size (said when it is lowered)."""
    for r in routes:
        if r.max_batch and batch_size > r.max_batch:
            say(
                f"batch size {batch_size} is above model '{r.model}''s max_batch_size {r.max_batch}: "
                f"sending batches of {r.max_batch}"
            )
            batch_size = r.max_batch
    return batch_size


def plan_batches(modes: Sequence[str], batch_size: int) -> list[tuple[str, list[int]]]:
    """The run's batches as (kind, indices): files of one kind together, in the order of their
    first file."""
    by_kind: dict[str, list[int]] = {}
    for i, kind in enumerate(modes):
        by_kind.setdefault(kind, []).append(i)
    batches = [
        (kind, indices[s : s + batch_size])
        for kind, indices in by_kind.items()
        for s in range(0, len(indices), batch_size)
    ]
    return sorted(batches, key=lambda b: b[1][0])


def read_batch(
    paths: Sequence[Path], indices, results: list[ImageResult], say, *, with_bytes: bool = False
) -> list[Loaded]:
    """Decode ``paths[i]`` for ``i`` in ``indices`` with :func:`mmtrt.data.read_image` (and,
    ``with_bytes``, keep the file's bytes): those that decode; the others get their error in
    ``results[i]``."""
    loaded = []
    for i in indices:
        try:
            with warnings.catch_warnings():  # said below, once per file
                warnings.simplefilter("ignore", DicomWarning)
                decoded = read_image(paths[i])
            data = paths[i].read_bytes() if with_bytes else None
            results[i].meta = decoded.meta
            loaded.append(Loaded(i, decoded.pixels, data))
            for note in decoded.meta.warnings:
                say(f"warning: {paths[i]}: {note}")
        except DataError as e:
            results[i].error = str(e)
            say(f"error: {e}")
        except OSError as e:  # e.g. permission denied while opening
            results[i].error = f"{paths[i]}: cannot read ({e})"
            say(f"error: {results[i].error}")
    return loaded


def batch_request(module, route: Route, loaded: Sequence[Loaded]) -> tuple[list, list]:
    """The (inputs, requested outputs) of one batch along ``route``."""
    if route.send == "bytes":
        return file_request(module, [x.data for x in loaded], route.outputs)
    return image_request(module, np.stack([x.pixels for x in loaded])[:, None], route.outputs)


def image_request(module, images: np.ndarray, outputs: Sequence[str]) -> tuple[list, list]:
    """(inputs, requested outputs) of a tritonclient request (``module``: tritonclient.http or
    .grpc) for a float32 image batch [n, 1, H, W]: the one way every client of mmtrt sends images."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    tensor = module.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return [tensor], [module.InferRequestedOutput(o) for o in outputs]


def file_request(module, files: Sequence[bytes], outputs: Sequence[str]) -> tuple[list, list]:
    """The same for image files sent as they are: a BYTES tensor [n, 1], one file per row, the
    input of ``multimix_image``: the one way every client of mmtrt sends files."""
    array = np.empty((len(files), 1), dtype=np.object_)
    array[:, 0] = list(files)
    tensor = module.InferInput(FILE_INPUT, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor], [module.InferRequestedOutput(o) for o in outputs]


def write_result(
    r: ImageResult,
    image: np.ndarray,
    got: dict[str, np.ndarray],
    *,
    out: Path | None,
    stem: str,
    overlays: bool,
    record: dict,
    server: dict | None = None,
    dicom=None,
    say: Callable[[str], None] = lambda _m: None,
) -> None:
    """Fill ``r`` from one image's outputs (``got``: probs [2], mask / saliency [1, H, W]) and,
    with ``out``, write its overlay PNG, its DICOM results (``dicom``: (folder, (model, version,
    checkpoint sha256)), for DICOM sources) and its JSON (``record``: model, url and protocol;
    ``server``: more about the server that answered). A result that cannot be written whole is removed
    and becomes the image's error. An image sent as bytes comes back with the size the server
    decoded (``original_size``); one that differs from the size decoded here is said."""
    r.probs = np.asarray(got["probs"], dtype=np.float64)
    if ORIGINAL_SIZE in got:
        r.served_size = tuple(int(v) for v in got[ORIGINAL_SIZE])
        if r.meta is not None and r.served_size != (r.meta.rows, r.meta.columns):
            say(
                f"warning: {r.source}: the server decoded it as {r.served_size[0]} x {r.served_size[1]}, "
                f"here it is {r.meta.rows} x {r.meta.columns} (different decoders?)"
            )
    mask = got["mask"][0] if "mask" in got else None
    saliency = got["saliency"][0] if "saliency" in got else None
    if mask is not None:
        r.mask_fraction = float((mask > MASK_THRESHOLD).mean())
    if out is None:
        return
    written: list[Path] = []
    try:
        if overlays:
            r.overlay_path = render_overlay(
                image,
                out / f"{stem}.png",
                probs=r.probs,
                mask=mask,
                saliency=saliency,
                title=f"{r.source.name} | {record['model']}",
            )
            written.append(r.overlay_path)
        if dicom is not None and r.meta is not None and r.meta.is_dicom:
            folder, info = dicom
            r.dicom_paths = _write_dicom(r, folder, stem, info, mask)
            written += r.dicom_paths
        r.json_path = out / f"{stem}.json"
        data = _record(r, **record)
        data["server"].update(server or {})
        text = json.dumps(data, indent=2) + "\n"
        atomic_write(r.json_path, lambda fh: fh.write(text.encode()))
    except (OSError, ValueError) as e:  # ValueError: DICOM results that cannot be made
        for p in written:
            p.unlink(missing_ok=True)
        r.overlay_path = r.json_path = r.dicom_paths = None
        r.error = f"{r.source}: cannot write the results to {out}: {e}"
        say(f"error: {r.error}")


def _served_version(client, protocol: str, model: str, headers: dict | None) -> str | None:
    """The newest version the server has of ``model`` (for the DICOM results), None if unknown."""
    try:
        meta = client.get_model_metadata(model, headers=headers)
        versions = meta.get("versions", []) if protocol == "http" else list(meta.versions)
    except Exception:  # noqa: BLE001 - only for the record
        return None
    return max(versions, key=lambda v: (len(str(v)), str(v))) if versions else None


def _write_dicom(r, dicom_out, stem, info, mask) -> list[Path]:
    from mmtrt.dicom_results import ResultInfo, write_results

    model, version, sha = info
    info = ResultInfo(model=model, model_version=version, checkpoint_sha256=sha)  # mask: probabilities
    return write_results(
        r.source, out=dicom_out, stem=stem, info=info, mask_probs=mask, overlay_png=r.overlay_path
    )


def _record(r: ImageResult, *, model: str, url: str, protocol: str, sent: str = "tensor") -> dict:
    decoded = "mmtrt.data.load_image: grayscale, [0, 1], 256x256 bilinear"
    return {
        "source": str(r.source.resolve()),
        "label": r.label,
        "label_index": r.label_index,
        "probabilities": {name: float(p) for name, p in zip(CLASSES, r.probs)},
        "mask_foreground_fraction": r.mask_fraction,
        "mask_threshold": MASK_THRESHOLD if r.mask_fraction is not None else None,
        "overlay": r.overlay_path.name if r.overlay_path else None,
        "model": model,
        "server": {"url": url, "protocol": protocol},
        "sent": sent,
        "input": f"the file's bytes, decoded by the server with {decoded}" if sent == "bytes" else decoded,
        "original_size": list(r.served_size) if r.served_size else None,
        "image": r.meta.to_dict() if r.meta is not None else None,
        "dicom_results": [p.name for p in r.dicom_paths] if r.dicom_paths else None,
    }


def summary_table(results: Sequence[ImageResult]) -> str:
    """A plain-text table, one row per image, and a totals line."""
    rows = [("file", "label", "p(PNEUMONIA)", "lung mask", "result")]
    for r in results:
        if r.ok:
            rows.append(
                (
                    r.source.name,
                    r.label,
                    f"{r.probs[1]:.4f}",
                    "-" if r.mask_fraction is None else f"{100 * r.mask_fraction:.1f}%",
                    r.json_path.name if r.json_path else "ok",
                )
            )
        else:
            rows.append((r.source.name, "-", "-", "-", "ERROR (see above)"))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
    widths[0] = min(widths[0], 48)

    def fmt(row):
        cells = [str(c) if len(str(c)) <= w else "..." + str(c)[-(w - 3) :] for c, w in zip(row, widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    ok = sum(r.ok for r in results)
    failed = len(results) - ok
    pneumonia = sum(1 for r in results if r.ok and r.label == "PNEUMONIA")
    lines.append(
        f"{len(results)} image(s): {ok} ok ({pneumonia} PNEUMONIA, {ok - pneumonia} NORMAL), {failed} failed"
    )
    return "\n".join(lines)
