"""Shared fixtures: a seeded model and the image kinds every parity test runs on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmtrt.model import MultiMix

BATCH_SIZES = (1, 3, 8)


def random_images(batch: int, seed: int, size: int = 256) -> torch.Tensor:
    """Fresh uniform noise in [0, 1]: no ties anywhere."""
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def flat_region_images(batch: int, seed: int, size: int = 256) -> torch.Tensor:
    """Smooth images with exactly flat regions, like real X-rays: black borders (0), a saturated
    block (1) and a quantised ramp, so that many max-pool windows hold ties."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, size // 8, size // 8, generator=gen)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = torch.round(images * 32) / 32  # 8-bit-like quantisation: plateaus with equal values
    for i in range(batch):
        border = int(torch.randint(8, 40, (1,), generator=gen))
        images[i, :, :, :border] = 0.0
        images[i, :, -border // 2 :, :] = 0.0
        images[i, :, 20:60, -70:-20] = 1.0
    return images


def xray_images(batch: int, seed: int) -> torch.Tensor:
    """Synthetic chest X-rays from the data generator (black borders, saturated markers)."""
    from mmtrt.data import synth_xray

    images = [synth_xray(seed * 1000 + i, label=i % 2)[0] for i in range(batch)]
    return torch.from_numpy(np.stack(images)).float().div(255.0).unsqueeze(1)


IMAGE_KINDS = {"random": random_images, "flat": flat_region_images, "xray": xray_images}


@pytest.fixture(scope="session")
def model() -> MultiMix:
    torch.manual_seed(0)
    return MultiMix().eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = torch.as_tensor(actual).detach().double(), torch.as_tensor(expected).detach().double()
    return float((actual - expected).norm() / expected.norm())


# --------------------------------------------------------------------------- serving fixtures
# One module-scoped export, repository and Triton server for each serving test module (their
# helpers are in serving_helpers.py). A module that needs other graphs or settings overrides one.


@pytest.fixture(scope="module")
def export_dir(request):
    from serving_helpers import real_export

    return real_export(request)


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    """The repository as `mmtrt repo` builds it (CPU flavour), one onnxruntime thread a model."""
    from mmtrt.serving import build_repository

    return build_repository(export_dir, tmp_path_factory.mktemp("built") / "repo", ort_threads=1)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    from serving_helpers import start_server

    srv = start_server(repo, tmp_path_factory.mktemp("log") / "triton.log")
    yield srv
    srv.stop()
