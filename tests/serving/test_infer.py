"""`mmtrt infer` against the real Triton server: image files of any size and kind in, per image a
JSON and a PNG overlay out, numbers equal to the same graph run in-process on the same
`load_image` input; bad files fail alone; an unreachable server fails clearly after a bounded
back-off."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import needs_server, ort_session
from PIL import Image

from mmtrt.cli import main
from mmtrt.data import load_image, synth_xray

pytestmark = needs_server
GOOD = ("chest_a.png", "chest_b.jpg", "chest_c16.png", "small.png", "sub/chest_a.png")
BAD = ("broken.png", "notes.png", "missing.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Synthetic chest X-rays (black borders, saturated markers) as the files users have:
    8-bit PNG of odd size, RGB JPEG, 16-bit PNG, a tiny image, a name clash in a subfolder; plus
    a truncated PNG, a text file named .png and a missing file."""
    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    a = synth_xray(11, label=1)[0]
    b = synth_xray(12, label=0)[0]
    c = synth_xray(13, label=1)[0]
    Image.fromarray(a).resize((300, 420), Image.BILINEAR).save(d / "chest_a.png")
    Image.fromarray(b).convert("RGB").resize((640, 640), Image.BILINEAR).save(d / "chest_b.jpg", quality=92)
    c16 = (c.astype(np.uint16) * 257).repeat(2, axis=0).repeat(2, axis=1)  # 512 x 512
    Image.fromarray(c16).save(d / "chest_c16.png")
    assert Image.open(d / "chest_c16.png").mode.startswith("I;16")
    Image.fromarray(b[::4, ::4]).save(d / "small.png")
    Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(d / "sub" / "chest_a.png")
    (d / "broken.png").write_bytes((d / "chest_a.png").read_bytes()[:400])
    (d / "notes.png").write_text("not an image\n")
    return d


@pytest.fixture(scope="module")
def expected(export_dir, images):
    """file -> (probs, mask foreground fraction) from multimix.onnx in-process on load_image."""
    session = ort_session(export_dir / "multimix.onnx")
    x = np.stack([load_image(images / f) for f in GOOD])[:, None]
    probs, mask = session.run(["probs", "mask"], {"image": x})
    return {f: (probs[i], float((mask[i] > 0.5).mean())) for i, f in enumerate(GOOD)}


def _run(*args):
    return CliRunner().invoke(main, ["infer", *map(str, args)])


def _read(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}.json").read_text())


STEMS = {
    "chest_a.png": "chest_a",
    "chest_b.jpg": "chest_b",
    "chest_c16.png": "chest_c16",
    "small.png": "small",
    "sub/chest_a.png": "chest_a-2",
}


def test_infer_http_writes_json_and_overlay_per_image(server, images, expected, tmp_path):
    out = tmp_path / "out"
    files = [images / f for f in ("broken.png", *GOOD[:3], "notes.png", *GOOD[3:], "missing.png")]
    t0 = time.monotonic()
    r = _run("--url", f"http://{server.http_url}", "--batch-size", "3", "--out", out, *files)
    print(f"\nmmtrt infer, {len(files)} files: {time.monotonic() - t0:.1f} s")
    assert r.exit_code == 1, r.output
    # each bad file: a clear error naming it; the others are processed
    assert f"{images / 'broken.png'}: unreadable, corrupt or truncated image" in r.stderr
    assert f"{images / 'notes.png'}: not an image file" in r.stderr
    assert f"{images / 'missing.png'}: file not found" in r.stderr
    assert "3 of 8 image(s) failed" in r.stderr
    for f, stem in STEMS.items():
        record = _read(out, stem)
        probs, fraction = expected[f]
        assert record["source"] == str((images / f).resolve())
        got = [record["probabilities"]["NORMAL"], record["probabilities"]["PNEUMONIA"]]
        np.testing.assert_allclose(got, probs, rtol=1e-5, atol=1e-6)
        assert record["label"] == ("NORMAL", "PNEUMONIA")[int(np.argmax(probs))]
        assert record["label_index"] == int(np.argmax(probs))
        assert record["mask_foreground_fraction"] == pytest.approx(fraction, abs=1e-4)
        assert record["overlay"] == f"{stem}.png" and record["model"] == "multimix"
        assert record["model_version"] == "1"
        assert record["image"]["rows"] == Image.open(images / f).height and record["dicom_results"] is None
        overlay = Image.open(out / f"{stem}.png")
        assert overlay.size == (512, 512)
        pixels = np.asarray(overlay.convert("RGB"))
        assert pixels.std() > 10  # a picture, not a blank
    assert _read(out, "chest_c16")["image"]["normalisation"].startswith("16-bit samples / 65535")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.json" for s in STEMS.values()] + [f"{s}.png" for s in STEMS.values()]
    )
    # the summary table: one row per image, and the totals
    table = r.stdout
    for name in ("broken.png", "notes.png", "missing.png", "chest_b.jpg", "small.png"):
        assert name in table
    assert "8 image(s): 5 ok" in table and "3 failed" in table
    assert "ERROR" in table and "p(PNEUMONIA)" in table


