"""Parity of exported graphs with PyTorch: the validation inputs, the references, the metrics,
the tolerances and the table.

Every graph runs on the same fresh inputs: three image kinds (uniform noise; smooth images with
flat black borders and saturated blocks, where max-pool windows hold ties; synthetic chest X-rays)
at batch 1 (once per kind), an odd batch (3) and the export's max batch (repeated until there are
MIN_IMAGES images, 30: 10 of each kind at max batch 8). Its outputs are compared with the same graph
in PyTorch eager (float32), except the saliency, whose definition is autograd: a runtime's saliency
is judged against float64 autograd, relative to PyTorch float32 autograd's own error on the same
images, because the saliency is piecewise smooth (LeakyReLU signs and max-pool winners are gates a
rounding difference can flip) and a plain max error would measure gate flips, not mistakes.

Metrics are pooled per (graph, output, image kind) over all batch sizes:
  rel        relative L2 error ||a - e|| / ||e||; for the saliency the mean over images of each
             image's relative error against float64
  max_abs    largest absolute difference
  agree      class agreement: argmax equal, over samples whose reference margin is decisive at
             this precision (smaller margins are ties there; they are counted as `ties`)
  dice       smallest per-sample Dice between the binarised masks (p > 0.5, logits > 0)
  cosine     smallest per-sample cosine with the float64 saliency
  ratio      saliency rel / PyTorch float32 autograd's rel on the same images

The saliency ratio is judged over all validation images together (the row of kind "all"); per
kind it is reported only. A gate flip moves one image's saliency by 1e-3..2.5e-2 and whether one
happens is chance, for PyTorch float32 as for any other runtime: measured per image on 48 images,
both range from 2e-6 (no flip) to 2.5e-2 with the same mean (3.3e-3 / 2.5e-3 random, 3.5e-3 /
3.8e-3 flat, 5.9e-3 / 5.6e-3 X-ray for PyTorch / onnxruntime), so a ratio over the few images of
one kind is unreliable (2.5x..3.7x seen on one kind of a correct graph), while over 30 images a
correct graph exceeds 2x about 0.06% of the time (bootstrap over the measured errors, images
shared by both runtimes), and a systematic error does not hide (onnxruntime's whole-plane means
before mmtrt.model.spatial_mean: 14x..16x on flat-border and X-ray images). The per-image cosine
is judged per kind.

The CPU flavour serves the fp32 graphs with onnxruntime or OpenVINO (`mmtrt repo --runtime`): an
export validates every CPU runtime installed where it runs (:func:`serving_runners`), each
against the same tolerances; OpenVINO's rows are labelled `<graph>.openvino`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mmtrt.graphs import GRAPHS, PIPELINES, SKIPS, run_pipeline
from mmtrt.model import MultiMix, reference_saliency
from mmtrt.parity import KINDS, cosine, dice, make_image, relative_error
from mmtrt.runtimes import pytorch

ALL = "all"  # the row pooling every kind (the saliency ratio is judged there)
VALIDATION_SEED = 7_340_000  # fresh: not the seeds of the tests nor the trace inputs
# Enough images that the saliency rule (mean error <= 2x PyTorch's own) is not a coin toss: with
# 30, a correct graph fails it about 0.06% of the time (0.2% with 24, 1.3% with 14; bootstrap over
# measured per-image errors, see the module docstring).
MIN_IMAGES = 30

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


# --------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerances:
    class_rel: float  # logits and probs: relative L2 error
    skip_rel: float  # skip1..skip5
    mask_logits_rel: float
    mask_abs: float  # mask probabilities: max abs difference
    mask_dice: float  # binarised masks
    # saliency error vs float64 <= ratio x PyTorch float32's own error, and per-image cosine: the
    # same at every precision
    saliency_ratio: float = 2.0
    saliency_cosine: float = 0.999
    class_agreement: float = 1.0
    # reduced precision: the backward half of the saliency runs reduced, so its error is judged
    # by itself (mean per-image relative error against float64) instead of the float32 ratio
    saliency_rel: float | None = None
    # the image gate's score: relative L2 error; its verdict must agree wherever the reference
    # score is not within 10x that of the threshold
    ood_rel: float = 1e-4


# fp32: the tolerances. fp16/bf16 apply to the mixed-precision copies, whose saliency
# backward half runs reduced (mmtrt.export.precision): its saliency is judged by its mean per-image
# error against float64 (<= 0.5% fp16, <= 2% bf16) and per-image cosine (>= 0.999). Measured
# (30 validation images, demo checkpoint and random weights, mean / worst image): fp16 emulated
# 0.10% / 0.12%, bf16 emulated 0.8% / 0.9%, bf16 in OpenVINO (native bf16 convolutions) 1.7% /
# 1.8%, cosine >= 0.99995 everywhere. Other outputs, measured on the random-initialised
# checkpoint of `mmtrt init` (worst kind of 30 images; mmtrt/export/README.md): fp16 in onnxruntime
# logits 2.1e-4, skips 2.4e-3, mask 7.1e-4 max abs, Dice 0.9991; fp16 emulated (fp16 storage,
# float32 accumulation, closer to a GPU) logits 8.5e-4, skips 7.8e-3, mask 1.1e-3, mask logits
# 9.7e-4, Dice 0.9989; bf16 emulated logits 6.3e-3, skips 5.2e-2, mask 1.1e-2, mask logits
# 7.5e-3, Dice 0.9917. The limits sit about 2x or more above the worst of those.
TOLERANCES = {
    "fp32": Tolerances(
        class_rel=1e-4,
        skip_rel=1e-4,
        mask_logits_rel=1e-4,
        mask_abs=1e-3,
        mask_dice=0.999,
    ),
    "fp16": Tolerances(
        class_rel=2e-3,
        skip_rel=2e-2,
        mask_logits_rel=5e-3,
        mask_abs=5e-3,
        mask_dice=0.995,
        saliency_rel=5e-3,
        ood_rel=5e-3,
    ),
    "bf16": Tolerances(
        class_rel=2e-2,
        skip_rel=1e-1,
        mask_logits_rel=3e-2,
        mask_abs=3e-2,
        mask_dice=0.98,
        saliency_rel=2e-2,
        ood_rel=2e-2,
    ),
}
# A TensorRT engine is checked against onnxruntime, not float64: two runtimes that each stay
# within 2x PyTorch's own saliency error of float64 are within 4x of each other.
ENGINE_SALIENCY_RATIO = 2 * Tolerances.saliency_ratio


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ValidationBatch:
    kinds: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.kinds)

    def images(self, channels: int = 1) -> torch.Tensor:
        return torch.stack([make_image(k, s, channels) for k, s in zip(self.kinds, self.seeds)])


def batch_sizes(max_batch: int) -> list[int]:
    """1, an odd size (3) and max_batch, as far as max_batch allows."""
    return sorted({1, min(3, max_batch), max_batch})


def validation_batches(max_batch: int, min_images: int = MIN_IMAGES) -> list[ValidationBatch]:
    """Batch 1 once per kind, then the odd size, then max_batch until there are `min_images`
    images. Larger batches mix the kinds (samples are independent, so a mixed batch also checks
    that nothing leaks between them)."""
    sizes = [1] * len(KINDS) + [s for s in batch_sizes(max_batch) if s > 1]
    while sum(sizes) < min_images:
        sizes.append(max_batch)
    batches, first = [], 0
    for size in sizes:  # image i is of kind i mod 3, from seed VALIDATION_SEED + i
        kinds = tuple(KINDS[i % len(KINDS)] for i in range(first, first + size))
        batches.append(
            ValidationBatch(kinds, tuple(range(VALIDATION_SEED + first, VALIDATION_SEED + first + size)))
        )
        first += size
    return batches


# --------------------------------------------------------------------------- references


@dataclass
class Reference:
    """PyTorch's answers for one batch: every named tensor of the graphs (float32 eager, the
    saliency by float32 autograd, its definition) plus the saliency by float64 autograd (the judge)."""

    tensors: dict[str, torch.Tensor]
    saliency64: torch.Tensor

    def inputs(self, graph: str) -> dict[str, np.ndarray]:
        return {name: self.tensors[name].numpy() for name in GRAPHS[graph].inputs}

    def outputs(self, graph: str) -> dict[str, torch.Tensor]:
        return {name: self.tensors[name] for name in GRAPHS[graph].outputs}


class ReferenceModel:
    def __init__(self, model: MultiMix):
        self.model = model.eval()
        self.model64 = MultiMix(**model.config).double().eval()
        self.model64.load_state_dict(model.state_dict())
        self.model64.ood.load(model.ood.statistics())  # fitted at export, not in the state dict
        self.graphs = pytorch.runners(self.model)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Reference:
        # The encoder graph, autograd's saliency and the decoder graph name every tensor the four
        # graphs take or give (the saliency graph gives the encoder's outputs + the saliency, the
        # fused graph probs, mask and saliency): one pass of each serves all four.
        tensors = {"image": images, "saliency": reference_saliency(self.model.encoder, images)}
        for graph in ("encoder", "decoder"):
            tensors.update(self.graphs[graph]({n: tensors[n] for n in GRAPHS[graph].inputs}))
        for graph, spec in GRAPHS.items():  # (a graph naming anything else runs on its own)
            if not all(name in tensors for name in spec.outputs):
                outputs = self.graphs[graph]({n: tensors[n] for n in spec.inputs})
                tensors.update((n, t) for n, t in outputs.items() if n not in tensors)
        return Reference(tensors, reference_saliency(self.model64.encoder, images.double()))


# --------------------------------------------------------------------------- metrics


@dataclass
class _Stat:
    """Running pooled figures for one (graph, output, kind)."""

    sq_err: float = 0.0
    sq_ref: float = 0.0
    max_abs: float = 0.0
    samples: int = 0
    agree: int = 0
    decisive: int = 0
    dice: float = math.inf
    cosine: float = math.inf
    rel_sum: float = 0.0  # saliency: sum over images of each image's relative error
    rel_sum_pytorch: float = 0.0  # the same for PyTorch float32 autograd vs float64

    def add_error(self, actual: np.ndarray, expected: np.ndarray) -> None:
        diff = actual.astype(np.float64) - expected.astype(np.float64)
        self.sq_err += float(np.sum(diff * diff))
        self.sq_ref += float(np.sum(expected.astype(np.float64) ** 2))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))) if diff.size else 0.0)
        self.samples += len(actual)


def _kind(name: str) -> str:
    if name in ("logits", "probs"):
        return "class"
    if name in SKIPS:
        return "skip"
    return name  # saliency, mask, mask_logits, ood_score, in_distribution


class ParityCheck:
    """Collects the comparisons of one or more runtimes' graphs and judges them."""

    def __init__(self, ood_threshold: float = math.inf):
        self.stats: dict[tuple[str, str, str, str], _Stat] = {}  # (label, precision, output, kind)
        self.batches_seen: set[int] = set()
        self.ood_threshold = ood_threshold  # the image gate's, inside the graphs

    def _stat(self, label, precision, output, kind) -> _Stat:
        return self.stats.setdefault((label, precision, output, kind), _Stat())

    def add(
        self,
        label: str,
        precision: str,
        outputs: dict[str, np.ndarray],
        expected: dict[str, torch.Tensor | np.ndarray],
        kinds: Iterable[str],
        *,
        saliency64: torch.Tensor | None = None,
        saliency_pytorch: torch.Tensor | None = None,
    ) -> None:
        """Compare one batch. `expected` are the reference tensors by name. With `saliency64`, the
        saliency is judged against float64 relative to `saliency_pytorch`'s error; without it (a
        TensorRT engine against onnxruntime), against `expected["saliency"]`."""
        kinds = list(kinds)
        self.batches_seen.add(len(kinds))
        tol = TOLERANCES[precision]
        for name, actual in outputs.items():
            actual = np.asarray(actual, dtype=np.float32)
            reference = np.asarray(expected[name], dtype=np.float32)
            if name == "saliency" and saliency64 is not None:
                reference = saliency64.numpy()
            for kind in KINDS:
                rows = [i for i, k in enumerate(kinds) if k == kind]
                if not rows:
                    continue
                stat = self._stat(label, precision, name, kind)
                a, e = actual[rows], reference[rows]
                stat.add_error(a, e)
                family = _kind(name)
                if family == "class":
                    top2 = np.sort(e, axis=1)[:, -2:]
                    decisive = (top2[:, 1] - top2[:, 0]) > 10 * tol.class_rel * np.abs(e).max(axis=1)
                    stat.decisive += int(decisive.sum())
                    stat.agree += int(((a.argmax(1) == e.argmax(1)) & decisive).sum())
                elif family == "in_distribution":
                    score = np.asarray(expected["ood_score"], dtype=np.float64)[rows].reshape(-1)
                    decisive = np.abs(score - self.ood_threshold) > 10 * tol.ood_rel * np.abs(score)
                    stat.decisive += int(decisive.sum())
                    stat.agree += int(((a.reshape(-1) == e.reshape(-1)) & decisive).sum())
                elif family in ("mask", "mask_logits"):
                    threshold = 0.5 if family == "mask" else 0.0
                    for i in range(len(rows)):
                        stat.dice = min(stat.dice, dice(a[i] > threshold, e[i] > threshold))
                elif family == "saliency":
                    pooled = self._stat(label, precision, name, ALL)
                    pytorch = None if saliency64 is None else saliency_pytorch.numpy()[rows]
                    for i in range(len(rows)):
                        for target in (stat, pooled):
                            target.cosine = min(target.cosine, cosine(a[i], e[i]))
                            target.rel_sum += relative_error(a[i], e[i])
                            if pytorch is not None:
                                target.rel_sum_pytorch += relative_error(pytorch[i], e[i])
                    pooled.add_error(a, e)

    def rows(self, *, engine_reference: dict | None = None) -> list[dict]:
        """The table: one row per (label, precision, output, kind), with its verdict.

        `engine_reference` maps (output, kind) -> PyTorch float32's saliency error recorded at
        export; with it, saliency rows are judged as an engine against onnxruntime."""
        out = []
        for (label, precision, name, kind), s in sorted(self.stats.items(), key=_row_order):
            tol = TOLERANCES[precision]
            rel = math.sqrt(s.sq_err / s.sq_ref) if s.sq_ref else (0.0 if s.sq_err == 0 else math.inf)
            row = {
                "graph": label,
                "precision": precision,
                "output": name,
                "kind": kind,
                "samples": s.samples,
                "max_abs": s.max_abs,
                "rel": rel,
            }
            family, problems = _kind(name), []
            if family == "class":
                row["agree"] = s.agree / s.decisive if s.decisive else 1.0
                row["ties"] = s.samples - s.decisive
                if rel > tol.class_rel:
                    problems.append(f"relative error {rel:.2e} > {tol.class_rel:g}")
                if row["agree"] < tol.class_agreement:
                    problems.append(f"class agreement {row['agree']:.4f} < {tol.class_agreement:g}")
            elif family == "skip":
                if rel > tol.skip_rel:
                    problems.append(f"relative error {rel:.2e} > {tol.skip_rel:g}")
            elif family == "ood_score":
                if rel > tol.ood_rel:
                    problems.append(f"relative error {rel:.2e} > {tol.ood_rel:g}")
            elif family == "in_distribution":
                row["agree"] = s.agree / s.decisive if s.decisive else 1.0
                row["ties"] = s.samples - s.decisive
                if row["agree"] < 1.0:
                    problems.append(f"verdict agreement {row['agree']:.4f} < 1 away from the threshold")
            elif family in ("mask", "mask_logits"):
                row["dice"] = s.dice
                if family == "mask" and s.max_abs > tol.mask_abs:
                    problems.append(f"max abs error {s.max_abs:.2e} > {tol.mask_abs:g}")
                if family == "mask_logits" and rel > tol.mask_logits_rel:
                    problems.append(f"relative error {rel:.2e} > {tol.mask_logits_rel:g}")
                if s.dice < tol.mask_dice:
                    problems.append(f"binarised Dice {s.dice:.4f} < {tol.mask_dice:g}")
            elif family == "saliency":
                row["rel"] = rel = s.rel_sum / s.samples  # mean per-image relative error
                row["cosine"] = s.cosine
                if engine_reference is None:
                    pytorch = s.rel_sum_pytorch / s.samples
                    limit, versus = tol.saliency_ratio, "PyTorch float32's own"
                else:
                    pytorch = engine_reference.get((name, kind), 0.0)
                    limit, versus = ENGINE_SALIENCY_RATIO, "(against onnxruntime) PyTorch float32's own"
                row["pytorch_rel"] = pytorch
                row["ratio"] = rel / pytorch if pytorch else (0.0 if rel == 0 else math.inf)
                if tol.saliency_rel is not None:
                    if kind == ALL and rel > tol.saliency_rel:
                        problems.append(
                            f"mean error {rel:.2e} > {tol.saliency_rel:g} ({precision} backward half)"
                        )
                elif kind == ALL and row["ratio"] > limit:
                    problems.append(
                        f"mean error {rel:.2e} is {row['ratio']:.2f}x {versus} {pytorch:.2e} (limit {limit:g}x)"
                    )
                if s.cosine < tol.saliency_cosine:
                    problems.append(f"cosine {s.cosine:.5f} < {tol.saliency_cosine:g}")
            row["ok"] = not problems
            row["problems"] = problems
            out.append(row)
        return out


