"""--seg-batch: the segmentation streams get their own batch size; the classification streams
keep --batch; steps per epoch count each stream's own batches."""

from __future__ import annotations

import numpy as np
import pytest

from train.config import TrainConfig
from train.data import Pools, StepBatches, steps_per_epoch

SIZE = 32


class _Items:
    def __init__(self, n: int, with_mask: bool):
        self.n, self.with_mask = n, with_mask

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = np.full((SIZE, SIZE), (i + 1) / 100, np.float32)
        return (img, (img > 0).astype(np.float32)) if self.with_mask else (img, i % 2)


def test_seg_batch_sizes_the_seg_streams_only():
    pools = Pools(
        _Items(10, True), _Items(30, False), np.arange(3), np.arange(3, 10), np.arange(6), np.arange(6, 30)
    )
    cfg = TrainConfig(out="unused", image_size=SIZE, batch=4, seg_batch=1, randaug_ops=0)
    assert cfg.seg_batch_size == 1 and TrainConfig(out="unused", batch=4).seg_batch_size == 4
    b = StepBatches(cfg, pools)[2]
    assert b["seg_l_img"].shape[0] == b["seg_l_mask"].shape[0] == b["seg_u_img"].shape[0] == 1
    assert b["cls_l_img"].shape[0] == b["cls_w"].shape[0] == b["cls_s"].shape[0] == 4
    # one pass over the largest stream in its own batches: seg_u 7 / 1 = 7 steps, cls_u 24 / 4 = 6
    assert steps_per_epoch(cfg, pools) == 7
    assert steps_per_epoch(TrainConfig(out="unused", batch=4), pools) == 6
    with pytest.raises(ValueError, match="seg-batch"):
        TrainConfig(out="unused", seg_batch=-1)