def test_infer_grpc_folder_input_same_numbers(server, images, expected, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for f in GOOD[:4]:
        shutil.copy(images / f, folder / Path(f).name)
    out = tmp_path / "out"
    r = _run("--url", server.grpc_url, "--protocol", "grpc", "--batch-size", "64", "--out", out, folder)
    assert r.exit_code == 0, r.output
    assert "above model 'multimix''s max_batch_size 8" in r.stderr
    assert "4 image(s): 4 ok" in r.stdout
    for f in GOOD[:4]:
        record = _read(out, Path(f).stem)
        np.testing.assert_allclose(
            list(record["probabilities"].values()), expected[f][0], rtol=1e-5, atol=1e-6
        )
        assert record["server"]["protocol"] == "grpc"


def test_infer_classifier_model(server, images, expected, tmp_path):
    out = tmp_path / "out"
    r = _run("--url", server.http_url, "--model", "classifier", "--out", out, images / GOOD[1])
    assert r.exit_code == 0, r.output
    record = _read(out, "chest_b")
    np.testing.assert_allclose(
        list(record["probabilities"].values()), expected[GOOD[1]][0], rtol=1e-4, atol=1e-6
    )  # the encoder graph's probs = the fused one's
    assert record["mask_foreground_fraction"] is None and record["model"] == "classifier"
    assert (out / "chest_b.png").is_file()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_pinned_model_version(server, images, expected, tmp_path, protocol):
    """--model-version N: version N answers (the repository's only one here, 1); a version the
    server does not serve is a clear error before anything is sent."""
    url = server.http_url if protocol == "http" else server.grpc_url
    f = GOOD[0]
    out = tmp_path / "out"
    r = _run("--url", url, "--protocol", protocol, "--model-version", "1", "--out", out, images / f)
    assert r.exit_code == 0, r.output
    record = _read(out, "chest_a")
    assert record["model_version"] == "1"  # the version that answered, from the response
    got = list(record["probabilities"].values())
    np.testing.assert_allclose(got, expected[f][0], rtol=1e-5, atol=1e-6)
    r = _run(
        "--url", url, "--protocol", protocol, "--model-version", "2", "--out", tmp_path / "o2", images / f
    )
    assert r.exit_code != 0
    assert "version 2 of model 'multimix' is not ready" in r.stderr
    assert not (tmp_path / "o2" / "chest_a.json").exists()
    r = _run("--url", url, "--model-version", "0", images / f)
    assert r.exit_code == 2 and "--model-version" in r.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_retries_then_fails_clearly(images, tmp_path, protocol):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    r = _run(
        "--url",
        f"127.0.0.1:{port}",
        "--protocol",
        protocol,
        "--retries",
        "2",
        "--retry-delay",
        "0.2",
        "--out",
        tmp_path / "out",
        images / GOOD[0],
    )
    elapsed = time.monotonic() - t0
    assert r.exit_code == 1
    assert "retrying in 0.2 s (1/2)" in r.stderr and "retrying in 0.4 s (2/2)" in r.stderr
    assert (
        f"cannot reach a ready Triton server at 127.0.0.1:{port} over {protocol} after 3 "
        "attempt(s)" in r.stderr
    )
    assert 0.6 <= elapsed < 20, elapsed  # the back-off was waited, and it is bounded
    assert not (tmp_path / "out").exists()


def test_url_forms():
    from mmtrt.serving.client import parse_url

    assert parse_url("http://127.0.0.1:8000/", "http") == ("127.0.0.1:8000", False)
    assert parse_url("https://triton.example.org", "http") == ("triton.example.org:8000", True)
    assert parse_url("localhost", "grpc") == ("localhost:8001", False)
    assert parse_url("[::1]:9001", "grpc") == ("[::1]:9001", False)


def test_overlay_write_replaces_a_planted_link_and_is_private(tmp_path):
    """The overlay goes through the one atomic write: a random temporary name, then a rename that
    replaces a symbolic link planted at its path (the file it points to is untouched); 0600."""
    import stat

    from mmtrt.serving.infer import overlay_picture, write_png

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").symlink_to(victim)
    (out / ".x.png.tmp").symlink_to(victim)  # the name a predictable temporary file would have had
    image = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    write_png(out / "x.png", overlay_picture(image, probs=np.array([0.3, 0.7]), size_px=64))
    assert victim.read_text() == "keep"
    assert not (out / "x.png").is_symlink() and (out / "x.png").read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE((out / "x.png").stat().st_mode) == 0o600
