"""Named synthetic *sources*: the generator's X-rays made to differ the way the papers' four data
sets differ from each other, and written in their layouts.

    kermany     classification, paediatric (Guangzhou, 1-5 years): larger heart, shorter lungs,
                wider field of view (neck and abdomen), more rotation; variable contrast and
                gamma, more noise (low dose), frequent collimation borders and burned-in text;
                landscape-ish images of varying size; 8-bit JPEG
                -> ``cls/SPLIT/{NORMAL,PNEUMONIA}/*.jpeg``
    nih         classification, adults (ChestX-ray14, many portable AP films): washed-out, low
                contrast, brighter, blurrier; some effusions; text markers; square 8-bit PNG
                (1024 x 1024 originals, written at 512) -> ``cls/SPLIT/{NORMAL,PNEUMONIA}/*.png``
    jsrt        segmentation, adults (digitised film, 2048 x 2048, 0.175 mm, 12-bit): clean, low
                noise, no borders or markers; written at 512 x 512 (0.7 mm) as 16-bit PNG holding
                12-bit values (v * 16); one merged lung mask -> ``seg/SPLIT/{images,masks}/*.png``
    montgomery  segmentation, adults (TB screening, 4020 x 4892 portrait, 0.0875 mm): deep
                inspiration, effusions and blunted costophrenic angles, TB-like opacities on
                half the images, wide black collimation borders, markers; written at 402 x 489
                (0.875 mm), 8-bit PNG; separate left / right lung masks (patient's left = image
                right) -> ``seg/SPLIT/CXR_png/*.png`` + ``ManualMask/{leftMask,rightMask}/*.png``

Every source also writes ``source.json`` (its spec, and ``pixel_spacing_mm`` of the written
files, which `mmtrt evaluate` uses for distances in mm). These are *modelled* differences: the
ranges are chosen from what the data sets are known to look like, not fitted to them, and were
not tuned to make any model score anything. The default generator (``mmtrt synth`` without
``--source``) is unchanged.

Pipeline per image: the generator at 256 x 256 with the source's :class:`Anatomy` -> intensity
(gamma, contrast, brightness) -> blur -> resize to the source's native size (mask: nearest) ->
noise at native resolution -> collimation borders -> burned-in text -> quantise to the source's
bit depth -> write.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .datasets import CLASSES
from .synthetic import SPLITS, Anatomy, _image_seed, _per_split, _save_png_atomic, synth_xray_with_meta

__all__ = ["SOURCES", "SourceSpec", "render_source_image", "write_source_dataset"]


@dataclass(frozen=True)
class SourceSpec:
    name: str
    task: str  # "cls" or "seg"
    layout: str  # "kermany", "jsrt" or "montgomery"
    population: str
    anatomy: Anatomy
    native_h: tuple[int, int]  # written height range (pixels)
    aspect: tuple[float, float]  # width / height range
    pixel_spacing_mm: float | None  # of the written files (None: not known, as for Kermany)
    fmt: str  # "jpeg" (8-bit), "png8", "png16" (12-bit values * 16)
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    brightness: tuple[float, float] = (0.0, 0.0)
    blur_px: tuple[float, float] = (0.0, 0.0)  # Gaussian sigma at 256 x 256
    noise: tuple[float, float] = (0.0, 0.0)  # std at native resolution, intensity units
    collimation: float = 0.0  # probability per side of a black band
    collimation_max: float = 0.1  # widest band, as a fraction of the side
    text: float = 0.0  # probability of burned-in text
    texts: tuple[str, ...] = ("R", "L")
    seg_labels: str = "normal"  # seg sources: "normal" (all label 0) or "alternate" (i % 2)
    notes: str = ""
    extra: dict = field(default_factory=dict)


SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            "kermany", "cls", "kermany", "paediatric (1-5 years)",
            Anatomy(fov=0.84, tilt_deg=6.0, body_w=0.95, lung_h=0.86, heart=1.2, dome=1.25, effusion=0.04, cp_blunt=0.08),
            native_h=(384, 512), aspect=(1.0, 1.45), pixel_spacing_mm=None, fmt="jpeg",
            gamma=(0.7, 1.4), contrast=(0.8, 1.3), brightness=(-0.05, 0.05), blur_px=(0.3, 1.0),
            noise=(0.01, 0.03), collimation=0.6, collimation_max=0.15, text=0.7,
            texts=("R", "L", "AP", "PORTABLE", "SUPINE"),
            notes="Kermany et al. 2018 (Guangzhou Women and Children's Medical Center), JPEG of varying size",
        ),
        SourceSpec(
            "nih", "cls", "kermany", "adult",
            Anatomy(fov=0.95, tilt_deg=3.0, heart=1.05, lung_h=0.95, effusion=0.08, cp_blunt=0.1),
            native_h=(512, 512), aspect=(1.0, 1.0), pixel_spacing_mm=0.286, fmt="png8",
            gamma=(0.9, 1.6), contrast=(0.6, 0.9), brightness=(0.04, 0.14), blur_px=(0.5, 1.5),
            noise=(0.005, 0.015), collimation=0.3, collimation_max=0.08, text=0.5,
            texts=("PORTABLE", "AP", "R", "ERECT"),
            notes="NIH ChestX-ray14: 1024x1024 8-bit PNG (0.143 mm), written at 512",
        ),
        SourceSpec(
            "jsrt", "seg", "jsrt", "adult",
            Anatomy(tilt_deg=1.0, lung_h=1.05, markers=False, borders=False),
            native_h=(512, 512), aspect=(1.0, 1.0), pixel_spacing_mm=0.7, fmt="png16",
            gamma=(0.9, 1.1), contrast=(1.0, 1.2), blur_px=(0.2, 0.5), noise=(0.002, 0.006),
            notes="JSRT: 2048x2048 12-bit digitised film, 0.175 mm; SCR lung masks; written at 512 (0.7 mm)",
        ),
        SourceSpec(
            "montgomery", "seg", "montgomery", "adult (TB screening)",
            Anatomy(fov=0.9, tilt_deg=3.0, lung_h=1.1, dome=0.8, effusion=0.15, cp_blunt=0.15),
            native_h=(489, 489), aspect=(0.822, 0.822), pixel_spacing_mm=0.875, fmt="png8",
            gamma=(0.8, 1.2), contrast=(0.9, 1.2), blur_px=(0.3, 0.8), noise=(0.004, 0.012),
            collimation=0.9, collimation_max=0.12, text=0.6, texts=("R", "L"), seg_labels="alternate",
            notes="Montgomery County: 4020x4892 portrait, 0.0875 mm, left/right masks; written at 1/10",
        ),
    )
}  # fmt: skip


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _free_rows_cols(mask: np.ndarray, margin: int) -> dict[str, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    h, w = mask.shape
    if rows.size == 0:
        return {"top": h // 4, "bottom": h // 4, "left": w // 4, "right": w // 4}
    return {
        "top": max(0, rows[0] - margin),
        "bottom": max(0, h - 1 - rows[-1] - margin),
        "left": max(0, cols[0] - margin),
        "right": max(0, w - 1 - cols[-1] - margin),
    }


def render_source_image(spec: SourceSpec, seed: int, label: int, difficulty: float):
    """(image float32 [h, w] in [0, 1], mask bool [h, w], meta) of one image of ``spec``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), 7]))
    img8, mask8, meta = synth_xray_with_meta(seed, label, 256, difficulty, spec.anatomy)
    x = img8.astype(np.float32) / 255.0
    black = img8 == 0  # the generator's own padding stays black
    x = np.clip(x, 0.0, 1.0) ** np.float32(rng.uniform(*spec.gamma))
    m = float(x[~black].mean()) if (~black).any() else 0.5
    x = (x - m) * np.float32(rng.uniform(*spec.contrast)) + m + np.float32(rng.uniform(*spec.brightness))
    sigma = rng.uniform(*spec.blur_px)
    if sigma > 0:
        x = ndimage.gaussian_filter(x, sigma)
    x[black] = 0.0
    h = int(rng.integers(spec.native_h[0], spec.native_h[1] + 1))
    w = int(round(h * rng.uniform(*spec.aspect)))
    x = np.asarray(Image.fromarray(x.astype(np.float32)).resize((w, h), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask8).resize((w, h), Image.NEAREST)) > 127
    x = x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(rng.uniform(*spec.noise))
    # collimation: black bands that stop short of the lungs
    room = _free_rows_cols(mask, margin=max(2, h // 64))
    for side in ("top", "bottom", "left", "right"):
        if rng.random() < spec.collimation:
            full = h if side in ("top", "bottom") else w
            width = int(min(room[side], rng.uniform(0.3, 1.0) * spec.collimation_max * full))
            if width > 0:
                if side == "top":
                    x[:width] = 0.0
                elif side == "bottom":
                    x[h - width :] = 0.0
                elif side == "left":
                    x[:, :width] = 0.0
                else:
                    x[:, w - width :] = 0.0
    # burned-in text, saturated, in a top corner above the lungs
    texts = []
    if rng.random() < spec.text:
        word = spec.texts[int(rng.integers(len(spec.texts)))]
        canvas = Image.new("L", (w, h), 0)
        size = max(8, h // 22)
        xpos = int(rng.uniform(0.03, 0.1) * w)
        if rng.random() < 0.5:
            xpos = w - xpos - size * len(word)
        ypos = int(rng.uniform(0.02, 0.06) * h)
        ImageDraw.Draw(canvas).text((max(0, xpos), ypos), word, fill=255, font=_font(size))
        glyph = (np.asarray(canvas) > 127) & ~ndimage.binary_dilation(mask, iterations=2)
        x[glyph] = 1.0
        texts.append(word)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    meta = {**meta, "native_size": (h, w), "texts": texts}
    return x, mask, meta


def _quantise(x: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "png16":  # 12-bit values in a 16-bit container, scaled to its full range
        return (np.rint(x * 4095.0).astype(np.uint16) * 16).astype(np.uint16)
    return np.rint(x * 255.0).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "jpeg":
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(arr).save(tmp, format="JPEG", quality=85)
        tmp.replace(path)
    else:
        _save_png_atomic(arr, path)


def _split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's left = image right, patient's right = image left) lung masks."""
    labels, n = ndimage.label(mask)
    cols = np.nonzero(mask.any(axis=0))[0]
    mid = (cols[0] + cols[-1]) / 2 if cols.size else mask.shape[1] / 2
    left = np.zeros_like(mask)
    for k in range(1, n + 1):
        comp = labels == k
        if np.nonzero(comp)[1].mean() > mid:
            left |= comp
    return left, mask & ~left


def write_source_dataset(
    root: Path, source: str, n: dict[str, int] | int, *, seed: int = 0, difficulty: float = 0.5
) -> dict:
    """Write ``n`` images per split of the named source under ``root`` in its layout (see the
    module docstring) and ``root/source.json``. Returns a summary dict."""
    from tqdm import tqdm

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[source]
    root = Path(root)
    counts = _per_split(n, "n")
    ext = ".jpeg" if spec.fmt == "jpeg" else ".png"
    stream = "cls" if spec.task == "cls" else "seg"
    summary: dict = {
        "source": source,
        "root": str(root),
        "seed": seed,
        "difficulty": difficulty,
        "splits": {},
    }
    total = sum(counts.values())
    with tqdm(total=total, desc=f"source {source}", unit="img", disable=None if total > 100 else True) as bar:
        for split in SPLITS:
            if not counts[split]:
                continue
            per_class = {c: 0 for c in CLASSES}
            for i in range(counts[split]):
                if spec.task == "cls":
                    label = i % 2
                else:
                    label = i % 2 if spec.seg_labels == "alternate" else 0
                # +1000: a different stream from the default generator's images of the same seed
                img_seed = _image_seed(seed + 1000 * (1 + list(SOURCES).index(source)), stream, split, i)
                x, mask, _ = render_source_image(spec, img_seed, label, difficulty)
                name = f"{source}_{i:06d}"
                arr = _quantise(x, spec.fmt)
                if spec.layout == "kermany":
                    folder = root / "cls" / split / CLASSES[label]
                    folder.mkdir(parents=True, exist_ok=True)
                    _save(arr, folder / f"{name}{ext}", spec.fmt)
                    per_class[CLASSES[label]] += 1
                elif spec.layout == "jsrt":
                    base = root / "seg" / split
                    (base / "images").mkdir(parents=True, exist_ok=True)
                    (base / "masks").mkdir(parents=True, exist_ok=True)
                    _save_png_atomic(np.where(mask, 255, 0).astype(np.uint8), base / "masks" / f"{name}.png")
                    _save(arr, base / "images" / f"{name}{ext}", spec.fmt)
                else:  # montgomery
                    base = root / "seg" / split
                    left, right = _split_lungs(mask)
                    for sub, part in (("leftMask", left), ("rightMask", right)):
                        d = base / "ManualMask" / sub
                        d.mkdir(parents=True, exist_ok=True)
                        _save_png_atomic(np.where(part, 255, 0).astype(np.uint8), d / f"{name}.png")
                    (base / "CXR_png").mkdir(parents=True, exist_ok=True)
                    _save(arr, base / "CXR_png" / f"{name}{ext}", spec.fmt)
                bar.update(1)
            summary["splits"][split] = per_class if spec.task == "cls" else counts[split]
    info = {k: v for k, v in asdict(spec).items() if k != "extra"}
    info["pixel_spacing_mm"] = spec.pixel_spacing_mm
    info["bit_depth"] = 12 if spec.fmt == "png16" else 8
    (root / "source.json").write_text(json.dumps({**info, **summary}, indent=2) + "\n")
    return summary
