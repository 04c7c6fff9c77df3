"""Shared fixtures: a seeded model, and the serving export, repository and Triton server.

The helpers they use, and that tests import, are in helpers.py. A module that needs other graphs
or settings overrides a fixture.
"""

from __future__ import annotations

import pytest
import torch

from mmtrt.model import MultiMix


@pytest.fixture(scope="session")
def model() -> MultiMix:
    torch.manual_seed(0)
    return MultiMix().eval()


# --------------------------------------------------------------------------- serving fixtures
# One module-scoped export, repository and Triton server for each serving test module.


@pytest.fixture(scope="module")
def export_dir(request):
    from helpers import real_export

    return real_export(request)


@pytest.fixture(scope="module")
def full_export_dir(request):
    """An export of all four graphs, as `mmtrt export` writes it (the GPU flavour needs each)."""
    from helpers import real_export

    return real_export(request, ("multimix", "encoder", "saliency", "decoder"))


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    """The repository as `mmtrt repo` builds it (CPU flavour), one onnxruntime thread a model."""
    from mmtrt.serving import build_repository

    return build_repository(export_dir, tmp_path_factory.mktemp("built") / "repo", ort_threads=1)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    from helpers import start_server

    srv = start_server(repo, tmp_path_factory.mktemp("log") / "triton.log")
    yield srv
    srv.stop()
