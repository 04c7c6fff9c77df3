"""The benchmark's PyTorch targets compute the same outputs, and its measurement counts right."""

from __future__ import annotations

import torch

from conftest import flat_region_images, relative_error
from mmtrt.bench.measure import measure, percentiles
from mmtrt.bench.report import markdown_table, ratio_table
from mmtrt.bench.torch_targets import joint, reference_joint


def test_reference_path_and_shared_pass_agree(model):
    images = flat_region_images(3, seed=21)
    ref_probs, ref_mask, ref_saliency = reference_joint(model, images)
    with torch.no_grad():
        probs, mask, saliency = joint(model, images)
    assert torch.equal(probs, ref_probs)  # same encoder ops in the same order
    assert relative_error(saliency, ref_saliency) <= 1e-5
    assert (mask - ref_mask).abs().max() <= 1e-4


def test_measure_rotates_batches_and_reports_percentiles():
    batches = [torch.full((2, 1, 4, 4), float(i + 1)) for i in range(3)]
    seen = []
    m = measure("probe", lambda b: seen.append(float(b[0, 0, 0, 0])), batches, warmup=2, min_calls=7, min_seconds=0)
    assert m.calls == 7 and m.batch == 2
    assert seen == [1, 2, 1, 2, 3, 1, 2, 3, 1]  # warm-up calls, then every batch in turn
    assert m.latency_ms["p50"] <= m.latency_ms["p90"] <= m.latency_ms["p99"]
    assert percentiles([1, 2, 3, 4])["p50"] == 2.5


def test_ratio_table_quotes_each_target_against_the_baseline_at_its_batch():
    from mmtrt.bench.measure import Measurement

    lat = {"p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0}
    rows = ratio_table([Measurement("reference", 8, 5, 10.0, lat), Measurement("fast", 8, 5, 35.0, lat),
                        Measurement("fast", 1, 5, 3.0, lat)], baseline="reference")
    assert [r["x_reference"] for r in rows] == [1.0, 3.5, None]
    assert "| fast | 8 | 35 |" in markdown_table(rows)


def test_cpu_peak_memory_is_the_resident_high_water_mark_of_the_timed_calls():
    import numpy as np

    from mmtrt.bench.measure import reset_peak_rss, resident_mb

    batches = [torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)]
    touch_200_mb = lambda b: float(np.ones(200 * 2**20 // 8).sum())  # noqa: E731 (allocated and written)
    if not reset_peak_rss():  # no /proc/self/clear_refs to write: no figure rather than a wrong one
        assert measure("probe", lambda b: None, batches, warmup=0, min_calls=2, min_seconds=0).peak_memory_mb is None
        return
    before = resident_mb()
    allocating = measure("alloc", touch_200_mb, batches, warmup=1, min_calls=2, min_seconds=0)
    assert allocating.peak_memory_mb >= before + 190
    before = resident_mb()  # the warm-up's 200 MB above are not a peak of these timed calls
    idle = measure("idle", lambda b: None, batches, warmup=1, min_calls=2, min_seconds=0)
    assert before - 1 <= idle.peak_memory_mb < before + 50
