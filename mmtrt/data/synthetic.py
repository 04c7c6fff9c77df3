"""Synthetic frontal chest X-rays with lung masks, deterministic from a seed.

No real dataset can be downloaded here (Kermany, JSRT and Montgomery are all licence-gated), so
tests, smoke runs and benchmarks use these images instead. They are not meant to fool a
radiologist; they are meant to exercise the same code paths as real data: a body outline on dark
air, two kidney-shaped lung fields, ribs, a mediastinum and heart, domed diaphragms, noise, pure
black collimation/padding borders and saturated (255) burnt-in markers, and, for PNEUMONIA,
blurry opacities inside the lungs whose strength is set by ``difficulty``.

Everything is drawn in normalised "anatomy" coordinates (u right, v down, both about [-0.5, 0.5])
so that any ``size`` gives the same picture, only sampled more or less finely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .datasets import CLASSES  # folder names; index = label

__all__ = ["Anatomy", "synth_xray", "synth_xray_with_meta", "write_synthetic_datasets", "SPLITS"]

SPLITS = ("train", "val", "test")

# Stream ids for seed derivation: every image's seed comes from (seed, stream, split, index), so
# classification and segmentation images, and the splits, never share a random stream.
_STREAMS = {"cls": 0, "seg": 1}

# 5x7 bitmaps of the lead side markers ("L"/"R") burnt into many real radiographs.
_LETTERS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)) is ~2.5x faster than scipy's expit; exp overflowing to inf far outside
    # an edge gives the right limit, 0.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _lowfreq(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Smooth random field, zero mean and about unit std: a grid x grid normal sample upsampled
    bicubically (through Pillow's float mode, which is much faster than a large Gaussian blur)."""
    small = rng.standard_normal((grid, grid)).astype(np.float32)
    img = Image.fromarray(small)  # float32 2-D -> mode "F"
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32)


def _dome(u: np.ndarray, top: float, height: float, centre: float, half_w: float) -> np.ndarray:
    """v of a domed hemidiaphragm: highest (smallest v) above the lung's centre."""
    return top - height * np.clip(1.0 - ((u - centre) / half_w) ** 2, 0, 1)


def _coords(n: int, th: float, sc: float, tx: float, ty: float) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (u right, v down, about [-0.5, 0.5]) of the centres of an n x n
    pixel grid, for a patient tilted by th, scaled by sc and shifted by (tx, ty)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    y, x = np.meshgrid(c - ty, c - tx, indexing="ij")
    cos, sin = np.float32(np.cos(th) / sc), np.float32(np.sin(th) / sc)
    return x * cos + y * sin, y * cos - x * sin


def _check_args(label: int, size: int, difficulty: float) -> None:
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (NORMAL) or 1 (PNEUMONIA), got {label!r}")
    if not 16 <= int(size) <= 4096:
        raise ValueError(f"size must be in [16, 4096], got {size!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")


@dataclass(frozen=True)
class Anatomy:
    """Shape factors of a population (1 / 0 = the default adult ranges, drawing nothing extra).

    ``fov``: patient scale in the frame (< 1: a wider field of view, more of neck and abdomen);
    ``tilt_deg``: extra rotation, uniform in +-tilt_deg; ``body_w``: torso width; ``lung_w`` /
    ``lung_h``: lung width / height (``lung_h`` < 1: poor inspiration, > 1: deep);
    ``heart``: heart size (children have a larger cardiothoracic ratio); ``dome``: diaphragm
    dome height; ``effusion``: probability per side of a pleural effusion (fluid filling the
    base up to 10-30 % of the lung height, meniscus rising laterally); ``cp_blunt``: probability
    per side of a blunted costophrenic angle (a small lateral meniscus, 3-8 %); ``markers`` /
    ``borders``: False drops the generator's own saturated markers / black margins (a clean
    source), drawing the same random numbers.
    """

    fov: float = 1.0
    tilt_deg: float = 0.0
    body_w: float = 1.0
    lung_w: float = 1.0
    lung_h: float = 1.0
    heart: float = 1.0
    dome: float = 1.0
    effusion: float = 0.0
    cp_blunt: float = 0.0
    markers: bool = True  # the generator's own lead letters and label strips
    borders: bool = True  # the generator's own black margins


