"""`mmtrt import-weights`: a state_dict of the published MultiMix code (plain, wrapped as
{"state_dict": ...}, with DataParallel's "module." prefix) or of mmtrt's MultiMix becomes an mmtrt
checkpoint whose model gives exactly the original's outputs; every bad input is an error listing
the keys, with a non-zero exit and nothing written."""

from __future__ import annotations

import collections

import pytest
import torch
from click.testing import CliRunner

from mmtrt.checkpoint import load_checkpoint, read_checkpoint
from mmtrt.cli import main
from mmtrt.model import MultiMix
from mmtrt.weights import published_to_mmtrt

# The published code's names, in its order (from its source), written out independently of
# mmtrt.weights.
PUBLISHED_ORDER = (
    [f"encoder.dconv_down{k}.{i}.{p}" for k in range(1, 6) for i in (0, 3) for p in ("weight", "bias")]
    + ["encoder.fc.weight", "encoder.fc.bias"]
    + [f"decoder.dconv_up{k}.{i}.{p}" for k in (4, 3, 2, 1) for i in (0, 3) for p in ("weight", "bias")]
    + ["decoder.conv_last.weight", "decoder.conv_last.bias"]
    + ["decoder.conv_last_saliency.weight", "decoder.conv_last_saliency.bias"]
)


def _mmtrt_name(published: str) -> str:
    """The key mapping, written for the test: dconv_down{k} -> blocks.{k-1}, dconv_up{4,3,2,1} ->
    stages.{0,1,2,3}, index 0/3 -> conv1/conv2, conv_last -> out."""
    parts = published.split(".")
    if parts[1].startswith("dconv_down"):
        return f"encoder.blocks.{int(parts[1][-1]) - 1}.{'conv1' if parts[2] == '0' else 'conv2'}.{parts[3]}"
    if parts[1].startswith("dconv_up"):
        stage = 4 - int(parts[1][-1])
        return f"decoder.stages.{stage}.{'conv1' if parts[2] == '0' else 'conv2'}.{parts[3]}"
    if parts[1] == "conv_last":
        return f"decoder.out.{parts[2]}"
    return published


@pytest.fixture(scope="module")
def original() -> MultiMix:
    torch.manual_seed(7)
    return MultiMix().eval()


def published_state_dict(model: MultiMix) -> collections.OrderedDict:
    """What the published code's model.state_dict() holds for these weights."""
    own = model.state_dict()
    sd = collections.OrderedDict()
    for name in PUBLISHED_ORDER:
        if name.startswith("decoder.conv_last_saliency"):
            shape = (1, 17, 1, 1) if name.endswith("weight") else (1,)
            sd[name] = torch.randn(shape)
        else:
            sd[name] = own[_mmtrt_name(name)].clone()
    return sd


def _run(*args):
    return CliRunner().invoke(main, ["import-weights", *map(str, args)])


def _same_outputs(a: MultiMix, b: MultiMix) -> None:
    from helpers import flat_region_images

    x = flat_region_images(2, seed=3, size=64)  # any multiple of 32 runs; small keeps it cheap
    with torch.no_grad():
        ya, yb = a(x), b(x)
    for key in ("logits", "mask", "saliency"):
        assert torch.equal(ya[key], yb[key]), key


def test_published_names_and_order():
    assert list(published_to_mmtrt()) == PUBLISHED_ORDER
    mapped = {k: v for k, v in published_to_mmtrt().items() if v is not None}
    assert mapped == {k: _mmtrt_name(k) for k in PUBLISHED_ORDER[:-2]}
    assert sorted(mapped.values()) == sorted(MultiMix().state_dict())


@pytest.mark.parametrize(
    "layout", ["plain", "state_dict", "module", "state_dict+module", "mmtrt", "mmtrt+module"]
)
def test_import_gives_the_original_model(original, tmp_path, layout):
    if layout.startswith("mmtrt"):
        sd = collections.OrderedDict(original.state_dict())
    else:
        sd = published_state_dict(original)
    if "module" in layout:
        sd = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
    obj = {"state_dict": sd, "epoch": 3} if layout.startswith("state_dict") else sd
    src, out = tmp_path / "src.pt", tmp_path / "out.pt"
    torch.save(obj, src)
    r = _run(src, out)
    assert r.exit_code == 0, r.output
    published = not layout.startswith("mmtrt")
    assert f"{'published' if published else 'mmtrt'} layout" in r.output
    assert ("dropped decoder.conv_last_saliency.weight (1, 17, 1, 1)" in r.output) == published
    assert "wrote" in r.output and "1,965,155 parameters" in r.output
    model, meta = load_checkpoint(out)
    _same_outputs(original, model)
    assert meta["layout"] == ("published" if published else "mmtrt")
    assert read_checkpoint(out)["format"] == "mmtrt.multimix"


