"""Does the torch.compile'd training step give the same loss and gradients as the eager one?

    python benchmarks/train_compile_check.py --device cpu|cuda [--backend inductor|aot_eager]
        [--size 64] [--batch 1] [--streams seg|all] [--no-bridge]

Builds one model (seed 0, dropout off so both runs see the same network), runs one step of
train.step.TrainModule eagerly and compiled on the same batch, and prints the loss and, for every
weight tensor, the relative L2 difference of its gradient (conv biases before instance norm are
skipped: their true gradient is 0 and what autograd returns is rounding noise). Exit code 1 if a
weight gradient differs by more than --tol.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtrt.data import synth_xray  # noqa: E402
from mmtrt.model import MultiMix  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.step import TrainModule, compile_step  # noqa: E402


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="inductor")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--streams", default="seg", choices=("seg", "all"))
    p.add_argument("--no-bridge", action="store_true")
    p.add_argument("--tol", type=float, default=1e-2)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = TrainConfig(
        out="x",
        image_size=args.size,
        batch_size=args.batch,
        w_u=0.25 if args.streams == "all" else 0.0,
        w_ce=1.0 if args.streams == "all" else 0.0,
        saliency_bridge=not args.no_bridge,
    )
    batch = batch_for(args.size, args.batch, device, args.streams)

    def step(compiled: bool):
        torch.manual_seed(0)
        model = MultiMix(dropout=0.0).to(device).train()
        module = TrainModule(model, cfg)
        fn = compile_step(module, device, backend=args.backend) if compiled else module
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
    print(
        json.dumps(
            {
                "device": str(device),
                "backend": args.backend,
                "streams": args.streams,
                "bridge": not args.no_bridge,
                "torch": torch.__version__,
                "loss_compiled": loss_c,
                "loss_eager": loss_e,
                "worst_weight_grad_rel_diff": worst,
                "rel_diff": {n: round(v, 6) for n, v in rel.items()},
            },
            indent=1,
        )
    )
    return 0 if worst < args.tol and abs(loss_c - loss_e) <= 1e-4 * abs(loss_e) else 1


if __name__ == "__main__":
    sys.exit(main())
