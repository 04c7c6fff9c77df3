"""Checkpoints: round trip, atomic writes, and a clear error for every kind of bad file."""

from __future__ import annotations

import pytest
import torch

from mmtrt.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mmtrt.model import MultiMix


def test_round_trip_keeps_weights_config_and_meta(tmp_path):
    torch.manual_seed(1)
    model = MultiMix()
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, meta={"epoch": 3, "dice": 0.9}, optimizer={"lr": torch.tensor(1e-4)})
    loaded, meta = load_checkpoint(path)
    assert meta == {"epoch": 3, "dice": 0.9}
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert read_checkpoint(path)["optimizer"]["lr"].item() == pytest.approx(1e-4)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, MultiMix(), meta={"epoch": 1})
    before = path.read_bytes()

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated by an object that cannot be serialised)")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, MultiMix(), meta={"epoch": 2}, broken=Unsaveable())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, MultiMix())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt: not a readable checkpoint"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save(MultiMix().state_dict(), plain)  # a bare state dict: someone else's format
    with pytest.raises(CheckpointError, match="plain.pt: not an mmtrt MultiMix checkpoint"):
        load_checkpoint(plain)


class Payload:
    """An arbitrary class: loading it would need pickle to import and run code."""


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "mmtrt.multimix", "format_version": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_wrong_architecture(tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint(path, MultiMix())
    state = torch.load(path, weights_only=True)
    del state["model"]["decoder.out.weight"]
    state["model"]["encoder.fc.weight"] = torch.zeros(3, 256)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="other.pt: weights do not fit the MultiMix architecture"):
        load_checkpoint(path)
