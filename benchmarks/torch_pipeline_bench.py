"""PyTorch joint pipeline on one device: saliency parity, accuracy of each target, throughput.

    python -m benchmarks.torch_pipeline_bench --device cuda --batch-size 1,8,32 --out benchmarks/results/gpu_torch_h100
    python -m benchmarks.torch_pipeline_bench --device cpu --batch-size 1,8 --out benchmarks/results/cpu_torch

Sections of the report:
  parity      the explicit saliency graph against autograd on this device (float32, TF32 off),
              per image kind and batch size, and float32 autograd's own error against float64;
  accuracy    each target's outputs against float32 eager on the same images (what reduced
              precision and compilation cost);
  throughput  images/s and latency percentiles per target and batch size, with the ratio to
              the reference path (autograd saliency + a second encoder pass, as published).
Random weights (a seeded `MultiMix()`), realistic synthetic X-rays rotated across calls.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import command_line, script
from mmtrt.bench.measure import measure
from mmtrt.bench.report import environment, ratio_table, write_report
from mmtrt.bench.torch_targets import torch_targets
from mmtrt.cli_options import batch_sizes_option, device_option
from mmtrt.data import synth_xray
from mmtrt.model import MultiMix, reference_saliency


def xrays(n: int, seed: int) -> torch.Tensor:
    images = [synth_xray(seed + i, label=i % 2)[0] for i in range(n)]
    return torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1)


def random_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 256, 256, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def parity(model: MultiMix, device: torch.device) -> list[dict]:
    rows = []
    model64 = MultiMix().double().to(device).eval()
    model64.load_state_dict(model.state_dict())
    for kind, make in (("random", random_images), ("xray", xrays)):
        for batch in (1, 3, 8):
            images = make(batch, seed=1000 + batch).to(device)
            expected = reference_saliency(model.encoder, images)
            with torch.no_grad():
                graph = model.saliency(images)
                graph64 = model64.saliency(images.double())
            rows.append(
                {
                    "kind": kind,
                    "batch": batch,
                    "graph_vs_autograd_rel": rel(graph, expected),
                    "autograd_fp32_vs_fp64_rel": rel(expected, graph64),
                    "graph_fp32_vs_fp64_rel": rel(graph, graph64),
                }
            )
    return rows


def accuracy(targets: dict, images: torch.Tensor) -> list[dict]:
    exact = targets["eager"](images)
    rows = []
    for name, run in targets.items():
        probs, mask, saliency = run(images)
        agree = ((mask > 0.5) == (exact[1] > 0.5)).float().mean().item()
        rows.append(
            {
                "target": name,
                "probs_max_abs": float((probs - exact[0]).abs().max()),
                "class_agreement": float((probs.argmax(1) == exact[0].argmax(1)).float().mean()),
                "mask_pixel_agreement": agree,
                "saliency_rel": rel(saliency, exact[2]),
                "saliency_cosine": float(
                    F.cosine_similarity(saliency.flatten(1).double(), exact[2].flatten(1).double()).min()
                ),
            }
        )
    return rows


@script(__doc__)
@device_option("Where PyTorch runs [default: cuda where available, else cpu].", default=None)
@batch_sizes_option("1,8,32")
@click.option("--targets", default=None, help="Comma-separated subset [default: all for the device].")
@click.option("--seconds", type=float, default=2.0, help="Minimum timed seconds per measurement.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Report stem (writes .json, .md, .png).",
)
def main(device: str | None, batch_sizes: list[int], targets: str, seconds: float, out: Path) -> None:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Parity is judged in true float32: TF32 convolutions would add ~1e-3 of their own.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = MultiMix().to(device).eval()

    print("parity ...", flush=True)
    parity_rows = parity(model, device)
    targets = torch_targets(model, device, targets.split(",") if targets else None)
    print("accuracy ...", flush=True)
    accuracy_rows = accuracy(targets, xrays(8, seed=7).to(device))  # batch 8: compiled targets reuse it

    env = environment()
    notes = [
        f"device {device}; TF32 off; random-initialised MultiMix (1,965,155 parameters); synthetic X-rays 1x256x256",
        "x_reference: images/s over the reference path's (autograd saliency + second encoder pass) at the same batch, same run",
    ]
    measurements = []
    pool = xrays(64, seed=0)
    for batch in batch_sizes:
        batches = [pool[(i * batch) % 64 :][:batch].to(device) for i in range(4)]
        batches = [b if len(b) == batch else pool[:batch].to(device) for b in batches]
        for name, run in targets.items():
            m = measure(name, run, batches, min_seconds=seconds)
            print(
                f"{name:>14} batch {batch:>3}: {m.images_per_s:8.1f} images/s, p50 {m.latency_ms['p50']:.2f} ms",
                flush=True,
            )
            measurements.append(m)
        # Written after every batch size, so a run cut short still leaves its figures.
        rows = ratio_table(measurements, baseline="reference")
        write_report(
            out,
            title=f"PyTorch joint pipeline on {env['gpu'] or env['cpu']}",
            command=command_line(),
            env=env,
            sections={"parity": parity_rows, "accuracy": accuracy_rows, "throughput": rows},
            notes=notes,
            plot_rows=rows,
        )
    click.echo(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
