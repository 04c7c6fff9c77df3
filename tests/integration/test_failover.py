"""Several servers, one client: two real tritonservers on loopback, one SIGKILLed (with its stub
processes) in the middle of a run; nothing is lost, nothing answered twice, and the answers equal
a single-server run. The `classifier` model (encoder only) and batch 8 keep the CPU use low.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import needs_server, start_server
from PIL import Image

from mmtrt.serving.client import Backoff, Servers
from mmtrt.serving.infer import infer_files

pytestmark = needs_server
N_IMAGES = 200
MODEL = "classifier"


@pytest.fixture(scope="module")
def servers(repo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    pair = [start_server(repo, logs / "a.log"), start_server(repo, logs / "b.log")]
    yield pair
    for s in pair:
        s.stop()


def _both_up(servers) -> None:
    for s in servers:
        if not s.is_running():
            s.restart(timeout=180)


def _sigkill(server) -> None:
    """SIGKILL tritonserver and its stub processes (its process group) at once: no clean-up."""
    os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """N_IMAGES small PNGs (48 x 48; resized to 256 x 256 by load_image), all different."""
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(d / f"img_{i:03d}.png")
    return d


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_infer_fails_over_when_a_server_is_killed(servers, image_dir, tmp_path):
    """200 images over HTTP to servers A and B, batch 8; A is SIGKILLed after 6 answered batches:
    its unanswered batch goes to B, every image is answered exactly once (one JSON each, the
    servers' answered counts add up to 200), every JSON names the server that answered, and the
    probabilities equal those of a single-server run (the same batches, on B alone)."""
    _both_up(servers)
    a, b = servers
    paths = sorted(image_dir.glob("*.png"))
    out = tmp_path / "out"
    messages: list[str] = []
    servers = Servers([a.http_url, b.http_url], "http", retries=3, backoff=Backoff(0.2), say=messages.append)
    endpoints = servers.endpoints
    box: dict = {}

    def run():
        box["results"] = infer_files(paths, servers, model=MODEL, batch_size=8, out=out, overlays=False)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    _wait_until(lambda: len(list(out.glob("*.json"))) >= 48 or not t.is_alive(), 180, "nothing answered")
    answered_by_a_before = sum(
        json.loads(p.read_text())["server"]["url"] == a.http_url for p in out.glob("*.json")
    )
    _sigkill(a)
    t_kill = time.monotonic()
    t.join(300)
    assert not t.is_alive(), "the run hung"
    results = box["results"]
    print(
        f"\n{N_IMAGES} images: A answered {endpoints[0].answered_images} (killed at "
        f"{answered_by_a_before} JSONs of its own), B {endpoints[1].answered_images}; "
        f"{time.monotonic() - t_kill:.1f} s after the kill; messages: {messages[:4]}"
    )
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(records) == sorted(p.stem for p in paths)  # one JSON per image, none extra
    assert sum(ep.answered_images for ep in endpoints) == N_IMAGES  # answered exactly once
    assert endpoints[0].answered_images >= 1 and endpoints[1].answered_images >= 1
    assert endpoints[0].total_failures >= 1 and endpoints[0].gave_up
    served = {r["server"]["url"] for r in records.values()}
    assert served == {a.http_url, b.http_url}
    resent = [r for r in records.values() if r["server"]["attempts"] > 1]
    assert resent, "the batch A held when it died was not resent"
    for r in resent:
        assert r["server"]["tried"][0] == a.http_url and r["server"]["url"] == b.http_url
    assert any("failed a batch" in m and a.http_url in m for m in messages), messages

    single = infer_files(paths, Servers(b.http_url, "http", retries=0), model=MODEL, batch_size=8)
    want = np.stack([r.probs for r in single])
    got = np.stack([r.probs for r in results])
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6), float(np.abs(got - want).max())
    for p, r in zip(paths, single):
        assert records[p.stem]["label"] == r.label


def test_load_generator_fails_over_without_losing_requests(servers):
    """`mmtrt bench`'s load generator, gRPC, 2 clients over A and B; A is SIGKILLed mid-run: the
    requests it failed are resent to B (counted as retries), none is lost."""
    from mmtrt.bench.load import run_load
    from mmtrt.bench.runner import xray_pool

    _both_up(servers)
    a, b = servers
    pool = xray_pool(8, seed=11)
    box: dict = {}
    t = threading.Thread(
        target=lambda: box.update(
            m=run_load("grpc", [a.grpc_url, b.grpc_url], MODEL, pool, 4, 2, 6.0, outputs=("probs",), warmup=1)
        ),
        daemon=True,
    )
    t.start()
    time.sleep(3.0)
    _sigkill(a)
    t.join(120)
    assert not t.is_alive()
    m = box["m"]
    print(f"\nload over 2 servers, A killed at 3 s: {m.calls} requests answered, extra {m.extra}")
    assert m.extra["failures"] == 0, m.extra
    assert m.extra["retries"] >= 1, m.extra
    assert m.extra["answered_by"][a.grpc_url] >= 1 and m.extra["answered_by"][b.grpc_url] >= 1


def test_infer_cli_with_two_urls_names_the_server(servers, image_dir, tmp_path):
    """`mmtrt infer --url A --url B` (gRPC): both ready, the batches spread over both, each JSON
    names its server; with A dead from the start, B answers everything."""
    from mmtrt.cli import main

    _both_up(servers)
    a, b = servers
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(image_dir.glob("*.png"))[:32]:
        (few / p.name).write_bytes(p.read_bytes())
    args = ["infer", str(few), "--protocol", "grpc", "--model", MODEL, "--batch-size", "8"]
    result = CliRunner().invoke(
        main, [*args, "--url", a.grpc_url, "--url", b.grpc_url, "--out", str(tmp_path / "o1")]
    )
    assert result.exit_code == 0, result.output
    assert "32 image(s): 32 ok" in result.output
    urls = [json.loads(p.read_text())["server"]["url"] for p in (tmp_path / "o1").glob("*.json")]
    assert len(urls) == 32 and set(urls) == {a.grpc_url, b.grpc_url}, urls

    _sigkill(a)
    _wait_until(lambda: not a.is_running(), 10, "A still running")
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--url",
            a.grpc_url,
            "--url",
            b.grpc_url,
            "--out",
            str(tmp_path / "o2"),
            "--retries",
            "1",
            "--retry-delay",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    urls = [json.loads(p.read_text())["server"]["url"] for p in (tmp_path / "o2").glob("*.json")]
    assert len(urls) == 32 and set(urls) == {b.grpc_url}
