"""Training configuration: one dataclass, from which the command line is generated.

Every field carries its help text in ``metadata["help"]``, so ``mmtrt train --help`` (and
``python -m train --help``) documents every option and a new field cannot be added without one
(train/command.py raises otherwise).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
AMP_SCOPES = ("full", "decoder")
COMPILE_MODES = ("auto", "on", "off")
DEVICES = ("auto", "cpu", "cuda")
METRIC_NAMES = (
    "accuracy",
    "f1_normal",
    "f1_pneumonia",
    "auroc",
    "dice",
    "jaccard",
    "ssim",
    "avg_hausdorff",
    "hd95",
    "assd",
    "precision",
    "recall",
)

# Fields renamed since runs were saved (old name -> name now): older runs still resume.
RENAMED_FIELDS = {"batch": "batch_size"}


def _f(default: Any, help: str, **kw: Any):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- where things go ------------------------------------------------------------------------
    out: str = _f(
        None,
        "Run folder: checkpoints (best.pt, last.pt), log.jsonl, metrics.json, config.json.",
        required=True,
    )
    resume: bool = _f(
        False,
        "Continue the run in --out from its last.pt (written every --ckpt-every steps and "
        "at each epoch end). Fails if there is none. The run's saved config is used; "
        "only --epochs, --max-steps, --progress, --workers, --compile, --ckpt-every, --log-every and --device may differ (they do not change the weights, except a compiled step rounding differently).",
    )
    # --- data -----------------------------------------------------------------------------------
    cls_data: str | None = _f(
        None,
        "Kermany-style classification root holding train/ and val/ (and optionally "
        "test/) with NORMAL/ and PNEUMONIA/ subfolders. Default: synthetic data.",
    )
    seg_data: str | None = _f(
        None,
        "JSRT- or Montgomery-style segmentation root holding train/ and val/ (and "
        "optionally test/). Default: synthetic data.",
    )
    synth_cache: str | None = _f(
        None,
        "Folder for the generated synthetic data sets (used when --cls-data or "
        "--seg-data is not given). Default: $XDG_CACHE_HOME/mmtrt/synthetic "
        "(~/.cache/mmtrt/synthetic).",
    )
    synth_cls: str = _f("400,100,100", "Synthetic classification images per split train,val,test.")
    synth_seg: str = _f("60,20,20", "Synthetic segmentation image/mask pairs per split train,val,test.")
    synth_difficulty: float = _f(0.5, "Synthetic pneumonia subtlety in [0,1] (0 obvious, 1 invisible).")
    synth_seed: int = _f(0, "Seed of the synthetic data sets (independent of --seed).")
    image_size: int = _f(256, "Image side in pixels (a multiple of 32; the published model uses 256).")
    seg_labels: int = _f(
        10,
        "Segmentation label budget: labelled training pairs (-1 = all). The rest of the "
        "segmentation training set is used unlabelled.",
    )
    cls_labels: int = _f(
        100,
        "Classification label budget: labelled training images (-1 = all). The rest is "
        "used unlabelled (weak + strong views of the same image).",
    )
    batch_size: int = _f(
        10,
        "Images per stream per step (five streams: labelled seg, unlabelled seg, labelled cls, "
        "weak and strong views of unlabelled cls; the reference uses 10 -> 50 images).",
    )
    seg_batch: int = _f(
        0,
        "Images per segmentation stream (labelled and unlabelled seg) per step, when it should "
        "differ from --batch-size (0 = --batch-size). A segmentation image costs about 4x a "
        "classification one (saliency graph, decoder, double backward).",
    )
    workers: int = _f(0, "DataLoader worker processes (0 = load in the training process).")
    cutout: float = _f(
        0.0,
        "Cutout on the strong view: side of the square hole as a fraction of the image "
        "(0 = off; FixMatch uses up to 0.5).",
    )
    randaug_ops: int = _f(
        2,
        "RandAugment operations per strong view (drawn with replacement, each applied "
        "with probability 0.5, magnitude uniform in 1..9 of 10).",
    )
    # --- objective ------------------------------------------------------------------------------
    w_ce: float = _f(
        1.0, "Weight of the supervised cross-entropy (labelled classification). 0 drops the stream."
    )
    w_dice: float = _f(5.0, "Weight of the soft Dice loss (labelled segmentation). 0 drops the stream.")
    w_u: float = _f(
        0.25,
        "Weight of the FixMatch pseudo-label loss L_u (weak/strong unlabelled "
        "classification). 0 drops both streams.",
    )
    w_kl: float = _f(
        0.01,
        "Weight of KL_seg, the segmentation consistency term (see train/losses.py). "
        "0 drops the unlabelled segmentation stream.",
    )
    threshold: float = _f(0.7, "Confidence threshold of the pseudo-labels of L_u.")
    saliency_bridge: bool = _f(
        True,
        "Feed the classifier's saliency to the decoder (the MultiMix bridge). "
        "--no-saliency-bridge feeds zeros instead (a plain multi-task U-Net).",
        negatable=True,
    )
    detach_saliency: bool = _f(
        False,
        "Stop gradients at the saliency map (the reference behaviour). By default "
        "the loss differentiates through the explicit saliency graph (a double "
        "backward into the encoder).",
    )
    # --- optimisation ---------------------------------------------------------------------------
    epochs: int = _f(10, "Epochs (the reference trains 100).")
    steps_per_epoch: int = _f(0, "Steps per epoch (0 = one pass over the largest training stream).")
    max_steps: int = _f(
        0,
        "Stop after this many steps in total (0 = no limit); the run still validates and "
        "checkpoints at the stop.",
    )
    lr: float = _f(1e-4, "Adam learning rate.")
    lr_step: int = _f(8, "StepLR period in epochs (learning rate x --lr-gamma every --lr-step epochs).")
    lr_gamma: float = _f(0.1, "StepLR factor.")
    seed: int = _f(
        0,
        "Seed of everything random in training: label split, sampling order, augmentations, "
        "dropout, initial weights. The same seed gives the same weights, resumed or not.",
    )
    # --- execution ------------------------------------------------------------------------------
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.", choices=DEVICES)
    precision: str = _f(
        "fp32",
        "Autocast precision. fp16 uses a GradScaler; instance-norm statistics and the "
        "losses always run in fp32.",
        choices=PRECISIONS,
    )
    amp_scope: str = _f(
        "full",
        "What autocast covers: the whole network (full) or only the decoder "
        "(decoder: the encoder and its saliency graph stay fp32).",
        choices=AMP_SCOPES,
    )
    compile: str = _f(
        "auto",
        "torch.compile the training step (forward + losses; AOT autograd compiles the "
        "backward, double-backward saliency included). auto: on for CUDA, falling back "
        "to eager with a warning if compilation fails; eager on CPU, where the compiled "
        "step was no faster, with or without bf16 hardware, and compiling takes minutes "
        "(benchmarks/results/train_bench_cpu.md, train_bench_cpu_bf16.md); on: compile on any "
        "device and fail on errors; off: eager.",
        choices=COMPILE_MODES,
    )
    ckpt_every: int = _f(
        50,
        "Also write last.pt every this many steps inside an epoch (0 = only at epoch "
        "ends), so that --resume loses little work after a crash.",
    )
    log_every: int = _f(10, "Write a training record to log.jsonl every this many steps.")
    select_metric: str = _f(
        "auto",
        "Validation metric that picks best.pt (higher is better): auto = mean of "
        "the accuracy and the Dice of the tasks that are trained, or one of "
        + ", ".join(METRIC_NAMES)
        + " (avg_hausdorff, hd95, assd: lower is better).",
    )
    progress: str = _f(
        "auto", "Progress bar: auto (when stderr is a terminal), on, off.", choices=("auto", "on", "off")
    )
    flush_denormal: bool = _f(
        True,
        "On CPU, flush denormal floats to zero (the input-gradient graph produces "
        "many; they make CPU arithmetic several times slower).",
        negatable=True,
    )

    @property
    def seg_batch_size(self) -> int:
        """Images per segmentation stream: --seg-batch, or --batch-size when that is 0."""
        return self.seg_batch or self.batch_size

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.image_size % 32 or self.image_size < 32:
            raise ValueError(f"--image-size must be a positive multiple of 32, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.seg_batch < 0:
            raise ValueError("--seg-batch must be >= 0 (0 = --batch-size)")
        if min(self.w_ce, self.w_dice, self.w_u, self.w_kl) < 0:
            raise ValueError("loss weights must be >= 0")
        if not any((self.w_ce, self.w_dice, self.w_u)):
            raise ValueError("nothing to train: --w-ce, --w-dice and --w-u are all 0")
        if not 0.0 <= self.cutout < 1.0:
            raise ValueError("--cutout must be in [0, 1)")
        for name in ("synth_cls", "synth_seg"):
            self.split_counts(name)
        if self.select_metric not in ("auto", *METRIC_NAMES):
            raise ValueError(
                f"--select-metric must be auto or one of {METRIC_NAMES}, got {self.select_metric!r}"
            )

    def split_counts(self, name: str) -> dict[str, int]:
        parts = [int(p) for p in str(getattr(self, name)).split(",")]
        if len(parts) != 3 or min(parts) < 0 or parts[0] < 1 or parts[1] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be train,val,test counts (train, val >= 1)")
        return dict(zip(("train", "val", "test"), parts))

    # which streams / heads the objective needs ---------------------------------------------------
    @property
    def uses_cls(self) -> bool:
        return self.w_ce > 0

    @property
    def uses_ssl(self) -> bool:
        return self.w_u > 0

    @property
    def uses_seg(self) -> bool:
        return self.w_dice > 0

    @property
    def uses_seg_unlabelled(self) -> bool:
        return self.w_kl > 0 and self.w_dice > 0

    @property
    def uses_decoder(self) -> bool:
        return self.uses_seg

    @property
    def trains_classifier(self) -> bool:
        return self.uses_cls or self.uses_ssl

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def current_names(d: dict[str, Any]) -> dict[str, Any]:
        """A saved config (a run's config.json) with the fields renamed since under their names now."""
        return {RENAMED_FIELDS.get(k, k): v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cls.current_names(d).items() if k in names})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