def test_float64_weights_converted(original, tmp_path):
    sd = {k: v.double() for k, v in published_state_dict(original).items()}
    torch.save(sd, tmp_path / "f64.pt")
    r = _run(tmp_path / "f64.pt", tmp_path / "out.pt")
    assert r.exit_code == 0, r.output
    assert "converted encoder.dconv_down1.0.weight: torch.float64 -> float32" in r.output
    _same_outputs(original, load_checkpoint(tmp_path / "out.pt")[0])


class _Pickled:  # not a tensor or container: weights_only=True refuses it
    pass


def _bad_cases(original):
    sd = published_state_dict(original)
    missing = collections.OrderedDict(sd)
    del missing["decoder.dconv_up4.0.weight"], missing["encoder.fc.bias"]
    extra = collections.OrderedDict(sd, **{"decoder.attention.weight": torch.zeros(3)})
    swapped = collections.OrderedDict(sd)  # two stages' convs exchanged: shapes tell
    swapped["decoder.dconv_up4.0.weight"], swapped["decoder.dconv_up3.0.weight"] = (
        sd["decoder.dconv_up3.0.weight"],
        sd["decoder.dconv_up4.0.weight"],
    )
    own_missing = collections.OrderedDict(original.state_dict())
    del own_missing["decoder.out.bias"]
    nan = collections.OrderedDict(sd)
    nan["encoder.fc.weight"] = torch.full((2, 256), float("nan"))
    ints = collections.OrderedDict(sd)
    ints["encoder.fc.bias"] = torch.zeros(2, dtype=torch.int64)
    return {
        "missing": (missing, "missing keys (2): encoder.fc.bias, decoder.dconv_up4.0.weight"),
        "extra": (extra, "unexpected keys (1): decoder.attention.weight"),
        "misshaped": (
            swapped,
            "misshaped keys (2): decoder.dconv_up4.0.weight: (64, 192, 3, 3), expected (128, 386, 3, 3); "
            "decoder.dconv_up3.0.weight: (128, 386, 3, 3), expected (64, 192, 3, 3)",
        ),
        "mmtrt-missing": (own_missing, "(mmtrt layout): missing keys (1): decoder.out.bias"),
        "nan": (nan, "encoder.fc.weight: holds NaN or infinite values"),
        "int": (ints, "encoder.fc.bias: dtype torch.int64, expected a floating-point tensor"),
        "pickled": ({"state_dict": sd, "extra": _Pickled()}, "it holds pickled Python objects"),
        "not-a-dict": ([1, 2, 3], "not a state_dict (a list)"),
        "not-tensors": ({"a": 1, "b": "x"}, "values that are not tensors"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "extra", "misshaped", "mmtrt-missing", "nan", "int", "pickled", "not-a-dict", "not-tensors"],
)
def test_bad_weights_are_refused_and_nothing_is_written(original, tmp_path, case):
    obj, message = _bad_cases(original)[case]
    src, out = tmp_path / "src.pt", tmp_path / "out.pt"
    torch.save(obj, src)
    r = _run(src, out)
    assert r.exit_code != 0
    assert f"Error: {src}: " in r.output and message in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.pt"]  # no OUT, no temporary


def test_other_errors(tmp_path):
    r = _run(tmp_path / "none.pt", tmp_path / "out.pt")
    assert r.exit_code != 0 and "none.pt: no such file" in r.output
    (tmp_path / "text.pt").write_text("not torch\n")
    r = _run(tmp_path / "text.pt", tmp_path / "out.pt")
    assert r.exit_code != 0 and "text.pt: not a readable torch file" in r.output
    assert not (tmp_path / "out.pt").exists()
    CliRunner().invoke(main, ["init", str(tmp_path / "ck.pt")])
    r = _run(tmp_path / "ck.pt", tmp_path / "out.pt")
    assert r.exit_code != 0 and "already an mmtrt checkpoint" in r.output


def test_export_of_a_foreign_file_says_to_import_it(original, tmp_path):
    torch.save(published_state_dict(original), tmp_path / "published.pt")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "published.pt"), "--out", str(tmp_path / "exp")])
    assert r.exit_code != 0
    assert "not an mmtrt MultiMix checkpoint" in r.output
    assert f"run `mmtrt import-weights {tmp_path / 'published.pt'} OUT.pt`" in r.output
    assert not (tmp_path / "exp").exists()
