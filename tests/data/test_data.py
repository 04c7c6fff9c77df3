"""mmtrt.data: synthetic generator, the one image normalisation, loaders and bad-file handling."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import encoded, png_header_only
from PIL import Image
from scipy import ndimage

from mmtrt.data import (
    MIN_CONTRAST_STD,
    ClassificationFolder,
    DataError,
    SegmentationPairs,
    load_image,
    load_mask,
    synth_xray,
    synth_xray_with_meta,
    write_synthetic_datasets,
)
from mmtrt.data.images import EncodedFile, read_image, sixteen_bit_scale


def _save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------------
# Synthetic generator
# ------------------------------------------------------------------------------------------------


def test_synth_is_deterministic_and_seed_dependent():
    a_img, a_mask = synth_xray(7, 1, 128, 0.3)
    b_img, b_mask = synth_xray(7, 1, 128, 0.3)
    assert a_img.tobytes() == b_img.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    c_img, c_mask = synth_xray(8, 1, 128, 0.3)
    assert a_img.tobytes() != c_img.tobytes() and a_mask.tobytes() != c_mask.tobytes()
    # Same seed = same patient: the label changes only the lungs (and their soft edge).
    n_img, n_mask = synth_xray(7, 0, 128, 0.3)
    assert np.array_equal(n_mask, a_mask)
    changed = n_img != a_img
    near_lungs = ndimage.binary_dilation(a_mask > 0, iterations=3)
    assert changed.any() and not changed[~near_lungs].any()


@pytest.mark.parametrize("size", [32, 100, 256])
def test_synth_shapes_and_anatomy(size):
    for seed in range(4):
        img, mask, meta = synth_xray_with_meta(seed, seed % 2, size, 0.5)
        assert img.shape == mask.shape == (size, size)
        assert img.dtype == mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        lungs = mask > 0
        assert 0.05 < lungs.mean() < 0.5
        assert not (lungs & ~meta["body"]).any(), "lung mask must lie inside the body"
        if size >= 100:
            # Two lung fields, left and right of the midline.
            labels, n = ndimage.label(lungs)
            assert n == 2
            cols = [np.nonzero(labels == k)[1].mean() for k in (1, 2)]
            assert min(cols) < size / 2 < max(cols)
            # Lungs darker than the rest of the body, body brighter than the air outside.
            b = meta["body"]
            if seed % 2 == 0:
                assert img[lungs].mean() < img[b & ~lungs].mean() - 20
            air = ~ndimage.binary_dilation(b, iterations=3)
            air[img == 255] = False  # markers
            assert img[b].mean() > img[air].mean() + 40


def test_synth_black_borders_and_saturated_markers():
    n_border = n_marker = 0
    for seed in range(40):
        img, mask, meta = synth_xray_with_meta(seed, 0, 128)
        t, b, le, ri = meta["borders"]
        for strip in (
            img[:t],
            img[128 - b :] if b else img[:0],
            img[:, :le],
            img[:, 128 - ri :] if ri else img[:, :0],
        ):
            assert (strip == 0).all()
        if t or b or le or ri:
            n_border += 1
            # Borders never cut the lungs.
            inner = np.zeros_like(mask, dtype=bool)
            inner[t : 128 - b, le : 128 - ri] = True
            assert not (mask.astype(bool) & ~inner).any()
        for y0, y1, x0, x1 in meta["saturated"]:
            assert (img[y0:y1, x0:x1] == 255).any()
            n_marker += 1
    assert n_border >= 10 and n_marker >= 5  # some images have them, not all


def test_synth_class_signal_and_difficulty():
    def gap(difficulty):
        means = {0: [], 1: []}
        for i in range(20):
            for label in (0, 1):
                img, mask = synth_xray(1000 * label + i, label, 128, difficulty)
                means[label].append(img[mask > 0].mean())
        return np.mean(means[1]) - np.mean(means[0])

    easy, hard = gap(0.0), gap(1.0)
    assert easy > 15  # grey levels, inside the lungs
    assert hard < easy / 3


def test_synth_rejects_bad_args():
    for kw in ({"label": 2}, {"size": 4}, {"difficulty": 1.5}):
        args = {"seed": 0, "label": 0, "size": 64, "difficulty": 0.5} | kw
        with pytest.raises(ValueError):
            synth_xray(**args)


# ------------------------------------------------------------------------------------------------
# Writing the layouts and reading them back
# ------------------------------------------------------------------------------------------------


def test_write_synthetic_datasets_round_trip(tmp_path):
    summary = write_synthetic_datasets(
        tmp_path, n_cls={"train": 6, "val": 2, "test": 3}, n_seg=2, seed=3, size=64
    )
    assert summary["cls"] == {
        "train": {"NORMAL": 3, "PNEUMONIA": 3},
        "val": {"NORMAL": 1, "PNEUMONIA": 1},
        "test": {"NORMAL": 2, "PNEUMONIA": 1},
    }
    assert summary["seg"] == {"train": 2, "val": 2, "test": 2}
    assert summary["files"] == 11 + 12
    assert not list(tmp_path.rglob(".*")), "no temp files left behind"

    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        ds = ClassificationFolder(tmp_path / "cls", split)
        assert len(ds) == n and ds.skipped == []
        for path, label in zip(ds.paths, ds.labels):
            assert path.parent.name == ("NORMAL", "PNEUMONIA")[label]
            assert path.name.startswith("synth_") and path.suffix == ".png"
        x, y = ds[0]
        assert x.shape == (1, 256, 256) and x.dtype == torch.float32 and isinstance(y, int)
        assert 0.0 <= x.min() and x.max() <= 1.0

        seg = SegmentationPairs(tmp_path / "seg", split)
        assert seg.layout == "jsrt" and len(seg) == 2
        x, m = seg[1]
        assert x.shape == m.shape == (1, 256, 256)
        assert set(torch.unique(m).tolist()) == {0.0, 1.0}

    # No two images share a seed: every file differs (across streams and splits too).
    digests = [hashlib.sha1(p.read_bytes()).hexdigest() for p in tmp_path.rglob("images/*.png")]
    digests += [hashlib.sha1(p.read_bytes()).hexdigest() for p in (tmp_path / "cls").rglob("*.png")]
    assert len(set(digests)) == len(digests) == 11 + 6

    # Deterministic files, and a smaller re-run leaves no stale images behind.
    before = (tmp_path / "cls/train/NORMAL/synth_000002.png").read_bytes()
    write_synthetic_datasets(tmp_path, n_cls={"train": 4}, n_seg=0, seed=3, size=64)
    assert (tmp_path / "cls/train/NORMAL/synth_000002.png").read_bytes() == before
    assert len(ClassificationFolder(tmp_path / "cls", "train")) == 4
    assert not list((tmp_path / "cls/val").rglob("*.png"))  # 0 this time: cleared
    assert not list((tmp_path / "seg").rglob("*.png"))


def test_montgomery_layout_merges_left_and_right(tmp_path):
    h, w = 40, 60
    img = (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)
    left = np.zeros((h, w), np.uint8)
    left[5:35, 5:25] = 255
    right = np.zeros((h, w), np.uint8)
    right[5:35, 35:55] = 255
    for name in ("MCUCXR_0001_0", "MCUCXR_0002_1"):
        _save(img, tmp_path / "CXR_png" / f"{name}.png")
        _save(left, tmp_path / "ManualMask/leftMask" / f"{name}.png")
        _save(right, tmp_path / "ManualMask/rightMask" / f"{name}.png")

    ds = SegmentationPairs(tmp_path, size=w)  # split=None: root holds the layout
    assert ds.layout == "montgomery" and len(ds) == 2
    x, m = ds[0]
    assert x.shape == m.shape == (1, w, w)
    expected = load_mask(tmp_path / "ManualMask/leftMask/MCUCXR_0001_0.png", w) + load_mask(
        tmp_path / "ManualMask/rightMask/MCUCXR_0001_0.png", w
    )
    assert torch.equal(m[0], torch.from_numpy(np.minimum(expected, 1.0)))
    assert m[0, :, : w // 2].sum() > 0 and m[0, :, w // 2 :].sum() > 0  # both lungs

    # A missing right mask is an image without (all of) its mask.
    (tmp_path / "ManualMask/rightMask/MCUCXR_0002_1.png").unlink()
    with pytest.raises(DataError, match="MCUCXR_0002_1"):
        SegmentationPairs(tmp_path)
    assert len(SegmentationPairs(tmp_path, on_bad="skip").skipped) == 1


# ------------------------------------------------------------------------------------------------
# load_image / load_mask
# ------------------------------------------------------------------------------------------------


def test_load_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (80, 120), dtype=np.uint8)
    rgb = np.stack([gray] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((80, 120, 1), 255, np.uint8)], axis=-1)
    files = {
        "l.png": _save(gray, tmp_path / "l.png"),
        "rgb.png": _save(rgb, tmp_path / "rgb.png"),
        "rgba.png": _save(rgba, tmp_path / "rgba.png"),
        "p.png": (lambda p: (Image.fromarray(rgb).convert("P").save(p), p)[1])(tmp_path / "p.png"),
        "x.JPEG": _save(rgb, tmp_path / "x.JPEG", format="JPEG", quality=95),
        "tall.png": _save(gray[:, :30], tmp_path / "tall.png"),
        "tiny.png": _save(np.array([[200, 10]], np.uint8), tmp_path / "tiny.png"),
        "small.png": _save(gray[:3, :5], tmp_path / "small.png"),
    }
    ref = load_image(files["l.png"])
    for name, path in files.items():
        x = load_image(path)
        assert x.shape == (256, 256) and x.dtype == np.float32, name
        assert 0.0 <= x.min() and x.max() <= 1.0, name
        if name in ("rgb.png", "rgba.png"):
            assert np.allclose(x, ref, atol=1e-6), name  # gray RGB(A) = the L image
    tiny = load_image(files["tiny.png"])  # 1 x 2 pixels: 200 on the left, 10 on the right
    assert tiny[:, 0].mean() > tiny[:, -1].mean() and np.isclose(tiny.max(), 200 / 255, atol=1e-6)
    assert np.allclose(load_image(files["x.JPEG"]), ref, atol=0.06)
    assert load_image(files["l.png"], size=64).shape == (64, 64)
    # Already the right size: exactly value / 255, no resampling.
    exact = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    assert np.array_equal(load_image(_save(exact, tmp_path / "e.png")), exact / np.float32(255))


def test_load_image_16_bit_scaled_by_the_bit_depth_its_pixels_use(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    p = _save(ramp, tmp_path / "ramp16.png")
    with Image.open(p) as im:
        assert im.mode.startswith("I;16")
    x = load_image(p, size=64)
    assert np.allclose(x, ramp / 65535.0, atol=1e-6)  # all 16 bits used: / 65535
    # 12-bit detector data in a 16-bit PNG: / 4095, not / 65535 (which made it nearly black)
    twelve = np.linspace(0, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    x = load_image(_save(twelve, tmp_path / "twelve16.png"), size=64)
    assert np.allclose(x, twelve / 4095.0, atol=1e-6)
    assert x.max() == pytest.approx(3000 / 4095, abs=1e-6)  # was 3000 / 65535 = 0.046
    # 8-bit data stored in 16 bits: / 255, as the same pixels in an 8-bit PNG
    eight = np.arange(64 * 64).reshape(64, 64) % 200
    same = load_image(_save(eight.astype(np.uint16), tmp_path / "eight16.png"), size=64)
    assert np.allclose(same, load_image(_save(eight.astype(np.uint8), tmp_path / "eight8.png"), size=64))
    # a dim 16-bit image stays dim (clipping at 255 would make it white)
    dim = np.full((50, 50), 1000, np.uint16)
    dim[:25] = 600
    x = load_image(_save(dim, tmp_path / "dim16.png"), size=50)
    assert np.allclose(np.unique(x), [600 / 1023, 1000 / 1023])  # 1000 needs 10 bits: / 1023
    assert [sixteen_bit_scale(m) for m in (0, 1, 255, 256, 1000, 4095, 4096, 65535)] == [
        255,
        255,
        255,
        511,
        1023,
        4095,
        8191,
        65535,
    ]


def test_bytes_in_memory_decode_as_the_file(tmp_path):
    """read_image of a file's bytes (EncodedFile, what the served multimix_image decodes) gives
    the pixels and metadata of read_image of the file; its errors name the bytes' name."""
    rng = np.random.default_rng(1)
    gray = synth_xray(4, label=1, size=300)[0][:, 20:]
    twelve = (gray.astype(np.uint16) * 16).astype(np.uint16)
    files = {
        "l.png": _save(gray, tmp_path / "l.png"),
        "rgb.png": _save(np.stack([gray] * 3, axis=-1), tmp_path / "rgb.png"),
        "x.jpg": _save(gray, tmp_path / "x.jpg", quality=90),
        "twelve16.png": _save(twelve, tmp_path / "twelve16.png"),
        "x.tif": _save(gray, tmp_path / "x.tif"),
    }
    for name, path in files.items():
        want, got = read_image(path), read_image(EncodedFile(path.read_bytes(), f"image of {name}"))
        np.testing.assert_array_equal(got.pixels, want.pixels, err_msg=name)
        assert got.meta == want.meta and (got.meta.rows, got.meta.columns) == gray.shape, name
    png = files["l.png"].read_bytes()
    cases = {
        "text": (
            b"hello, world",
            "not an image file (Pillow cannot identify it): 12 bytes beginning b'hello, world'",
        ),
        "noise": (bytes(rng.integers(0, 256, 300, dtype=np.uint8)), "not an image file"),
        "truncated": (png[: len(png) // 2], "unreadable, corrupt or truncated image"),
        "black": (encoded(np.zeros((50, 40), np.uint8)), "no contrast: all black image"),
        "bomb": (png_header_only(40_000, 40_000), "image too large, possible decompression bomb"),
    }
    for name, (data, problem) in cases.items():
        with pytest.raises(DataError) as e:
            load_image(EncodedFile(data, f"image {name}"))
        assert str(e.value).startswith(f"image {name}: {problem}"), str(e.value)
        assert e.value.problem.startswith(problem) and e.value.path.name == f"image {name}"


def test_images_without_contrast_are_refused(tmp_path):
    cases = {
        "black.png": np.zeros((40, 60), np.uint8),
        "white.png": np.full((40, 60), 255, np.uint8),
        "grey.png": np.full((40, 60), 128, np.uint8),
        "one-level.png": (np.arange(40 * 60).reshape(40, 60) % 2 == 0).astype(np.uint8) + 100,
        "black16.png": np.zeros((40, 60), np.uint16),
    }
    for name, arr in cases.items():
        with pytest.raises(DataError, match=r"no contrast: .*below the minimum 0\.0039") as e:
            load_image(_save(arr, tmp_path / name))
        assert str(e.value).startswith(f"{tmp_path / name}: "), name
    assert "all black" in _problem(tmp_path / "black.png") and "all white" in _problem(tmp_path / "white.png")
    # two grey levels on half the pixels each: 1 level apart (std 0.5/255) refused (above);
    # 4 levels apart (std 2/255) kept
    ok = (np.arange(40 * 60).reshape(40, 60) % 2 == 0).astype(np.uint8) * 4 + 100
    x = load_image(_save(ok, tmp_path / "two-levels.png"), size=60)
    assert x.std() >= MIN_CONTRAST_STD
    # the synthetic X-rays are far above the threshold
    stds = [load_image(_save(synth_xray(s, label=s % 2)[0], tmp_path / f"s{s}.png")).std() for s in range(6)]
    print(f"\nsynthetic X-ray std after normalisation: {min(stds):.3f}..{max(stds):.3f}")
    assert min(stds) > 20 * MIN_CONTRAST_STD


def _problem(path):
    with pytest.raises(DataError) as e:
        load_image(path)
    return e.value.problem


def test_load_mask_conventions(tmp_path):
    m = np.zeros((30, 50), np.uint8)
    m[10:20, 10:40] = 1
    a = load_mask(_save(m, tmp_path / "m01.png"), size=50)
    b = load_mask(_save(m * 255, tmp_path / "m255.png"), size=50)
    c = load_mask(_save((m * 60000).astype(np.uint16), tmp_path / "m16.png"), size=50)
    assert a.dtype == np.float32 and set(np.unique(a)) == {0.0, 1.0}
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert load_mask(_save(np.zeros((8, 8), np.uint8), tmp_path / "z.png")).sum() == 0


# ------------------------------------------------------------------------------------------------
# Bad files and folders
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def cls_root(tmp_path):
    write_synthetic_datasets(tmp_path, n_cls={"train": 6}, n_seg={"train": 4}, size=48)
    return tmp_path


def test_missing_folders(tmp_path, cls_root):
    with pytest.raises(DataError, match="nowhere"):
        ClassificationFolder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="split folder not found"):
        ClassificationFolder(cls_root / "cls", "val", on_bad="skip")  # always an error
    with pytest.raises(DataError, match="nowhere"):
        SegmentationPairs(tmp_path / "nowhere", on_bad="skip")
    (cls_root / "cls/train/PNEUMONIA").rename(cls_root / "cls/train/OTHER")
    with pytest.raises(DataError, match="PNEUMONIA"):
        ClassificationFolder(cls_root / "cls", "train")


def test_empty_class_folder_and_unknown_layout(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "PNEUMONIA").mkdir()
    _save(np.zeros((8, 8), np.uint8), tmp_path / "NORMAL/a.png")
    (tmp_path / "PNEUMONIA/notes.txt").write_text("not an image, ignored")
    with pytest.raises(DataError, match="PNEUMONIA.*empty class folder"):
        ClassificationFolder(tmp_path)
    with pytest.raises(DataError, match="unknown segmentation layout"):
        SegmentationPairs(tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_bad_classification_file(cls_root, kind, caplog):
    bad = cls_root / "cls/train/PNEUMONIA/synth_000003.png"
    if kind == "truncated":
        _truncate(bad)
    else:
        bad.write_text("this is not a PNG")
    with pytest.raises(DataError, match="synth_000003.png"):
        ClassificationFolder(cls_root / "cls", "train")
    with pytest.raises(DataError, match="synth_000003.png") as e:
        load_image(bad)
    assert e.value.path == bad
    with caplog.at_level(logging.WARNING):
        ds = ClassificationFolder(cls_root / "cls", "train", on_bad="skip")
    assert len(ds) == 5 and [p for p, _ in ds.skipped] == [bad]
    assert bad not in ds.paths and "skipped 1 bad file" in caplog.text


def test_truncated_jpeg_is_detected(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "PNEUMONIA"):
        for i in range(2):
            img = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            _save(img, tmp_path / cls / f"IM-{i}.jpeg", format="JPEG")
    _truncate(tmp_path / "NORMAL/IM-1.jpeg")
    with pytest.raises(DataError, match="IM-1.jpeg"):
        ClassificationFolder(tmp_path)
    assert len(ClassificationFolder(tmp_path, on_bad="skip").skipped) == 1


def test_bad_segmentation_pairs(cls_root):
    seg = cls_root / "seg/train"
    # image without a mask
    (seg / "masks/synth_000001.png").unlink()
    # mask size differs from its image
    _save(np.zeros((20, 30), np.uint8), seg / "masks/synth_000002.png")
    # a text file named .png
    (seg / "images/synth_000003.png").write_text("nope")

    with pytest.raises(DataError, match="synth_000001.png.*without a mask"):
        SegmentationPairs(cls_root / "seg", "train")
    (seg / "images/synth_000001.png").rename(seg / "images/keep_aside.png_")
    with pytest.raises(DataError, match="masks/synth_000002.png.*differs.*images/synth_000002"):
        SegmentationPairs(cls_root / "seg", "train")
    (seg / "images/keep_aside.png_").rename(seg / "images/synth_000001.png")

    ds = SegmentationPairs(cls_root / "seg", "train", on_bad="skip")
    assert len(ds) == 1 and ds.image_paths == [seg / "images/synth_000000.png"]
    skipped = {p.name: reason for p, reason in ds.skipped}
    assert len(ds.skipped) == 3
    assert "without a mask" in skipped["synth_000001.png"]
    assert "differs" in skipped["synth_000002.png"]
    assert "not an image" in skipped["synth_000003.png"]


def test_mask_size_mismatch_found_on_decode(cls_root):
    # A file swapped after construction is still caught when the pair is decoded.
    ds = SegmentationPairs(cls_root / "seg", "train")
    _save(np.zeros((20, 30), np.uint8), cls_root / "seg/train/masks/synth_000000.png")
    with pytest.raises(DataError, match="synth_000000.png.*differs"):
        ds[0]


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    p = _save(np.zeros((40, 40), np.uint8), tmp_path / "big.png")  # 1600 px
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warning zone: 1000 < 1600 < 2000
    with pytest.raises(
        DataError, match="big.png: image too large, possible decompression bomb: 1600 pixels, over 1000"
    ):
        load_image(p)
    with pytest.raises(DataError, match="^image 0: image too large.*1600 pixels, over 1000 pixels"):
        load_image(EncodedFile(p.read_bytes(), "image 0"))  # the same check for bytes in memory
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow's own error zone
    with pytest.raises(DataError, match="big.png.*too large.*1600 pixels, over 500 pixels"):
        load_image(p)


def test_bad_on_bad_value(cls_root):
    with pytest.raises(ValueError, match="on_bad"):
        ClassificationFolder(cls_root / "cls", "train", on_bad="ignore")