def _pleural_fluid(lungs, u, v, bx, an: Anatomy, xr: np.random.Generator) -> np.ndarray:
    """Bool map of pleural fluid at the lung bases: per side, with probability ``an.effusion``
    an effusion, else with probability ``an.cp_blunt`` a blunted costophrenic angle."""
    fluid = np.zeros(lungs.shape, dtype=bool)
    for s in (-1, 1):
        side = lungs & (s * (u - bx) > 0)
        if not side.any():
            continue
        r = xr.random()
        if r < an.effusion:
            frac = xr.uniform(0.10, 0.30)
        elif r < an.effusion + an.cp_blunt:
            frac = xr.uniform(0.03, 0.08)
        else:
            continue
        vs, us = v[side], u[side]
        top, bottom = float(vs.min()), float(vs.max())
        inner, outer = float((s * (us - bx)).min()), float((s * (us - bx)).max())
        height = frac * (bottom - top)
        lateral = np.clip((s * (u - bx) - inner) / max(outer - inner, 1e-6), 0.0, 1.0)
        level = bottom - height * (0.4 + 1.2 * lateral**2)  # meniscus: higher at the chest wall
        fluid |= side & (v > level)
    return fluid


def synth_xray_with_meta(
    seed: int, label: int, size: int = 256, difficulty: float = 0.5, anatomy: Anatomy | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Like :func:`synth_xray`, plus a dict describing what was drawn (for tests and debugging):
    ``borders`` (top, bottom, left, right widths in pixels of the pure-black margins),
    ``saturated`` (list of (y0, y1, x0, x1) boxes holding 255 markers), ``body`` (bool mask of
    the body outline), ``opacity`` (float32 map of the pneumonia opacities added, zeros for
    NORMAL), ``effusion`` (bool map of the pleural fluid, outside the lung mask) and ``label``.
    ``anatomy``: the population's shape factors (:class:`Anatomy`); None = the default adult
    ranges, with byte-identical output to the generator before Anatomy existed."""
    _check_args(label, size, difficulty)
    S = int(size)
    d = float(difficulty)
    # Separate streams for anatomy, pathology and noise: the same seed gives the same patient
    # whether label is 0 or 1 and whatever the difficulty, only the opacities change.
    # (a 4th child stream draws only what Anatomy adds: the first three are unchanged by it)
    ss_anat, ss_path, ss_noise, ss_extra = np.random.SeedSequence(int(seed)).spawn(4)
    rng = np.random.default_rng(ss_anat)
    an = anatomy or Anatomy()
    xr = np.random.default_rng(ss_extra)

    # ---- coordinates: small random tilt, scale and shift of the patient in the frame ----------
    tilt, scale = np.deg2rad(rng.uniform(-4.0, 4.0)), rng.uniform(0.88, 1.05)
    if an.tilt_deg:
        tilt += np.deg2rad(xr.uniform(-an.tilt_deg, an.tilt_deg))
    scale *= an.fov
    pose = (tilt, scale, *rng.uniform(-0.035, 0.035, 2))
    u, v = _coords(S, *pose)
    px = 1.0 / (S * pose[1])  # one pixel, in anatomy units (for edge softness)

    # ---- body outline: neck on top of the shoulders, a slightly barrel-shaped torso ------------
    bx = rng.uniform(-0.01, 0.01)
    torso = rng.uniform(0.40, 0.47) * an.body_w
    neck = rng.uniform(0.07, 0.09)
    v_sh = rng.uniform(-0.44, -0.38)
    half_w = neck + (torso - neck) * _sigmoid((v - v_sh) / 0.025)
    half_w = half_w * (1.0 - 0.12 * (v - 0.05) ** 2)
    body_sd = half_w - np.abs(u - bx)  # >0 inside the body
    body = _sigmoid(body_sd / (1.5 * px + 0.004))
    tissue = rng.uniform(0.52, 0.64)
    # The body is thicker in the middle, so it attenuates more there.
    att = body * tissue * (0.80 + 0.20 * np.clip(1.0 - (np.abs(u - bx) / half_w) ** 2, 0, 1))
    att += 0.02 * body * _lowfreq(rng, S, 5)  # uneven soft tissue

    # ---- lungs: egg/kidney shapes, cut by the mediastinum, heart and domed diaphragm ----------
    cy = rng.uniform(-0.05, 0.02)
    lungs = np.zeros((S, S), dtype=bool)
    hx, hy = rng.uniform(0.04, 0.08), cy + rng.uniform(0.17, 0.22)
    hax, hay = rng.uniform(0.15, 0.19), rng.uniform(0.12, 0.15)
    if an.heart != 1.0:
        hax, hay = hax * an.heart, hay * an.heart
    heart_r = ((u - hx) / hax) ** 2 + ((v - hy) / hay) ** 2
    med_w = rng.uniform(0.045, 0.065)
    domes = {}  # side -> (top, height, centre, half-width) of the hemidiaphragm
    for s in (-1, 1):  # -1: image left (patient's right lung), +1: image right (patient's left)
        lx = bx + s * rng.uniform(0.19, 0.22)
        ly = cy + rng.uniform(-0.015, 0.015) + (0.015 if s == 1 else 0.0)
        ax = rng.uniform(0.15, 0.175) * (1.05 if s == -1 else 1.0) * an.lung_w
        ay = rng.uniform(0.30, 0.35) * an.lung_h
        harmonics = [(k, rng.uniform(0.0, 0.05), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]
        notch = rng.uniform(0.10, 0.18)
        top = ly + ay * rng.uniform(0.78, 0.9) - (0.025 if s == -1 else 0.0)
        dome_h = rng.uniform(0.04, 0.07) * an.dome
        domes[s] = (top, dome_h, lx, 1.3 * ax)
        dome = _dome(u, *domes[s])
        # The outline costs a dozen operations per pixel, so work only in the box of an ellipse
        # that surely holds the lung (|harmonics| <= 0.15, width factor <= 1.06).
        near = ((u - lx) / (1.3 * ax)) ** 2 + ((v - ly) / (1.2 * ay)) ** 2 < 1.0
        rr, cc = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
        if rr.size == 0:
            continue
        win = (slice(rr[0], rr[-1] + 1), slice(cc[0], cc[-1] + 1))
        uu, vv = u[win], v[win]
        dv = (vv - ly) / ay
        ax_v = ax * (0.78 + 0.28 * np.clip(dv + 0.2, -1.0, 1.0))  # narrow apex, wide base
        du = (uu - lx) / ax_v
        rho = np.sqrt(du * du + dv * dv) + 1e-6
        # Outline radius r(phi) = 1 + harmonics - notch, phi = polar angle with phi = pi
        # pointing medially on both sides. Written with cos(phi), sin(phi) and the multiple-angle
        # formulas instead of arctan2 + cos, which cost more than the rest of the image.
        c, sn = du * s / rho, dv / rho
        c2, s2 = 2 * c * c - 1, 2 * sn * c
        c3, s3 = c * (4 * c * c - 3), sn * (3 - 4 * sn * sn)
        c4, s4 = 2 * c2 * c2 - 1, 2 * s2 * c2
        r = 1.0
        for (ck, sk), (_, a_k, p_k) in zip(((c2, s2), (c3, s3), (c4, s4)), harmonics):
            r = r + a_k * (ck * np.cos(p_k) - sk * np.sin(p_k))  # a_k cos(k phi + p_k)
        # Kidney notch at the hilum, medial and a little below the middle: a von Mises bump
        # around phi0 = pi - 0.25, exp((cos(phi - phi0) - 1) / w^2) ~ exp(-(phi - phi0)^2 / 2w^2).
        cos_d = c * np.cos(np.pi - 0.25) + sn * np.sin(np.pi - 0.25)
        r = r - notch * np.exp((cos_d - 1.0) * (2 / 0.45**2))
        lungs[win] |= (rho < r) & (vv < dome[win]) & (s * (uu - bx) > med_w)
    lungs &= heart_r > 1.0
    lungs &= body_sd > 0.035  # keep a rim of chest wall between lungs and the air outside
    effusion = np.zeros((S, S), dtype=bool)
    if an.effusion > 0 or an.cp_blunt > 0:
        effusion = _pleural_fluid(lungs, u, v, bx, an, xr)
        lungs &= ~effusion  # fluid has soft-tissue density and hides the border: not visible lung
    lungs_soft = ndimage.gaussian_filter(lungs.astype(np.float32), sigma=max(0.6, 0.006 * S))

    # ---- smooth layers, drawn at half resolution and upsampled (about 1.5x faster overall) ----
    # Mediastinum, heart, spine, abdomen, ribs, clavicles and hilar vessels vary over several
    # pixels, so half resolution loses nothing visible.
    n = S // 2 if S >= 128 else S
    ul, vl = (u, v) if n == S else _coords(n, *pose)

    def up(a: np.ndarray) -> np.ndarray:
        return a if n == S else np.asarray(Image.fromarray(a).resize((S, S), Image.BILINEAR))

    aul = np.abs(ul - bx)
    mediast = _sigmoid((med_w + 0.02 - aul) / 0.01) * _sigmoid((vl - v_sh) / 0.02)
    heart = _sigmoid((1.0 - ((ul - hx) / hax) ** 2 - ((vl - hy) / hay) ** 2) / 0.15)
    spine = _sigmoid((0.03 - aul) / 0.006)
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (vl - rng.uniform(0, 1)) / 0.045)
    dia = np.where(ul < bx, _dome(ul, *domes[-1]), _dome(ul, *domes[1]))
    abdomen = _sigmoid((vl - dia - 0.01) / 0.012)
    # Clavicles: two bright bars near the top, sloping up laterally.
    clav_v = rng.uniform(-0.36, -0.31) - rng.uniform(0.05, 0.15) * aul
    clav = np.exp(-(((vl - clav_v) / 0.012) ** 2)) * _sigmoid((aul - 0.05) / 0.01)
    clav *= _sigmoid((0.30 - aul) / 0.02)
    inner = 0.13 * np.maximum(mediast, heart) + 0.06 * spine * (0.7 + 0.3 * vert)
    att += body * up(inner + 0.10 * abdomen + 0.10 * clav)

    # Ribs: periodic bands along curves that rise from the spine and fall laterally; the phase
    # grows a little slower with depth so that lower ribs are spaced further apart.
    curve = vl - (rng.uniform(-0.35, -0.2) * aul + rng.uniform(1.2, 1.7) * aul**2)
    depth = np.clip(curve + 0.55, 0.0, None)
    phase = rng.uniform(11.0, 13.0) * depth * (1.0 - 0.12 * depth) + rng.uniform(0, 1)
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 3
    ribs *= _sigmoid((dia + 0.03 - vl) / 0.02) * _sigmoid((aul - 0.04) / 0.01)  # thorax only
    att += rng.uniform(0.07, 0.12) * body * up(ribs) * (0.35 + 0.65 * lungs_soft)

    # ---- lung fields: much less attenuation, vessels brighter towards the hila -----------------
    lung_depth = rng.uniform(0.30, 0.40)
    hilum = np.exp(-(((aul - med_w - 0.05) / 0.09) ** 2 + ((vl - cy - 0.02) / 0.12) ** 2))
    texture = 0.02 * _lowfreq(rng, S, 10) + 0.012 * _lowfreq(rng, S, 28) + 0.06 * up(hilum)
    att -= lungs_soft * (lung_depth - texture)

    # ---- pneumonia: blurry, patchy opacities inside the lungs ---------------------------------
    opacity = np.zeros((S, S), dtype=np.float32)
    if label == 1:
        prng = np.random.default_rng(ss_path)
        ys, xs = np.nonzero(lungs)
        n_blobs = int(prng.integers(2, 5)) if d < 0.5 else int(prng.integers(1, 4))
        patchy = _sigmoid(1.5 + 2.0 * _lowfreq(prng, S, 14))
        amp0 = 0.32 * (1.0 - d) ** 1.5 + 0.012  # contrast: obvious at d=0, ~noise level at d=1
        rad0 = 0.11 - 0.06 * d  # radius in anatomy units
        for _ in range(n_blobs):
            i = int(prng.integers(len(ys)))
            cu, cv = u[ys[i], xs[i]], v[ys[i], xs[i]]
            rad = rad0 * prng.uniform(0.7, 1.3)
            amp = amp0 * prng.uniform(0.8, 1.2)
            blob = amp * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * rad * rad))
            opacity = np.maximum(opacity, blob)  # overlapping patches do not stack to white
        opacity *= patchy * lungs_soft
        att += opacity

    # ---- exposure, noise, quantisation ----------------------------------------------------------
    nrng = np.random.default_rng(ss_noise)
    air = rng.uniform(0.02, 0.08)
    img = air + att * rng.uniform(0.9, 1.25)
    with np.errstate(divide="ignore"):  # gamma as exp(g log x): x ** g is 3x slower; log 0 -> 0
        img = np.exp(rng.uniform(0.8, 1.2) * np.log(np.clip(img, 0.0, 1.0)))
    img = img + nrng.standard_normal((S, S), dtype=np.float32) * rng.uniform(0.008, 0.025)
    img8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    mask8 = np.where(lungs, 255, 0).astype(np.uint8)

    # ---- black borders (collimation / padding) that never reach the lungs ----------------------
    rows, cols = np.nonzero(lungs.any(axis=1))[0], np.nonzero(lungs.any(axis=0))[0]
    if rows.size == 0:  # cannot happen with the ranges above; keep the code total anyway
        rows = cols = np.array([0, S - 1])
    room = {  # free pixels between each image edge and the lungs, minus a safety margin
        "top": rows[0] - 2,
        "bottom": S - 1 - rows[-1] - 2,
        "left": cols[0] - 2,
        "right": S - 1 - cols[-1] - 2,
    }
    borders = []
    for side in ("top", "bottom", "left", "right"):  # each side: a 40 % chance of a margin
        w_max = min(int(room[side]), int(0.12 * S))
        draw, width = rng.random(), int(rng.integers(1, max(w_max, 1) + 1))
        borders.append(width if (w_max >= 1 and draw < 0.4) else 0)
    t, b, le, ri = borders if an.borders else (0, 0, 0, 0)

    # ---- saturated markers: a lead "L"/"R" letter, sometimes a burnt-in label strip -----------
    saturated = []
    if rng.random() < 0.5:
        cell = max(1, round(0.012 * S))
        letter = _LETTERS["LR"[int(rng.integers(2))]]
        glyph = np.array([[ch == "1" for ch in row] for row in letter])
        glyph = np.kron(glyph, np.ones((cell, cell), dtype=bool))
        gh, gw = glyph.shape
        y0 = t + 2 + int(rng.integers(0, max(1, int(0.04 * S))))
        # Top corner, inside the frame; the upper corners are above the lung apices.
        if rng.random() < 0.5:
            x0 = le + 2 + int(rng.integers(0, max(1, int(0.05 * S))))
        else:
            x0 = S - ri - 2 - gw - int(rng.integers(0, max(1, int(0.05 * S))))
        box = img8[y0 : y0 + gh, x0 : x0 + gw]
        if an.markers and box.shape == glyph.shape and not lungs[y0 : y0 + gh, x0 : x0 + gw].any():
            box[glyph] = 255
            saturated.append((y0, y0 + gh, x0, x0 + gw))
    if rng.random() < 0.25:
        sh, sw = max(2, int(0.035 * S)), max(4, int(rng.uniform(0.15, 0.3) * S))
        y0 = S - b - 2 - sh
        x0 = le + 2 if rng.random() < 0.5 else S - ri - 2 - sw
        if an.markers and y0 >= 0 and x0 >= 0 and not lungs[y0 : y0 + sh, x0 : x0 + sw].any():
            img8[y0 : y0 + sh, x0 : x0 + sw] = 255
            saturated.append((y0, y0 + sh, x0, x0 + sw))

    if t:
        img8[:t] = 0
    if b:
        img8[S - b :] = 0
    if le:
        img8[:, :le] = 0
    if ri:
        img8[:, S - ri :] = 0

    meta = {
        "label": int(label),
        "borders": (t, b, le, ri),
        "saturated": saturated,
        "body": body > 0.5,
        "opacity": opacity,
        "effusion": effusion,
    }
    return img8, mask8, meta


def synth_xray(
    seed: int, label: int, size: int = 256, difficulty: float = 0.5, anatomy: Anatomy | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frontal chest X-ray.

    Returns ``(image, mask)``: image uint8 [size, size], lung mask uint8 {0, 255} [size, size].
    ``label`` 0 = NORMAL, 1 = PNEUMONIA (adds blurry opacities inside the lungs). ``difficulty``
    in [0, 1] sets how subtle those are: 0 = large and obvious, 1 = small and near noise level.
    The same arguments always give byte-identical arrays; the same seed gives the same "patient"
    (anatomy, exposure, borders, noise) whatever the label and difficulty.
    """
    img, mask, _ = synth_xray_with_meta(seed, label, size, difficulty, anatomy)
    return img, mask


# ------------------------------------------------------------------------------------------------
# Writing datasets in the real layouts
# ------------------------------------------------------------------------------------------------


def _per_split(n: dict[str, int] | int, what: str) -> dict[str, int]:
    if isinstance(n, dict):
        unknown = set(n) - set(SPLITS)
        if unknown:
            raise ValueError(f"{what}: unknown split(s) {sorted(unknown)}; use {SPLITS}")
        out = {s: int(n.get(s, 0)) for s in SPLITS}
    else:
        out = {s: int(n) for s in SPLITS}
    if any(v < 0 for v in out.values()):
        raise ValueError(f"{what}: counts must be >= 0, got {out}")
    return out


def _image_seed(seed: int, stream: str, split: str, index: int) -> int:
    """A 64-bit seed unique to (seed, stream, split, index) (SeedSequence hashes the tuple)."""
    ss = np.random.SeedSequence([int(seed), _STREAMS[stream], SPLITS.index(split), int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def _save_png_atomic(arr: np.ndarray, path: Path) -> None:
    """Write to a hidden temp file in the same folder, then rename over the target: a crash
    leaves either the old file or the new one, never a truncated PNG (os.replace is atomic on
    one filesystem). The loaders ignore dot-files, so a leftover temp file is never read."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=3)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _clear_stale(folder: Path, keep: set[str]) -> None:
    """Remove our own earlier files (synth_*.png) that this run does not rewrite, so a smaller
    re-run over the same root does not leave extra images behind. Other files are left alone."""
    if not folder.is_dir():
        return
    for p in folder.glob("synth_*.png"):
        if p.name not in keep:
            p.unlink()


def write_synthetic_datasets(
    root: Path,
    *,
    n_cls: dict[str, int] | int,
    n_seg: dict[str, int] | int,
    seed: int = 0,
    difficulty: float = 0.5,
    size: int = 256,
) -> dict:
    """Write synthetic data sets in the real layouts under ``root``.

    - classification (Kermany-style): ``root/cls/{split}/{NORMAL,PNEUMONIA}/synth_NNNNNN.png``,
      labels alternate by index so the classes are balanced (odd counts: one more NORMAL);
    - segmentation (JSRT-style): ``root/seg/{split}/images/synth_NNNNNN.png`` and
      ``root/seg/{split}/masks/synth_NNNNNN.png`` (same name). Half of these images carry
      pneumonia opacities too (odd indices), so segmentation also sees opaque lungs.

    ``n_cls`` / ``n_seg``: images per split, an int for every split or a dict per split (missing
    splits get 0; no folder is made for a split with 0 images). Each image's seed is derived
    from (seed, stream, split, index), so no two images share a seed, and files are
    byte-identical between runs. Re-running over the same root rewrites our ``synth_*.png``
    files and deletes those this run does not produce (other files are never touched).
    Returns a summary dict: ``{"cls": {split: {class: n}}, "seg": {split: n}, "files": n,
    "root", "seed", "difficulty", "size"}`` (splits with 0 images are left out).
    """
    from tqdm import tqdm

    _check_args(0, size, difficulty)
    root = Path(root)
    cls_n = _per_split(n_cls, "n_cls")
    seg_n = _per_split(n_seg, "n_seg")
    total = sum(cls_n.values()) + 2 * sum(seg_n.values())
    summary: dict = {
        "root": str(root),
        "seed": int(seed),
        "difficulty": float(difficulty),
        "size": int(size),
        "cls": {},
        "seg": {},
        "files": 0,
    }
    # tqdm(disable=None) turns itself off when stderr is not a TTY (logs, CI).
    with tqdm(total=total, desc="synthetic data", unit="png", disable=None if total > 300 else True) as bar:
        for split in SPLITS:
            folders = {c: root / "cls" / split / c for c in CLASSES}
            keep: dict[str, set[str]] = {c: set() for c in CLASSES}
            for i in range(cls_n[split]):
                label = i % 2
                img, _ = synth_xray(_image_seed(seed, "cls", split, i), label, size, difficulty)
                name = f"synth_{i:06d}.png"
                folders[CLASSES[label]].mkdir(parents=True, exist_ok=True)
                _save_png_atomic(img, folders[CLASSES[label]] / name)
                keep[CLASSES[label]].add(name)
                bar.update(1)
            for c in CLASSES:
                _clear_stale(folders[c], keep[c])
            if cls_n[split]:
                summary["cls"][split] = {c: len(keep[c]) for c in CLASSES}
                summary["files"] += cls_n[split]
        for split in SPLITS:
            img_dir, mask_dir = root / "seg" / split / "images", root / "seg" / split / "masks"
            names = set()
            for i in range(seg_n[split]):
                img, mask = synth_xray(_image_seed(seed, "seg", split, i), i % 2, size, difficulty)
                name = f"synth_{i:06d}.png"
                img_dir.mkdir(parents=True, exist_ok=True)
                mask_dir.mkdir(parents=True, exist_ok=True)
                # Mask first: if we crash in between, the image (what the loader lists) is absent
                # rather than present without its mask.
                _save_png_atomic(mask, mask_dir / name)
                _save_png_atomic(img, img_dir / name)
                names.add(name)
                bar.update(2)
            _clear_stale(img_dir, names)
            _clear_stale(mask_dir, names)
            if seg_n[split]:
                summary["seg"][split] = seg_n[split]
                summary["files"] += 2 * seg_n[split]
    return summary
