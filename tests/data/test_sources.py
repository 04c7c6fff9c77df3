"""Named synthetic sources (mmtrt/data/sources.py): layouts the loaders read, bit depths, sizes,
left/right masks, source.json; the default generator unchanged by the Anatomy hooks."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mmtrt.cli import main
from mmtrt.data import ClassificationFolder, SegmentationPairs, synth_xray
from mmtrt.data.sources import SOURCES, write_source_dataset
from mmtrt.data.synthetic import Anatomy, synth_xray_with_meta


def test_default_generator_output_is_unchanged():
    # sha256 of these arrays before Anatomy existed (commit caa2ea6)
    h = hashlib.sha256()
    for i in range(6):
        for size in (64, 256):
            a, b = synth_xray(i * 7 + 1, i % 2, size, 0.3)
            h.update(a.tobytes())
            h.update(b.tobytes())
    assert h.hexdigest() == "4966dd34e1354b293a9b6bbeba522634d76965caa91ba32a0bac13ee09d5bba3"
    a = synth_xray(5, 1, 64, 0.3)[0]
    assert np.array_equal(a, synth_xray(5, 1, 64, 0.3, anatomy=Anatomy())[0])


def test_anatomy_changes_shape():
    base = synth_xray_with_meta(3, 0, 128, 0.3)[1] > 0
    small = synth_xray_with_meta(3, 0, 128, 0.3, Anatomy(lung_h=0.8, lung_w=0.9))[1] > 0
    assert small.sum() < 0.9 * base.sum()
    big_heart = synth_xray_with_meta(3, 0, 128, 0.3, Anatomy(heart=1.3))[1] > 0
    assert big_heart.sum() < base.sum()
    img, mask, meta = synth_xray_with_meta(3, 0, 128, 0.3, Anatomy(effusion=1.0))
    assert meta["effusion"].any() and not (meta["effusion"] & (mask > 0)).any()
    clean = synth_xray_with_meta(3, 0, 128, 0.3, Anatomy(markers=False, borders=False))[2]
    assert clean["borders"] == (0, 0, 0, 0)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_layout_loads(name, tmp_path):
    spec = SOURCES[name]
    write_source_dataset(tmp_path, name, {"test": 4}, seed=1, difficulty=0.2)
    info = json.loads((tmp_path / "source.json").read_text())
    assert info["source"] == name and info["pixel_spacing_mm"] == spec.pixel_spacing_mm
    if spec.task == "cls":
        ds = ClassificationFolder(tmp_path / "cls", "test")
        assert sorted(ds.labels) == [0, 0, 1, 1]
        f = ds.paths[0]
        assert f.suffix == (".jpeg" if spec.fmt == "jpeg" else ".png")
    else:
        ds = SegmentationPairs(tmp_path / "seg", "test")
        assert ds.layout == spec.layout and len(ds) == 4
        f = ds.image_paths[0]
        img, mask = ds[0]
        assert 0.05 < float(mask.mean()) < 0.6
    with Image.open(f) as im:
        assert im.size[1] in range(spec.native_h[0], spec.native_h[1] + 1)
        assert im.mode.startswith("I;16") == (spec.fmt == "png16")
        if spec.fmt == "png16":
            arr = np.asarray(im)
            assert arr.max() > 255 and (arr % 16 == 0).all()  # 12-bit values in 16 bits
    img = ds[0][0]
    assert img.shape == (1, 256, 256) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_montgomery_masks_are_left_and_right(tmp_path):
    write_source_dataset(tmp_path, "montgomery", {"test": 2}, seed=0)
    base = tmp_path / "seg" / "test" / "ManualMask"
    left = np.asarray(Image.open(base / "leftMask" / "montgomery_000000.png")) > 0
    right = np.asarray(Image.open(base / "rightMask" / "montgomery_000000.png")) > 0
    assert left.any() and right.any() and not (left & right).any()
    # patient's left lung is on the image's right
    assert np.nonzero(left)[1].mean() > np.nonzero(right)[1].mean()


def test_sources_differ_in_intensity(tmp_path):
    means = {}
    for name in ("nih", "jsrt"):
        write_source_dataset(tmp_path / name, name, {"test": 4}, seed=0)
        root = tmp_path / name
        ds = (
            ClassificationFolder(root / "cls", "test")
            if SOURCES[name].task == "cls"
            else SegmentationPairs(root / "seg", "test")
        )
        means[name] = np.mean([ds[i][0].numpy().std() for i in range(len(ds))])
    assert means["nih"] < means["jsrt"]  # washed-out, low-contrast portable films


def test_synth_cli_source(tmp_path):
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--source", "kermany", "--n-cls", "2"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cls" / "train").rglob("*.jpeg"))) == 2
