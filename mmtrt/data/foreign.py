"""Real images that are not chest X-rays, from packages installed with mmtrt: what the image gate
(:mod:`mmtrt.ood`) is measured and tested on.

- pydicom's test files (``pydicom.data``): CT, MR, ultrasound, nuclear medicine, RT dose and
  secondary-capture images, colour ones converted to grey;
- scikit-image's bundled images (``skimage.data``, where scikit-image is installed: the test and
  benchmark extras): photographs, microscopy, astronomy, text, textures;
- matplotlib's sample data: a photograph and two graphics.

Each becomes what the network takes (float32 [1, 256, 256] in [0, 1]): DICOM through mmtrt's own
decoder where it decodes them (:func:`mmtrt.data.load_image`), otherwise (colour, several frames)
its first frame by pydicom, converted to grey and scaled to [0, 1]; other images as grey pictures.
Nothing is downloaded: a source that is not installed, or a file that does not decode, is left
out (and counted by :func:`collect` in what it says it skipped).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 256
#: scikit-image's images that ship inside its wheel (others would be fetched: under pytest, a skip)
SKIMAGE_IMAGES = (
    "astronaut", "binary_blobs", "brick", "camera", "cell", "checkerboard", "chelsea", "clock",
    "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
)  # fmt: skip
MATPLOTLIB_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


@dataclass(frozen=True)
class ForeignImage:
    name: str  # where it comes from: "pydicom:CT_small.dcm", "skimage:camera", ...
    kind: str  # its modality or what it shows: CT, MR, US, photograph...
    image: np.ndarray  # float32 [1, SIZE, SIZE] in [0, 1]


def _grey(pixels: np.ndarray) -> np.ndarray:
    """[H, W] float in [0, 1] of a grey or colour array (colour: the mean of its channels)."""
    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"not a 2-D image: shape {a.shape}")
    lo, hi = np.percentile(a, (0.5, 99.5))
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def _resized(grey: np.ndarray) -> np.ndarray:
    picture = Image.fromarray((grey * 65535).astype(np.uint16)).convert("I;16")
    picture = Image.fromarray(np.asarray(picture, dtype=np.float32) / 65535.0, mode="F")
    return np.asarray(picture.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)[None].clip(0, 1)


def _dicom_images() -> list[ForeignImage]:
    import pydicom
    import pydicom.data

    from mmtrt.data import DataError, load_image

    out = []
    # the files inside the package only (pydicom.data.get_testdata_files would fetch more)
    files = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" not in ds:
                    continue
                kind = str(ds.get("Modality", "") or "DICOM")
                if kind in ("SEG", "RTDOSE"):  # labels and dose grids are not pictures
                    continue
                try:
                    image = load_image(Path(path), SIZE)[None]
                except DataError:  # colour, several frames: the first frame, in grey
                    pixels = ds.pixel_array
                    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                        pixels = pixels[0]
                    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
                        from pydicom.pixels import convert_color_space

                        pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB")
                    image = _resized(_grey(pixels))
            except Exception:  # noqa: BLE001 - a test file that does not decode is left out
                continue
            if float(image.max() - image.min()) < 1e-3:
                continue  # a blank picture says nothing
            out.append(ForeignImage(f"pydicom:{Path(path).name}", kind, image.astype(np.float32)))
    return out


def _skimage_images() -> list[ForeignImage]:
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in SKIMAGE_IMAGES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = getattr(data, name)()
            out.append(ForeignImage(f"skimage:{name}", "picture", _resized(_grey(pixels))))
        except Exception:  # noqa: BLE001 - one that needs a download, or is not in this version
            continue
    return out


def _matplotlib_images() -> list[ForeignImage]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    out = []
    for name in MATPLOTLIB_IMAGES:
        try:
            with Image.open(folder / name) as picture:
                pixels = np.asarray(picture.convert("RGB"))
        except OSError:
            continue
        out.append(ForeignImage(f"matplotlib:{name}", "picture", _resized(_grey(pixels))))
    return out


def collect() -> list[ForeignImage]:
    """Every foreign image the installed packages give, in a stable order, without near
    duplicates (pydicom ships one MR slice and one colour picture in many encodings): an image
    whose 32 x 32 thumbnail correlates above 0.98 with an earlier one's is left out."""
    kept: list[ForeignImage] = []
    thumbs: list[np.ndarray] = []
    for item in _dicom_images() + _skimage_images() + _matplotlib_images():
        thumb = item.image[0].reshape(32, SIZE // 32, 32, SIZE // 32).mean(axis=(1, 3)).ravel()
        thumb = (thumb - thumb.mean()) / (thumb.std() or 1.0)
        if any(float(thumb @ t) / thumb.size > 0.98 for t in thumbs):
            continue
        kept.append(item)
        thumbs.append(thumb)
    return kept


def photograph() -> ForeignImage:
    """One photograph that is always there (matplotlib is a dependency of mmtrt)."""
    return _matplotlib_images()[0]
