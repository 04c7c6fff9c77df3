"""`mmtrt evaluate`'s bad inputs: clear one-line errors and a non-zero exit."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from mmtrt.cli import main
from mmtrt.data import write_synthetic_datasets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errdata")
    write_synthetic_datasets(root, n_cls={"test": 2}, n_seg={"test": 1}, seed=0, size=64)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "rand.pt"
    res = CliRunner().invoke(main, ["init", str(path)])
    assert res.exit_code == 0, res.output
    return path


def run(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_missing_folder(ckpt, tmp_path):
    res = run(ckpt, "--cls-data", tmp_path / "nope", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "--cls-data" in res.output and "no such folder" in res.output


def test_missing_split_and_bad_layout(ckpt, data, tmp_path):
    res = run(ckpt, "--cls-data", data / "cls", "--split", "val", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "split folder not found" in res.output
    (tmp_path / "seg" / "test" / "pictures").mkdir(parents=True)
    res = run(ckpt, "--seg-data", tmp_path / "seg", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "unknown segmentation layout" in res.output


def test_not_a_checkpoint(data, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    res = run(bad, "--cls-data", data / "cls", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "not a readable checkpoint" in res.output and str(bad) in res.output
    res = run(tmp_path / "missing.pt", "--cls-data", data / "cls", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no such checkpoint file" in res.output


def test_unreachable_server(data, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for protocol in ("grpc", "http"):
        res = run("--url", f"127.0.0.1:{port}", "--protocol", protocol, "--retries", "0",
                  "--cls-data", data / "cls", "--out", tmp_path / "o")  # fmt: skip
        assert res.exit_code == 1 and "cannot reach a ready Triton server" in res.output, res.output


def test_nothing_to_do(ckpt, data, tmp_path):
    res = run("--cls-data", data / "cls", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "CHECKPOINT or --url" in res.output
    res = run(ckpt, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "no data" in res.output


def test_calibration_from_a_folder_that_is_not_a_calibrated_export(ckpt, data, tmp_path):
    from mmtrt.export.manifest import write_manifest

    base = (ckpt, "--cls-data", data / "cls", "--out", tmp_path / "o", "--calibration")
    res = run(*base, tmp_path / "nope")
    assert res.exit_code == 1 and "--calibration" in res.output and "no such export folder" in res.output
    export = tmp_path / "export"
    export.mkdir()
    write_manifest(export, {"files": {}})
    res = run(*base, export)
    assert res.exit_code == 1 and "not calibrated" in res.output and "mmtrt calibrate" in res.output
    write_manifest(export, {"files": {}, "calibration": {"temperature": 0, "threshold": 0.5}})
    res = run(*base, export)
    assert res.exit_code == 1 and "temperature 0" in res.output
