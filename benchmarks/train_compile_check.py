"""Does the torch.compile'd training step give the same loss and gradients as the eager one?

    python -m benchmarks.train_compile_check --device cpu|cuda [--backend inductor|aot_eager]
        [--size 64] [--batch-size 1] [--streams seg|all] [--no-bridge]

Builds one model (seed 0, dropout off so both runs see the same network), runs one step of
train.step.TrainModule eagerly and compiled on the same batch, and prints the loss and, for every
weight tensor, the relative L2 difference of its gradient (conv biases before instance norm are
skipped: their true gradient is 0 and what autograd returns is rounding noise). Exit code 1 if a
weight gradient differs by more than --tol.
"""

from __future__ import annotations

import json

import click
import numpy as np
import torch

from benchmarks import script
from mmtrt.cli_options import batch_size_option, device_option
from mmtrt.data import synth_xray
from mmtrt.model import MultiMix
from train.config import TrainConfig
from train.step import TrainModule, compile_step


def batch_for(size: int, b: int, device, streams: str) -> dict[str, torch.Tensor]:
    def imgs(offset):
        arr = np.stack([synth_xray(offset + i, label=i % 2, size=size)[0] for i in range(b)])
        return torch.from_numpy(arr).float().div(255).unsqueeze(1).to(device)

    mask = np.stack([synth_xray(i, label=i % 2, size=size)[1] for i in range(b)])
    out = {
        "seg_l_img": imgs(0),
        "seg_l_mask": torch.from_numpy(mask > 127).float().unsqueeze(1).to(device),
        "seg_u_img": imgs(100),
    }
    if streams == "all":
        out.update(
            cls_l_img=imgs(200),
            cls_l_y=torch.arange(b, device=device) % 2,
            cls_w=imgs(300),
            cls_s=imgs(300).flip(-1),
        )
    return out


@script(__doc__)
@device_option()
@click.option("--backend", default="inductor", help="torch.compile's backend (aot_eager: no codegen).")
@click.option("--size", type=click.IntRange(min=32), default=64)
@batch_size_option("Images per stream.", default=1)
@click.option("--streams", type=click.Choice(["seg", "all"]), default="seg")
@click.option("--no-bridge", is_flag=True, help="A plain U-Net step (no saliency into the decoder).")
@click.option("--tol", type=float, default=1e-2, help="Largest weight-gradient relative difference.")
def main(
    device: str, backend: str, size: int, batch_size: int, streams: str, no_bridge: bool, tol: float
) -> None:
    device = torch.device(device)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = TrainConfig(
        out="x",
        image_size=size,
        batch_size=batch_size,
        w_u=0.25 if streams == "all" else 0.0,
        w_ce=1.0 if streams == "all" else 0.0,
        saliency_bridge=not no_bridge,
    )
    batch = batch_for(size, batch_size, device, streams)

    def step(compiled: bool):
        torch.manual_seed(0)
        model = MultiMix(dropout=0.0).to(device).train()
        module = TrainModule(model, cfg)
        fn = compile_step(module, device, backend=backend) if compiled else module
        loss, parts = fn(batch)
        loss.backward()
        return float(loss), {
            n: q.grad.detach().clone() for n, q in model.named_parameters() if q.grad is not None
        }

    loss_c, g_c = step(True)
    loss_e, g_e = step(False)
    rel = {
        n: float((g_c[n] - g).norm() / (g.norm() + 1e-12))
        for n, g in g_e.items()
        if not (n.endswith(".bias") and ("conv" in n))
    }
    worst = max(rel.values())
    click.echo(
        json.dumps(
            {
                "device": str(device),
                "backend": backend,
                "streams": streams,
                "bridge": not no_bridge,
                "torch": torch.__version__,
                "loss_compiled": loss_c,
                "loss_eager": loss_e,
                "worst_weight_grad_rel_diff": worst,
                "rel_diff": {n: round(v, 6) for n, v in rel.items()},
            },
            indent=1,
        )
    )
    if not (worst < tol and abs(loss_c - loss_e) <= 1e-4 * abs(loss_e)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
