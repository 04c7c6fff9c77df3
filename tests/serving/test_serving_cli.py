"""`mmtrt repo` and `mmtrt serve` as a user runs them: `serve` as a real subprocess, stopped
with SIGTERM / SIGINT like a terminal or a service manager would."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from helpers import ServeCommand, needs_server, processes_mentioning

from mmtrt.cli import main
from mmtrt.serving import build_repository, validate_config, validate_repository

SECRET = "s3cret"


def test_repo_command(export_dir, tmp_path):
    out = tmp_path / "repo"
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "repo",
            str(export_dir),
            str(out),
            "--max-batch",
            "4",
            "--ort-threads",
            "1",
            "--max-image-bytes",
            "1000",
            "--allow",
            "view,modality",
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (cpu flavour): models classifier, file_decoder, multimix, multimix_image" in r.stdout
    assert f"mmtrt serve {out}" in r.stdout
    validate_repository(out, onnx_dir=export_dir)
    cfg = validate_config(out / "multimix" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.parameters["ort_intra_op_threads"].string_value == "1"
    decoder = validate_config(out / "file_decoder" / "config.pbtxt").parameters
    assert decoder["max_image_bytes"].string_value == "1000"
    assert decoder["max_image_pixels"].string_value == "36000000"  # the default
    assert decoder["gate_allow"].string_value == "view,modality"  # the input gate's relaxed rules
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r4"), "--allow", "lateral"])
    assert (
        r.exit_code == 1 and "unknown gate rule(s) lateral: choose from body-part, view, modality" in r.stderr
    )
    assert not (tmp_path / "r4").exists()
    r = runner.invoke(main, ["repo", str(export_dir), str(out)])
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = runner.invoke(main, ["repo", str(export_dir), str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert validate_config(out / "multimix" / "config.pbtxt").max_batch_size == 8  # the manifest's
    r = runner.invoke(main, ["repo", str(tmp_path / "nope"), str(tmp_path / "r2")])
    assert r.exit_code == 1 and "Error: export folder" in r.stderr and "does not exist" in r.stderr
    r = runner.invoke(main, ["repo", str(export_dir), str(tmp_path / "r3"), "--flavour", "tpu"])
    assert r.exit_code == 2 and "tpu" in r.stderr


def test_repo_command_gpu_names_the_missing_engines(full_export_dir, tmp_path):
    out = tmp_path / "repo"
    r = CliRunner().invoke(main, ["repo", str(full_export_dir), str(out), "--flavour", "gpu"])
    assert r.exit_code == 0, r.output
    assert "models classifier, decoder, encoder, multimix, saliency" in r.stdout
    assert "3 TensorRT engine file(s) missing" in r.stderr
    assert "saliency/1/model.plan" in r.stderr and f"mmtrt build-engines {full_export_dir}" in r.stderr


def test_serve_command_rejects_bad_arguments(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    runner = CliRunner()
    r = runner.invoke(main, ["serve", str(repo), "--", "--http-port=9"])
    assert r.exit_code == 1 and "would override" in r.stderr
    r = runner.invoke(main, ["serve", str(repo), "stray"])
    assert r.exit_code == 2 and "stray" in r.stderr
    r = runner.invoke(main, ["serve", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def _running(pid: int) -> bool:
    """Is ``pid`` a live process? (An orphan that exited stays a zombie until init reaps it.)"""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


@needs_server
def test_serve_command_serves_until_sigterm(export_dir, tmp_path):
    from mmtrt.serving.client import TritonClient
    from mmtrt.serving.errors import RequestError

    repo = build_repository(export_dir, tmp_path / "repo", ort_threads=1)
    restricted = f"model-repository,shared-memory:admin-key={SECRET}"
    serve = ServeCommand(
        str(repo),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    )
    try:
        t0 = time.monotonic()
        ready = serve.wait_for(r"^ready in .* \(pid (\d+)\)")
        print(f"\nmmtrt serve ready after {time.monotonic() - t0:.1f} s")
        pid = int(ready.group(1))
        text = "\n".join(serve.lines)
        http, grpc = serve.endpoints()
        assert re.search(r"^metrics +http://127\.0\.0\.1:\d+/metrics$", text, re.M)
        assert re.search(r"model multimix v1 READY .*out: probs, label, mask, saliency", text)
        assert re.search(r"model classifier v1 READY .*out: probs, label", text)
        assert f"clients: mmtrt infer --url {http}  (gRPC: --protocol grpc --url {grpc})" in serve.lines
        assert processes_mentioning(str(repo)), "the server runs"

        x = np.random.default_rng(0).random((2, 1, 256, 256), dtype=np.float32)
        with TritonClient(grpc, "grpc") as client:
            r = client.infer("multimix", {"image": x})
            assert r["probs"].shape == (2, 2) and r["mask"].shape == (2, 1, 256, 256)
            with pytest.raises(RequestError):  # restricted without the header
                client.models()
        # gRPC: the header name gets Triton's "triton-grpc-protocol-" prefix; the guard passes an
        # admin route on only with mmtrt's key header (any value: Triton checks the keys)
        guard_pass = {"triton-grpc-protocol-mmtrt-admin-key": "-"}
        with TritonClient(grpc, "grpc", headers={"triton-grpc-protocol-admin-key": SECRET}) as client:
            with pytest.raises(RequestError, match="not served through the proxy"):
                client.models()
        with TritonClient(
            grpc, "grpc", headers={"triton-grpc-protocol-admin-key": SECRET, **guard_pass}
        ) as client:
            assert client.models()
        with TritonClient(http) as client:
            np.testing.assert_allclose(
                client.infer("classifier", {"image": x})["probs"], r["probs"], rtol=1e-4, atol=1e-5
            )
            with pytest.raises(RequestError, match="404"):  # the guard: no key header
                client.models()
        with TritonClient(http, headers={"admin-key": SECRET, "mmtrt-admin-key": "-"}) as client:
            assert client.models()

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0, "\n".join(serve.lines)
    finally:
        serve.stop()
    assert "SIGTERM: stopping the server" in serve.lines and serve.lines[-1] == "stopped"
    assert not _running(pid)
    assert not processes_mentioning(str(repo)), "a tritonserver or stub process is left"


@needs_server
def test_serve_command_ctrl_c_while_starting(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    serve = ServeCommand(str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    try:
        serve.wait_for(r"^starting ")
        time.sleep(0.3)  # tritonserver is launching, the models are not loaded yet
        serve.proc.send_signal(signal.SIGINT)
        assert serve.finish() == 0, "\n".join(serve.lines)
    finally:
        serve.stop()
    assert "SIGINT: stopping the server" in serve.lines, serve.lines
    assert not processes_mentioning(str(repo)), "a tritonserver or stub process is left"


@needs_server
def test_serve_command_without_watchdog_exits_1_when_its_server_dies(export_dir, tmp_path):
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    log = tmp_path / "logs" / "triton.log"
    serve = ServeCommand(
        str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--no-watchdog",
        "--log-file", str(log),
    )  # fmt: skip
    try:
        serve.wait_for(rf"^starting .* \(log: {re.escape(str(log))}\)$")
        pid = int(serve.wait_for(r"^ready in .* \(pid (\d+)\)").group(1))
        os.killpg(pid, signal.SIGKILL)
        assert serve.finish() == 1, "\n".join(serve.lines)
    finally:
        serve.stop()
    text = "\n".join(serve.lines)
    assert "Error: tritonserver exited on its own (killed by SIGKILL); not restarted (--no-watchdog)" in text
    assert f"--- tail of {log} ---" in text and serve.lines[-1] == "Error: no replica left"
    assert "=== mmtrt: " in log.read_text()  # the server's own log went to --log-file
    assert not processes_mentioning(str(repo))


@needs_server
def test_killed_serve_command_leaves_no_server(export_dir, tmp_path):
    """Even a SIGKILLed `mmtrt serve` (no clean-up code runs) takes its tritonserver along: the
    server gets SIGTERM when its parent dies (PR_SET_PDEATHSIG) and stops its stub processes."""
    repo = build_repository(export_dir, tmp_path / "repo", models=("classifier",))
    serve = ServeCommand(str(repo), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    try:
        pid = int(serve.wait_for(r"^ready in .* \(pid (\d+)\)").group(1))
        assert processes_mentioning(str(repo))
        serve.proc.kill()
        serve.proc.wait(30)
        deadline = time.monotonic() + 30
        while processes_mentioning(str(repo)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        serve.stop()
    assert not processes_mentioning(str(repo)), "the server outlived its killed parent"
    assert not _running(pid)
