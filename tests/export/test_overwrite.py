"""--overwrite replaces only a folder mmtrt wrote (mmtrt.files.FOLDER_MARK), never a folder it did
not write, nor the target of a planted symbolic link."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mmtrt.cli import main
from mmtrt.files import FOLDER_MARK, NotOurFolder, move_folder_into_place, written_by_mmtrt


def _staging(parent: Path, content: str) -> Path:
    staging = parent / ".staging"
    staging.mkdir()
    (staging / "result.txt").write_text(content)
    return staging


def test_a_folder_mmtrt_wrote_is_replaced_and_marked(tmp_path):
    out = tmp_path / "out"
    move_folder_into_place(_staging(tmp_path, "one"), out)
    assert written_by_mmtrt(out) and (out / "result.txt").read_text() == "one"
    move_folder_into_place(_staging(tmp_path, "two"), out)
    assert (out / "result.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left


def test_a_foreign_folder_is_not_replaced(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    staging = _staging(tmp_path, "export")
    with pytest.raises(NotOurFolder, match=f"thesis was not written by mmtrt .*{FOLDER_MARK}"):
        move_folder_into_place(staging, out)
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"]
    assert staging.is_dir()  # the caller cleans up its own staging folder


def test_a_planted_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / FOLDER_MARK).write_text("looks like ours")
    (victim / "data.txt").write_text("keep")
    out = tmp_path / "out"
    out.symlink_to(victim, target_is_directory=True)
    with pytest.raises(NotOurFolder, match="symbolic link"):
        move_folder_into_place(_staging(tmp_path, "x"), out)
    assert (victim / "data.txt").read_text() == "keep" and out.is_symlink()


def test_export_overwrite_refuses_a_foreign_folder_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    checkpoint = tmp_path / "never-read.pt"  # refused before the checkpoint is opened
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(out), "--overwrite"])
    assert result.exit_code != 0 and "was not written by mmtrt" in result.output, result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_repo_overwrite_refuses_a_foreign_folder_at_once(tmp_path, export_dir):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["repo", str(export_dir), str(out), "--overwrite"])
    assert result.exit_code != 0 and "was not written by mmtrt" in result.output, result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_atomic_writes_replace_a_planted_link_instead_of_following_it(tmp_path):
    from mmtrt.files import atomic_write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    report = tmp_path / "metrics.json"
    report.symlink_to(victim)
    atomic_write_text(report, "{}\n")
    assert victim.read_text() == "keep" and not report.is_symlink() and report.read_text() == "{}\n"
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "victim.txt"]  # no temporary left
