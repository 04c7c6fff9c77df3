"""Model updates without downtime (`mmtrt update`): a second export becomes version 2 of the
served models of a running server (explicit model control, admin key), and version 1 comes back,
while the load generator sends at concurrency 16: no request fails, every answer names the one
version that made it, and each version answers what its own export answers in process."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import gated_export, needs_server, ort_session, xray_images

from mmtrt.bench.load import run_load
from mmtrt.cli import main
from mmtrt.data import write_synthetic_datasets
from mmtrt.serving import TritonServer, build_repository
from mmtrt.serving.admin import KEY_FILE_ENV, AdminKey
from mmtrt.serving.client import TritonClient

pytestmark = needs_server
LOAD_SECONDS = 20.0


@pytest.fixture(scope="module")
def second_export(tmp_path_factory):
    """Other weights (seed 1), the same architecture: what version 2 serves."""
    data = tmp_path_factory.mktemp("v2-data")
    write_synthetic_datasets(data, n_cls={"train": 8, "val": 8, "test": 0}, n_seg=0, seed=4)
    return gated_export(tmp_path_factory.mktemp("v2") / "export", data / "cls", seed=1)


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory):
    return build_repository(
        export_dir, tmp_path_factory.mktemp("built") / "repo", models=("multimix",), ort_threads=1
    )


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """As `mmtrt serve` runs it: explicit model control, admin APIs behind a key."""
    key = AdminKey.create()
    srv = TritonServer(
        repo,
        log_file=tmp_path_factory.mktemp("log") / "triton.log",
        model_control_mode="explicit",
        extra_args=key.tritonserver_args(),
    )
    srv.start(timeout=180)
    srv.admin_key = key
    yield srv
    srv.stop()
    key.remove()


def _update(repo, server, *args):
    r = CliRunner(env={KEY_FILE_ENV: str(server.admin_key.path)}).invoke(
        # the load over gRPC: an HTTP load occupies one of the HTTP front end's threads until the
        # model is loaded, and the inference requests that thread holds wait with it
        main,
        ["update", str(repo), *map(str, args), "--url", server.grpc_url, "--protocol", "grpc"],
    )
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_switching_versions_under_load_loses_nothing(repo, server, export_dir, second_export, protocol):
    x = xray_images(2, seed=77).numpy()
    expected = {export: ort_session(export / "multimix.onnx").run(["probs"], {"image": x})[0]
                for export in (export_dir, second_export)}  # fmt: skip
    assert not np.allclose(*expected.values(), atol=1e-3)  # the versions are told apart
    exports = {"1": export_dir}
    answers: list[tuple[str, np.ndarray]] = []
    result = {}
    stop = threading.Event()

    def load():
        url = server.http_url if protocol == "http" else server.grpc_url
        try:
            result["m"] = run_load(
                protocol, url, "multimix", x, 1, 16, LOAD_SECONDS, outputs=("probs",), warmup=0
            )
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            result["error"] = e

    def probe():  # the same two images, again and again: whose answer is each?
        with TritonClient(server.http_url, "http", timeout_s=120) as client:
            while not stop.is_set():
                out, version = client.infer_versioned("multimix", {"image": x}, ("probs",))
                answers.append((version, out["probs"]))

    threads = [threading.Thread(target=load), threading.Thread(target=probe)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    time.sleep(2.0)
    output = _update(repo, server, "--add", second_export)
    new = output.split("as version ")[1].split()[0]
    exports[new] = second_export
    time.sleep(5.0)  # version 2 answers a while
    _update(repo, server, "--version", 1)
    switched_in = time.monotonic() - t0
    threads[0].join()
    stop.set()
    threads[1].join()
    assert switched_in < LOAD_SECONDS, f"the switches took {switched_in:.1f} s, longer than the load ran"
    assert "m" in result, result.get("error")
    m = result["m"].extra
    assert m["failures"] == 0 and m["invalid"] == 0, m
    assert set(m["answered_versions"]) == {"1", new}, m["answered_versions"]
    seen = {v for v, _ in answers}
    assert seen <= {"1", new} and len(answers) > 5
    for version, probs in answers:  # each answer is wholly one version's
        np.testing.assert_allclose(probs, expected[exports[version]], rtol=1e-5, atol=1e-6)
    with TritonClient(server.http_url, "http") as client:  # back on version 1 alone
        assert client.infer_versioned("multimix", {"image": x}, ("probs",))[1] == "1"
    assert server.dead_stubs() == []  # (the watchdog of `mmtrt serve` would see no dead stub)


def test_update_refuses_what_it_cannot_serve(repo, tmp_path):
    r = CliRunner().invoke(main, ["update", str(repo), "--version", "9"])
    assert r.exit_code != 0 and "version 9 does not exist" in r.output
    r = CliRunner().invoke(main, ["update", str(repo)])
    assert r.exit_code != 0 and "--add EXPORT or --version N" in r.output
    (tmp_path / "manifest.json").write_text("{}")
    r = CliRunner().invoke(main, ["update", str(repo), "--add", str(tmp_path)])
    assert r.exit_code != 0 and "the new version" in r.output
