"""Data for training: where the data sets are, the label-budget split, and the five streams.

Streams (one batch of ``cfg.batch_size`` images each per step):

    seg_l   labelled segmentation pairs (image, mask), no augmentation (as the reference)
    seg_u   unlabelled segmentation images (the rest of the segmentation training set)
    cls_l   labelled classification images (weak augmentation) and labels
    cls_w / cls_s   the weak and the strong view of the SAME unlabelled classification images:
            one dataset item yields both (the reference drew them from two unshuffled loaders)

Determinism: the batch of step ``g`` is a pure function of (seed, g, rank). Each stream walks an
endless sequence of shuffled passes over its pool (pass ``c`` uses the permutation seeded by
(seed, stream, c)); with ``world`` processes, rank ``r`` takes positions
``(g * world + r) * batch + j``. Each item's augmentation draws from its own generator seeded by
(seed, stream, g, rank, j). So the ``itertools.cycle`` replays of the reference are gone, no state
has to be saved to resume (a resumed run restarts at step ``g`` and sees the same images), and
DataLoader workers cannot change the result.

Label budgets: a permutation of the training set seeded by (seed, stream) picks the labelled
items; the rest is the unlabelled pool. The split is deterministic from ``--seed``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmtrt.data import ClassificationFolder, SegmentationPairs, write_synthetic_datasets

from . import augment
from .config import TrainConfig

log = logging.getLogger(__name__)

STREAM_IDS = {"seg_l": 0, "seg_u": 1, "cls_l": 2, "cls_u": 3}
_SPLIT_SALT = 101
_AUG_SALT = 202
_PERM_SALT = 303
MAX_CACHED_BYTES = 1 << 30  # decoded images are kept in memory while a data set is below this


# ------------------------------------------------------------------------------------------------
# Where the data is
# ------------------------------------------------------------------------------------------------
def default_synth_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmtrt" / "synthetic"


def synthetic_root(cfg: TrainConfig) -> Path:
    """Generate (once) and return the synthetic data root for this configuration.

    The folder name encodes every generator argument; it is written to a temporary folder and
    renamed into place, so a crash or a concurrent run never leaves a half-written data set."""
    cache = Path(cfg.synth_cache) if cfg.synth_cache else default_synth_cache()
    n_cls, n_seg = cfg.split_counts("synth_cls"), cfg.split_counts("synth_seg")
    key = (
        f"s{cfg.synth_seed}-d{cfg.synth_difficulty:g}-px{cfg.image_size}-"
        f"cls{'_'.join(map(str, n_cls.values()))}-seg{'_'.join(map(str, n_seg.values()))}"
    )
    root = cache / key
    if (root / "summary.json").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
    try:
        summary = write_synthetic_datasets(
            tmp,
            n_cls=n_cls,
            n_seg=n_seg,
            seed=cfg.synth_seed,
            difficulty=cfg.synth_difficulty,
            size=cfg.image_size,
        )
        summary["root"] = str(root)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: use its copy
            if not (root / "summary.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def data_roots(cfg: TrainConfig) -> tuple[Path, Path]:
    """(classification root, segmentation root), each holding train/ and val/ (and maybe test/)."""
    synth = None
    if cfg.cls_data is None or cfg.seg_data is None:
        synth = synthetic_root(cfg)
    cls_root = Path(cfg.cls_data) if cfg.cls_data else synth / "cls"
    seg_root = Path(cfg.seg_data) if cfg.seg_data else synth / "seg"
    return cls_root, seg_root


def has_split(root: Path, split: str) -> bool:
    return (Path(root) / split).is_dir()


# ------------------------------------------------------------------------------------------------
# Label budgets
# ------------------------------------------------------------------------------------------------
def split_budget(n: int, budget: int, seed: int, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """(labelled indices, unlabelled indices) of a training set of ``n`` items; ``budget`` -1 = all."""
    if budget < 0 or budget >= n:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng([seed, STREAM_IDS[stream], _SPLIT_SALT]).permutation(n)
    return np.sort(perm[:budget]), np.sort(perm[budget:])


# ------------------------------------------------------------------------------------------------
# Decoded-image cache around the loaders of mmtrt.data
# ------------------------------------------------------------------------------------------------
class CachedItems:
    """``ds[i]`` as numpy arrays, decoded once and kept (per process) while the set is small."""

    def __init__(self, dataset: Dataset, size: int):
        self.dataset = dataset
        self.keep = len(dataset) * size * size * 4 * 2 <= MAX_CACHED_BYTES
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        a, b = self.dataset[i]
        item = (a[0].numpy(), b[0].numpy() if torch.is_tensor(b) else int(b))
        if self.keep:
            self._cache[i] = item
        return item


@dataclass
class Pools:
    seg: CachedItems | None
    cls: CachedItems | None
    seg_l: np.ndarray
    seg_u: np.ndarray
    cls_l: np.ndarray
    cls_u: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {
            "seg_labelled": len(self.seg_l),
            "seg_unlabelled": len(self.seg_u),
            "cls_labelled": len(self.cls_l),
            "cls_unlabelled": len(self.cls_u),
        }


def make_pools(cfg: TrainConfig, cls_root: Path, seg_root: Path) -> Pools:
    seg = cls = None
    seg_l = seg_u = cls_l = cls_u = np.arange(0)
    if cfg.uses_seg:
        seg = CachedItems(SegmentationPairs(seg_root, "train", size=cfg.image_size), cfg.image_size)
        seg_l, seg_u = split_budget(len(seg), cfg.seg_labels, cfg.seed, "seg_l")
        if not cfg.uses_seg_unlabelled:
            seg_u = np.arange(0)
    if cfg.trains_classifier:
        cls = CachedItems(ClassificationFolder(cls_root, "train", size=cfg.image_size), cfg.image_size)
        cls_l, cls_u = split_budget(len(cls), cfg.cls_labels, cfg.seed, "cls_l")
        if not cfg.uses_cls:
            cls_l = np.arange(0)
        if not cfg.uses_ssl:
            cls_u = np.arange(0)
    if cfg.uses_seg_unlabelled and len(seg_u) == 0:
        log.warning("no unlabelled segmentation images (label budget covers the training set): KL_seg is off")
    if cfg.uses_ssl and len(cls_u) == 0:
        log.warning("no unlabelled classification images (label budget covers the training set): L_u is off")
    return Pools(seg, cls, seg_l, seg_u, cls_l, cls_u)


# ------------------------------------------------------------------------------------------------
# The step dataset: item g = the whole (five-stream) batch of step g
# ------------------------------------------------------------------------------------------------
class StepBatches(Dataset):
    """``batches[g]`` -> dict of tensors for step ``g`` (see the module docstring). Use with
    ``DataLoader(batches, batch_size=None, sampler=range(start, stop))``."""

    def __init__(self, cfg: TrainConfig, pools: Pools, rank: int = 0, world: int = 1, total_steps: int = 0):
        self.cfg, self.pools, self.rank, self.world = cfg, pools, rank, world
        self.total_steps = total_steps
        self._perms: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.total_steps

    def _indices(self, stream: str, pool: np.ndarray, step: int) -> list[int]:
        b = self.cfg.seg_batch_size if stream.startswith("seg") else self.cfg.batch_size
        n = len(pool)
        out = []
        for j in range(b):
            p = (step * self.world + self.rank) * b + j
            cycle, k = divmod(p, n)
            perm = self._perms.get((stream, cycle))
            if perm is None:
                perm = np.random.default_rng(
                    [self.cfg.seed, STREAM_IDS[stream], cycle, _PERM_SALT]
                ).permutation(n)
                if len(self._perms) > 16:
                    self._perms.clear()
                self._perms[(stream, cycle)] = perm
            out.append(int(pool[perm[k]]))
        return out

    def _rng(self, stream: str, step: int, j: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, STREAM_IDS[stream], step, self.rank, j, _AUG_SALT])

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        cfg, pools = self.cfg, self.pools
        out: dict[str, torch.Tensor] = {}

        def stack(arrays):
            return torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32, copy=False))

        if len(pools.seg_l):
            items = [pools.seg[i] for i in self._indices("seg_l", pools.seg_l, step)]
            out["seg_l_img"] = stack([im for im, _ in items])
            out["seg_l_mask"] = stack([m for _, m in items])
        if len(pools.seg_u):
            out["seg_u_img"] = stack([pools.seg[i][0] for i in self._indices("seg_u", pools.seg_u, step)])
        if len(pools.cls_l):
            idx = self._indices("cls_l", pools.cls_l, step)
            out["cls_l_img"] = stack(
                [augment.weak(pools.cls[i][0], self._rng("cls_l", step, j)) for j, i in enumerate(idx)]
            )
            out["cls_l_y"] = torch.tensor([pools.cls[i][1] for i in idx], dtype=torch.long)
        if len(pools.cls_u):
            weak, strong = [], []
            for j, i in enumerate(self._indices("cls_u", pools.cls_u, step)):
                rng = self._rng("cls_u", step, j)  # one item -> both views (independent draws)
                image = pools.cls[i][0]
                weak.append(augment.weak(image, rng))
                strong.append(augment.strong(image, rng, cfg.randaug_ops, cfg.cutout))
            out["cls_w"], out["cls_s"] = stack(weak), stack(strong)
        return out


def images_per_step(batch: dict[str, torch.Tensor]) -> int:
    return sum(v.shape[0] for k, v in batch.items() if k.endswith("_img") or k in ("cls_w", "cls_s"))


def steps_per_epoch(cfg: TrainConfig, pools: Pools, world: int = 1) -> int:
    if cfg.steps_per_epoch > 0:
        return cfg.steps_per_epoch
    sb = cfg.seg_batch_size
    largest = max(
        -(-len(pools.seg_l) // sb),
        -(-len(pools.seg_u) // sb),
        *(-(-len(p) // cfg.batch_size) for p in (pools.cls_l, pools.cls_u)),
    )
    return max(1, -(-largest // world))
