"""The manifest reader refuses file names that would lead outside the export folder."""

from __future__ import annotations

import pytest

from mmtrt.export.manifest import ExportError, read_manifest, write_manifest


def _export(tmp_path, **graph):
    (tmp_path / "multimix.onnx").write_bytes(b"onnx")
    manifest = {
        "files": {"multimix.onnx": {"sha256": "0" * 64}},
        "graphs": {"multimix": {"file": "multimix.onnx", "inputs": {}, "outputs": {}, **graph}},
    }
    write_manifest(tmp_path, manifest)
    return tmp_path


@pytest.mark.parametrize(
    "key,name",
    [
        ("file", "../multimix.onnx"),
        ("file", "/etc/passwd"),
        ("reduced_precision_file", "../../home/user/.bashrc"),
        ("reduced_precision_file", "sub/multimix.bf16.onnx"),
        ("reduced_precision_file", ".."),
        ("reduced_precision_file", ""),
        ("reduced_precision_file", 7),
    ],
)
def test_a_path_instead_of_a_file_name_is_refused(tmp_path, key, name):
    folder = _export(tmp_path, **{key: name})
    with pytest.raises(ExportError, match=rf"graphs\.multimix\.{key} is .*not a plain file name"):
        read_manifest(folder, check_files=False)


def test_plain_names_are_read(tmp_path):
    folder = _export(tmp_path, reduced_precision_file="multimix.bf16.onnx")
    assert read_manifest(folder, check_files=False)["graphs"]["multimix"]["file"] == "multimix.onnx"