def _row_order(item):
    (label, precision, name, kind), _ = item
    graph = label.split(".")[0]
    graph_index = list(GRAPHS).index(graph) if graph in GRAPHS else len(GRAPHS)
    outputs = GRAPHS[graph].outputs if graph in GRAPHS else ()
    return (graph_index, label, outputs.index(name) if name in outputs else 99, (*KINDS, ALL).index(kind))


# --------------------------------------------------------------------------- running

#: the runtimes the CPU flavour serves exported graphs with, and the label suffix of their rows
SERVING_RUNTIMES = {"onnxruntime": "", "openvino": ".openvino"}


def installed_runtimes() -> list[str]:
    """The serving runtimes importable here (onnxruntime always is: mmtrt depends on it)."""
    from mmtrt.runtimes import openvino

    return ["onnxruntime"] + (["openvino"] if openvino.available() else [])


def runtime_label(graph: str, runtime: str) -> str:
    return graph + SERVING_RUNTIMES[runtime]


def serving_runners(files: dict[str, object], runtimes: Iterable[str]) -> dict[tuple[str, str, str], Runner]:
    """(label, graph, "fp32") -> a runner of each graph's float32 ONNX file (`files`: graph ->
    path or serialized model) in each of `runtimes`: onnxruntime labelled by the graph's name,
    OpenVINO (precision hint f32) `<graph>.openvino`."""
    from mmtrt.runtimes import openvino, ort

    make = {"onnxruntime": ort.runner, "openvino": openvino.runner}
    unknown = sorted(set(runtimes) - set(SERVING_RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}: choose from {', '.join(SERVING_RUNTIMES)}")
    return {
        (runtime_label(graph, runtime), graph, "fp32"): make[runtime](source)
        for runtime in runtimes
        for graph, source in files.items()
    }


def validate(
    runners: dict[tuple[str, str, str], Runner],
    model: MultiMix,
    max_batch: int,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict:
    """Run every runner on every validation batch against PyTorch and return the parity report.

    `runners` maps (label, graph, precision) -> a function from input arrays to output arrays;
    label is what the table calls it (e.g. "encoder" or "encoder.fp16").
    """
    references = ReferenceModel(model)
    check = ParityCheck(float(model.ood.threshold))
    batches = validation_batches(max_batch)
    channels = model.config["in_channels"]
    for batch in progress(batches):
        ref = references(batch.images(channels))
        for (label, graph, precision), run in runners.items():
            outputs = run(ref.inputs(graph))
            check.add(
                label,
                precision,
                outputs,
                ref.outputs(graph),
                batch.kinds,
                saliency64=ref.saliency64,
                saliency_pytorch=ref.tensors["saliency"],
            )
    return report(check.rows(), batches)


def validate_against(
    runners: dict[tuple[str, str, str], Runner],
    reference_runners: dict[str, Runner],
    parity: dict,
    channels: int = 1,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
    ood_threshold: float = math.inf,
) -> dict:
    """Check runners (TensorRT engines) against reference runners (onnxruntime, by graph) on the
    export's validation inputs, reading PyTorch's saliency errors from the export's parity report."""
    batches = [ValidationBatch(tuple(b["kinds"]), tuple(b["seeds"])) for b in parity["inputs"]]
    pytorch_error = {
        (r["output"], r["kind"]): r["pytorch_rel"]
        for r in parity["rows"]
        if r["output"] == "saliency" and r["precision"] == "fp32" and r["graph"] == "saliency"
    }
    check = ParityCheck(ood_threshold)
    for batch in progress(batches):
        images = batch.images(channels).numpy()
        # the reference tensors: the joint pipeline's (the decoder takes what the saliency graph
        # gives), and the other graphs' own outputs when a runner of them is checked
        reference = run_pipeline(reference_runners, images, "joint")
        for (label, graph, precision), run in runners.items():
            inputs = {name: reference[name] for name in GRAPHS[graph].inputs}
            if graph not in PIPELINES["joint"]:
                reference.update(reference_runners[graph](inputs))
            expected = {name: reference[name] for name in GRAPHS[graph].outputs}
            check.add(label, precision, run(inputs), expected, batch.kinds)
    return report(check.rows(engine_reference=pytorch_error), batches)


def report(rows: list[dict], batches: list[ValidationBatch]) -> dict:
    failures = [
        f"{r['graph']} [{r['precision']}] {r['output']} on {r['kind']} images: {p}"
        for r in rows
        for p in r["problems"]
    ]
    return {
        "passed": not failures,
        "failures": failures,
        "tolerances": {name: asdict(t) for name, t in TOLERANCES.items()},
        "engine_saliency_ratio": ENGINE_SALIENCY_RATIO,
        "inputs": [{"batch": b.size, "kinds": list(b.kinds), "seeds": list(b.seeds)} for b in batches],
        "batch_sizes": sorted({b.size for b in batches}),
        "rows": rows,
    }


# --------------------------------------------------------------------------- the table


def format_table(rows: list[dict]) -> str:
    """The parity table, skips folded into one row per kind (the JSON keeps each)."""
    folded: dict[tuple, dict] = {}
    for r in rows:
        name = "skip1-5" if r["output"] in SKIPS else r["output"]
        key = (r["graph"], r["precision"], name, r["kind"])
        if key not in folded:
            folded[key] = dict(r, output=name)
        else:
            f = folded[key]
            f["max_abs"], f["rel"] = max(f["max_abs"], r["max_abs"]), max(f["rel"], r["rel"])
            f["ok"] = f["ok"] and r["ok"]
    header = (
        "graph",
        "prec",
        "output",
        "kind",
        "n",
        "max abs",
        "rel err",
        "agree",
        "dice",
        "cosine",
        "x PyTorch",
        "",
    )
    lines = [header]
    for r in folded.values():
        lines.append(
            (
                r["graph"],
                r["precision"],
                r["output"],
                r["kind"],
                str(r["samples"]),
                f"{r['max_abs']:.2e}",
                f"{r['rel']:.2e}",
                f"{r['agree']:.3f}" if "agree" in r else "",
                f"{r['dice']:.4f}" if "dice" in r else "",
                f"{r['cosine']:.5f}" if "cosine" in r else "",
                f"{r['ratio']:.2f}" if "ratio" in r else "",
                "ok" if r["ok"] else "FAIL",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
