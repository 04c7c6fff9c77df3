"""The client of `mmtrt infer`: send image files to Triton servers and write what comes back.

Images are read with :func:`mmtrt.data.load_image` (THE normalisation: grayscale, [0, 1],
256 x 256 bilinear, exactly as in training) and sent in batches through
:class:`mmtrt.serving.client.Servers` (HTTP or gRPC, one server or several with fail-over: each
image answered once). Each gets a JSON file (probabilities, label, mask foreground fraction,
source file, the server that answered, the image's metadata: native size, pixel spacing, view,
DICOM UIDs) and a PNG overlay (the X-ray in grey, the lung-mask contour, the saliency as a heat
map, the predicted class and its probability); DICOM sources optionally a DICOM Segmentation,
Secondary Capture and Structured Report (:mod:`mmtrt.dicom_results`). Works with both repository flavours: it requests
``probs`` (plus ``label``, ``mask`` and ``saliency`` when the model has them) and takes the served
label, the class at the export's operating point (:mod:`mmtrt.calibration`); a model without a
``label`` output (the gpu flavour, which serves only uncalibrated exports) gives argmax(probs).

The input gate (:mod:`mmtrt.data.gate`) judges each DICOM file's header before anything is sent:
a file it refuses is not decoded or sent, and the server's file model applies its own gate (its
repository setting) to the files sent as bytes, answering ``accepted`` false and a
``refusal_reason``. The image gate inside the served graphs (:mod:`mmtrt.ood`) judges the
pixels of every image it runs: one it finds out of distribution (``in_distribution`` false) is
refused too, with its score. Either way the image is *refused*, not failed: its JSON says
``"outcome": "refused"`` and the reason, it gets no overlay and no DICOM results, and the run
goes on.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmtrt.data.datasets import CLASSES
from mmtrt.data.dicom import DicomWarning
from mmtrt.data.gate import judge_file, out_of_distribution
from mmtrt.data.images import IMAGE_EXTENSIONS, DataError, ImageMeta, looks_like_dicom, read_image
from mmtrt.files import atomic_write
from mmtrt.graphs import OOD

from .client import (
    ACCEPTED,
    FILE_MODELS,
    JOINT_MODEL,
    ORIGINAL_SIZE,
    REFUSAL_REASON,
    Answer,
    Servers,
    Session,
    TritonClient,
    file_inputs,
    image_inputs,
)
from .errors import InferError, NoServerLeft
from .faults import INVALID, TRANSIENT, classify

__all__ = [
    "ImageResult",
    "InferError",
    "SEND_MODES",
    "infer_files",
    "infer_stream",
    "overlay_picture",
    "write_png",
    "summary_table",
    "expand_inputs",
]

MASK_THRESHOLD = 0.5


@dataclass
class ImageResult:
    source: Path
    meta: ImageMeta | None = None
    probs: np.ndarray | None = None
    served_label: int | None = None  # the model's label output, when it has one
    mask_fraction: float | None = None
    json_path: Path | None = None
    overlay_path: Path | None = None
    dicom_paths: list[Path] | None = None
    error: str | None = None
    served_size: tuple[int, int] | None = None  # (rows, columns) the server decoded (sent as bytes)
    refusal_reason: str | None = None  # refused by the input gate (here or in the server): why
    refused_by: str | None = None  # "mmtrt infer" or the served model that refused it
    ood_score: float | None = None  # the image gate's score (mmtrt.ood), when the model ran it
    # the error may go away by itself: no server could answer, or the results could not be written
    transient: bool = False

    @property
    def ok(self) -> bool:
        """The image was handled: answered, or refused by the input gate (not a failure)."""
        return self.error is None

    @property
    def refused(self) -> bool:
        return self.refusal_reason is not None

    @property
    def label_index(self) -> int | None:
        if self.served_label is not None:
            return self.served_label
        return None if self.probs is None else int(np.argmax(self.probs))

    @property
    def label(self) -> str | None:
        return None if self.probs is None else CLASSES[self.label_index]


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


def overlay_picture(
    image: np.ndarray,
    *,
    probs: np.ndarray,
    label: int | None = None,
    mask: np.ndarray | None = None,
    saliency: np.ndarray | None = None,
    title: str | None = None,
    size_px: int = 512,
) -> np.ndarray:
    """The overlay picture, uint8 [size_px, size_px, 3]: ``image`` (H x W in [0, 1]) in grey,
    the saliency as a heat map whose opacity grows with its value, the mask's 0.5 contour, and
    the predicted class (``label``, default the argmax of ``probs``) with its probability.
    Uses matplotlib's object API (no pyplot, no global backend change)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
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
    k = int(np.argmax(probs)) if label is None else int(label)
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
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` (uint8 [H, W, 3]) as a PNG at ``path``, written atomically. zlib's fastest level:
    at the default one, encoding was the largest part of a client's time per image, for files
    only a few percent smaller."""
    from PIL import Image

    atomic_write(Path(path), lambda fh: Image.fromarray(rgb).save(fh, format="PNG", compress_level=1))
    return Path(path)


# --------------------------------------------------------------------------- the run


@dataclass
class Batch:
    """Images sent in one request: ``send`` "tensor" or "bytes" (the route it takes), their
    indices in the run, once read their pixels (and bytes), and every server it was sent to."""

    send: str
    indices: list[int]
    loaded: list[Loaded] | None = None
    servers: list[str] = field(default_factory=list)
    # sent with the request, recorded in each image's JSON and in the server's audit trail
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def infer_files(paths: Sequence[Path], servers: Servers, **options) -> list[ImageResult]:
    """Every image of ``paths`` through :func:`infer_stream` (``options``: its options); their
    results, in the order of ``paths``."""
    results: dict[int, ImageResult] = {}
    for settled in infer_stream(paths, servers, **options):
        results.update(settled)
    return [results[i] for i in range(len(paths))]


def infer_stream(
    paths: Sequence[Path],
    servers: Servers,
    *,
    model: str = JOINT_MODEL,
    send: str = "auto",
    batch_size: int = 8,
    out: Path | None = None,
    overlays: bool = True,
    dicom_out: Path | None = None,
    checkpoint_sha256: str | None = None,
    relaxed: frozenset[str] = frozenset(),
    model_version: str = "",
) -> Iterator[dict[int, ImageResult]]:
    """Run ``paths`` through ``model`` on ``servers``, in batches of ``batch_size`` (at most the
    model's max_batch_size); write ``out/<stem>.json`` and ``out/<stem>.png`` per image when
    ``out``. Lines about the run go to ``servers.say``. Yields the images as they are settled,
    {index in ``paths``: its :class:`ImageResult`}, each image once: those the input gate refused
    or that could not be read, then each batch once answered (its results written), then those
    no server answered; so a caller can pass results on while later batches are inferred.

    ``send`` (:func:`send_modes`): ``tensor`` sends the decoded images to ``model``; ``bytes``
    sends the files themselves to the model that decodes them in the server (``multimix`` ->
    ``multimix_image``); ``auto`` sends DICOM files as bytes and the others as tensors (each
    batch holds files of one kind). Either way each file is also decoded here, for its overlay,
    its metadata and its DICOM results, and a file that cannot be decoded is not sent.

    The model's interface (outputs, max_batch_size) is read from the first ready server; a
    server that serves it otherwise is not used. The batches go to the servers as
    :meth:`Servers.map` sends them (one thread per server, each batch answered once, the
    results written here, on the calling thread): a batch whose request fails transiently (the
    server went away, a model's stub process died) is sent again, to the next free server,
    while a server that keeps failing is given up after ``servers.retries`` failures in a row
    (:class:`~mmtrt.serving.client.Backoff` apart). Once every server is given up, the images
    not answered get an error saying so and no more requests are made. A file that cannot be
    read is that image's error (its message names the file) and the others go on; a request the
    server rejects is the error of the images it carried. Raises InferError only when no server
    is ready at the start or the model cannot be used at all.

    ``dicom_out`` (with or without ``out``): for each DICOM source, ``dicom_out/<stem>.seg.dcm``
    (the lung mask as a DICOM Segmentation at the source's size), ``dicom_out/<stem>.sc.dcm`` (the
    overlay as a Secondary Capture) and ``dicom_out/<stem>.sr.dcm`` (the classification and the
    lung area as a Structured Report), see :mod:`mmtrt.dicom_results`; ``checkpoint_sha256`` is recorded in them
    and, with the source's SOP Instance UID, makes their UIDs.
    ``model_version``: the version of the model sent to that must answer every request (a
    server that does not serve it is not used); ``""``: the newest each server serves.
    A source whose outputs cannot all be written gets an error and keeps none of them.

    The input gate (:func:`mmtrt.data.gate.judge_file`, its rules ``relaxed`` as asked) judges
    each file's DICOM header first: a file it refuses that decodes (one that does not is an
    error, as any file that cannot be read) is not sent; it gets
    ``out/<stem>.json`` with ``"outcome": "refused"`` and the reason, like a file the server's
    gate refuses (``accepted`` false in its answer), and neither gets an overlay or DICOM results.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    say = servers.say
    paths = [Path(p) for p in paths]
    modes = send_modes(paths, send, model)
    with servers.first_ready() as client:
        routes, modes = model_routes(client, model, modes, send, say, model_version)

    def same_routes(other: TritonClient) -> str | None:
        try:  # the same models as the first server, taking the same kinds of input
            theirs, _ = model_routes(other, model, modes, "tensor", say, model_version)
        except InferError as e:  # ready, but without the model: never usable
            return str(e)
        if theirs != routes:
            return f"serves model '{model}' as {list(theirs.values())}, the first server as {list(routes.values())}"
        return None

    servers.check = same_routes
    batch_size = capped_batch_size(batch_size, routes.values(), say)
    stems = _output_stems(paths)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    results = [ImageResult(p) for p in paths]

    def errors_only(line: str) -> None:  # a refused file's decoding warnings are moot
        if not line.startswith("warning:"):
            say(line)

    for i, (r, stem) in enumerate(zip(results, stems)):
        verdict = judge_file(r.source, relaxed)
        if not verdict.accepted and read_batch(paths, [i], results, errors_only):
            refuse(r, verdict.reason, by="mmtrt infer", out=out, stem=stem, say=say)
    to_send = [kind if r.ok and not r.refused else None for r, kind in zip(results, modes)]
    settled = {i: r for i, (r, kind) in enumerate(zip(results, to_send)) if kind is None}
    if settled:
        yield settled
    batches = [Batch(kind, indices) for kind, indices in plan_batches(to_send, batch_size)]
    max_attempts = (int(servers.retries or 0) + 1) * len(servers.endpoints)

    def send_batch(session: Session, batch: Batch) -> Answer | None:
        route = routes[batch.send]
        batch.loaded = read_batch(paths, batch.indices, results, say, with_bytes=route.send == "bytes")
        if not batch.loaded:
            return None
        if route.send == "bytes":
            inputs = file_inputs([x.data for x in batch.loaded])
        else:
            inputs = image_inputs(np.stack([x.pixels for x in batch.loaded])[:, None])
        what = f"a batch of {len(batch.loaded)} image(s)"
        return session.send(
            route.model,
            inputs,
            route.outputs,
            tried=batch.servers,
            max_attempts=max_attempts,
            what=what,
            request_id=batch.request_id,
            model_version=model_version,
        )

    given_up: list[Batch] = []
    for batch, outcome in servers.map(batches, send_batch):
        if isinstance(outcome, NoServerLeft):
            given_up.append(batch)
            continue
        route = routes[batch.send]
        loaded = batch.loaded or []
        if isinstance(outcome, Answer):
            dicom = (
                (dicom_out, (route.model, outcome.model_version or route.version, checkpoint_sha256))
                if dicom_out is not None
                else None
            )
            server = {
                "url": outcome.endpoint.url,
                "protocol": servers.protocol,
                "request_id": batch.request_id,
            }
            server.update(attempts=len(batch.servers), tried=list(batch.servers))
            for j, x in enumerate(loaded):
                write_result(
                    results[x.index],
                    x.pixels,
                    {o: outcome.outputs[o][j] for o in outcome.outputs},
                    out=out,
                    stem=stems[x.index],
                    overlays=overlays,
                    model=route.model,
                    model_version=outcome.model_version or None,
                    sent=route.send,
                    server=server,
                    dicom=dicom,
                    say=say,
                )
        elif isinstance(outcome, Exception):
            by = batch.servers[-1] if batch.servers else "no server"
            kind = classify(outcome)
            if kind == TRANSIENT:  # on every server it was sent to
                error = f"still failing after {len(batch.servers)} send(s): {_short(outcome)}"
            else:
                what = "rejected as invalid input" if kind == INVALID else "failed"
                error = f"{what} by {by}: {_short(outcome)}"
            for x in loaded:
                results[x.index].error = f"{paths[x.index]}: inference failed: {error}"
                results[x.index].transient = kind == TRANSIENT
            say(f"error: a batch of {len(loaded)} image(s) failed: {error}")
        batch.loaded = None  # the pixels are no longer needed
        yield {i: results[i] for i in batch.indices}  # (one that could not be read: its error)
    if given_up:
        reason = servers.no_server_left() or "no server left"
        failed = [i for b in given_up if b.servers for i in b.indices if results[i].error is None]
        unsent = [i for b in given_up if not b.servers for i in b.indices if results[i].error is None]
        for i in failed:
            results[i].error = f"{paths[i]}: inference failed: {reason}"
            results[i].transient = True
        for i in unsent:
            results[i].error = f"{paths[i]}: not sent: giving up: {reason}"
            results[i].transient = True
        say(
            f"error: giving up: {reason}; {len(failed)} image(s) failed and {len(unsent)} image(s) "
            "were not sent"
        )
        yield {i: results[i] for b in given_up for i in b.indices}


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


# --------------------------------------------------------------------------- tensors or bytes

SEND_MODES = ("auto", "bytes", "tensor")


@dataclass(frozen=True)
class Route:
    """How a batch goes to the server: ``send`` "tensor" (the decoded images) or "bytes" (the
    files), the served ``model`` that takes them, its max_batch_size, the outputs asked for and
    (not compared between servers) the version asked for, else the model's newest there."""

    send: str
    model: str
    max_batch: int
    outputs: tuple[str, ...]
    version: str | None = field(default=None, compare=False)


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
    client: TritonClient, model: str, modes: list[str], send: str, say, version: str = ""
) -> tuple[dict[str, Route], list[str]]:
    """The :class:`Route` of each kind in ``modes``, and the modes: with ``send`` "auto", a
    server without the file-decoding model gets every file as a tensor (said once). ``version``:
    the version each route's model must have ready (``""``: any)."""
    routes = {}
    for kind in dict.fromkeys(modes):
        name = FILE_MODELS[model] if kind == "bytes" else model
        try:
            info = client.ready_model(name, version)
        except InferError as e:
            if kind != "bytes" or send != "auto":
                raise
            say(f"note: {e}: sending the DICOM files as decoded images to '{model}'")
            return model_routes(client, model, ["tensor"] * len(modes), "tensor", say, version)
        outputs = info.output_names
        if "probs" not in outputs:
            raise InferError(
                f"model '{name}' has no 'probs' output (outputs: {outputs}); is it a MultiMix model?"
            )
        wanted = tuple(
            o
            for o in ("probs", "label", "mask", "saliency", *OOD, ORIGINAL_SIZE, ACCEPTED, REFUSAL_REASON)
            if o in outputs
        )
        routes[kind] = Route(kind, name, info.max_batch_size, wanted, version or info.newest_version)
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


def plan_batches(modes: Sequence[str | None], batch_size: int) -> list[tuple[str, list[int]]]:
    """The run's batches as (kind, indices): files of one kind together, in the order of their
    first file (a file of kind None is not sent)."""
    by_kind: dict[str, list[int]] = {}
    for i, kind in enumerate(modes):
        if kind is not None:
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


def write_result(
    r: ImageResult,
    image: np.ndarray,
    got: dict[str, np.ndarray],
    *,
    out: Path | None,
    stem: str,
    overlays: bool,
    model: str,
    sent: str,
    server: dict,
    model_version: str | None = None,
    dicom=None,
    say: Callable[[str], None] = lambda _m: None,
) -> None:
    """Fill ``r`` from one image's outputs (``got``: probs [2], mask / saliency [1, H, W]); with
    ``out``, write its overlay PNG (``overlays``) and its JSON (the served ``model`` and the
    ``model_version`` that answered, what was ``sent``: "tensor" or "bytes", and the ``server``
    that answered: url, protocol ...); with ``dicom`` ((folder, (model, version, checkpoint
    sha256))), a DICOM source's DICOM results, with or without ``out``. A result that
    cannot be written whole is removed and becomes the image's error. An image sent as bytes comes
    back with the size the server decoded (``original_size``); one that differs from the size
    decoded here is said. An image the server's input gate refused (``accepted`` false) is
    written as refused (:func:`refuse`): its other outputs are no result; so is one the image gate
    of the served graph finds out of distribution (``in_distribution`` false)."""
    if ACCEPTED in got and not bool(np.asarray(got[ACCEPTED]).reshape(-1)[0]):
        reason = _text(got.get(REFUSAL_REASON)) or "refused by the server's input gate (no reason given)"
        refuse(r, reason, by=model, out=out, stem=stem, say=say, sent=sent, server=server)
        return
    if "ood_score" in got:
        r.ood_score = float(np.asarray(got["ood_score"]).reshape(-1)[0])
    if "in_distribution" in got and not bool(np.asarray(got["in_distribution"]).reshape(-1)[0]):
        reason = out_of_distribution(r.ood_score)
        refuse(r, reason, by=model, out=out, stem=stem, say=say, sent=sent, server=server)
        return
    r.probs = np.asarray(got["probs"], dtype=np.float64)
    if "label" in got:
        r.served_label = int(np.asarray(got["label"]).reshape(-1)[0])
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
    dicom = dicom if r.meta is not None and r.meta.is_dicom else None
    png = overlays and out is not None
    if out is None and dicom is None:
        return
    written: list[Path] = []
    try:
        picture = None
        if png or dicom is not None:  # (the DICOM Secondary Capture is the overlay)
            picture = overlay_picture(
                image,
                probs=r.probs,
                label=r.label_index,
                mask=mask,
                saliency=saliency,
                title=f"{r.source.name} | {model}",
            )
        if png:
            r.overlay_path = write_png(out / f"{stem}.png", picture)
            written.append(r.overlay_path)
        if dicom is not None:
            folder, info = dicom
            r.dicom_paths = _write_dicom(r, folder, stem, info, mask, picture)
            written += r.dicom_paths
        if out is not None:
            r.json_path = out / f"{stem}.json"
            record = _record(r, model=model, model_version=model_version, sent=sent, server=server)
            text = json.dumps(record, indent=2) + "\n"
            atomic_write(r.json_path, lambda fh: fh.write(text.encode()))
    except (OSError, ValueError) as e:  # ValueError: DICOM results that cannot be made
        for p in written:
            p.unlink(missing_ok=True)
        r.overlay_path = r.json_path = r.dicom_paths = None
        where = out if out is not None else dicom[0]
        r.error = f"{r.source}: cannot write the results to {where}: {e}"
        r.transient = isinstance(e, OSError)  # a full or unwritable disk; a DICOM refusal stays
        say(f"error: {r.error}")


def _text(value) -> str:
    """A BYTES output element (e.g. [b"..."]) as text."""
    if value is None:
        return ""
    item = np.asarray(value, dtype=object).reshape(-1)[0]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def refuse(
    r: ImageResult,
    reason: str,
    *,
    by: str,
    out: Path | None,
    stem: str,
    say: Callable[[str], None],
    sent: str | None = None,
    server: dict | None = None,
) -> None:
    """Mark ``r`` refused by the input gate (``by``: "mmtrt infer" or the served model) and, with
    ``out``, write its JSON: ``"outcome": "refused"``, the reason, no result. No overlay, no
    DICOM results: nothing of a refused image may be taken for a result."""
    r.refusal_reason, r.refused_by = reason, by
    r.probs = r.mask_fraction = None
    say(f"refused: {r.source}: {reason}")
    if out is None:
        return
    record = {
        "source": str(r.source.resolve()),
        "outcome": "refused",
        "refusal_reason": reason,
        "refused_by": by,
        "ood_score": r.ood_score,
        "label": None,
        "probabilities": None,
        "server": server,
        "sent": sent,
        "image": r.meta.to_dict() if r.meta is not None else None,
    }
    path = out / f"{stem}.json"
    text = json.dumps(record, indent=2) + "\n"
    try:
        atomic_write(path, lambda fh: fh.write(text.encode()))
        r.json_path = path
    except OSError as e:
        r.error = f"{r.source}: cannot write the results to {out}: {e}"
        r.transient = True
        say(f"error: {r.error}")


def _write_dicom(r, dicom_out, stem, info, mask, picture) -> list[Path]:
    from mmtrt.dicom_results import ResultInfo, write_results

    model, version, sha = info
    info = ResultInfo(model=model, model_version=version, checkpoint_sha256=sha)  # mask: probabilities
    return write_results(
        r.source,
        out=dicom_out,
        stem=stem,
        info=info,
        mask_probs=mask,
        overlay=picture,
        probabilities=r.probs,
        label=r.label_index,  # the served label (the export's operating point), as the JSON says
    )


def _record(r: ImageResult, *, model: str, model_version: str | None, sent: str, server: dict) -> dict:
    decoded = "mmtrt.data.load_image: grayscale, [0, 1], 256x256 bilinear"
    return {
        "source": str(r.source.resolve()),
        "outcome": "answered",
        "refusal_reason": None,
        "label": r.label,
        "label_index": r.label_index,
        "probabilities": {name: float(p) for name, p in zip(CLASSES, r.probs)},
        "mask_foreground_fraction": r.mask_fraction,
        "mask_threshold": MASK_THRESHOLD if r.mask_fraction is not None else None,
        "ood_score": r.ood_score,
        "overlay": r.overlay_path.name if r.overlay_path else None,
        "model": model,
        "model_version": model_version,
        "server": server,
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
        if r.refused:
            rows.append((r.source.name, "REFUSED", "-", "-", r.json_path.name if r.json_path else "refused"))
        elif r.ok:
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
    refused = sum(r.ok and r.refused for r in results)
    ok = sum(r.ok for r in results) - refused
    failed = len(results) - ok - refused
    pneumonia = sum(1 for r in results if r.ok and r.label == "PNEUMONIA")
    lines.append(
        f"{len(results)} image(s): {ok} ok ({pneumonia} PNEUMONIA, {ok - pneumonia} NORMAL), "
        f"{refused} refused, {failed} failed"
    )
    return "\n".join(lines)
