"""Faults in training: SIGKILL while a checkpoint is being written, a full disk, an unwritable
checkpoint folder. The last checkpoint must always load (mmtrt.checkpoint.load_checkpoint,
weights_only=True) and `python -m train --resume` must continue from it; a failed write must
leave the previous checkpoint intact.

(SIGKILL between steps and bit-exact resume are tested by the training package itself:
tests/train/test_train.py::test_resume_after_sigkill_reaches_the_same_weights.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_args

from mmtrt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mmtrt.model import MultiMix

REPO = Path(__file__).resolve().parents[2]
KILLS = 12
FIGURES: dict[str, object] = {}

# A child process that writes last.pt again and again (the trainer's layout: model, optimizer
# state, RNG, trainer counters, through mmtrt.checkpoint.save_checkpoint) is SIGKILLed at a random
# moment after a write has started (its temporary file appeared); then last.pt is read back.
# One interpreter imports torch once and forks a writer per try, so many tries stay cheap.
HARNESS = r"""
import json, os, random, signal, sys, time
from pathlib import Path
import torch
from mmtrt.checkpoint import read_checkpoint, save_checkpoint
from mmtrt.model import MultiMix

folder, tries, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = MultiMix()
opt = torch.optim.Adam(model.parameters())
for p in model.parameters():  # optimizer state of the same size as the trainer's
    opt.state[p] = {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(p),
                    "exp_avg_sq": torch.rand_like(p)}
path = folder / "last.pt"

def write(version):
    save_checkpoint(path, model, meta={"version": version}, optimizer=opt.state_dict(),
                    rng={"torch": torch.get_rng_state()}, trainer={"next_step": version})

t0 = time.monotonic(); write(0); write_s = time.monotonic() - t0  # calibration, and version 0
rng = random.Random(seed)
results = []
for k in range(tries):
    before = read_checkpoint(path)["meta"]["version"]
    seen = set(os.listdir(folder))
    pid = os.fork()
    if pid == 0:  # the writer: versions before+1, before+2, ... until killed
        try:
            v = before
            while True:
                v += 1
                write(v)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    tmp = None
    while tmp is None and time.monotonic() < deadline:  # wait for a write to start
        for name in os.listdir(folder):
            if name.startswith(".last.pt.") and name.endswith(".tmp") and name not in seen:
                tmp = name
        if tmp is None:
            time.sleep(0.0005)
    time.sleep(rng.uniform(0.0, 1.2 * write_s))
    in_write = (folder / tmp).exists() if tmp else False
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        state = read_checkpoint(path)
        version, error = state["meta"]["version"], None
        assert state["trainer"]["next_step"] == version
    except Exception as e:
        version, error = None, f"{type(e).__name__}: {e}"
    leftovers = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    results.append({"try": k, "killed_during_write": in_write, "before": before,
                    "version": version, "error": error, "tmp_left": len(leftovers)})
    for n in leftovers:  # a SIGKILLed writer cannot remove its temporary file
        os.unlink(folder / n)
print(json.dumps({"write_s": write_s, "results": results}))
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _python(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository, its output captured."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO
    )


def test_sigkill_during_checkpoint_writes_never_corrupts_last(tmp_path):
    proc = _python("-c", HARNESS, str(tmp_path), str(KILLS), "7", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    during = sum(r["killed_during_write"] for r in results)
    bad = [r for r in results if r["error"] or r["version"] is None]
    went_back = [r for r in results if r["version"] is not None and r["version"] < r["before"]]
    left = sum(r["tmp_left"] for r in results)
    advanced = sum(r["version"] is not None and r["version"] > r["before"] for r in results)
    FIGURES["checkpoint-write kills"] = len(results)
    print(
        f"\nSIGKILL during checkpoint writes: {len(results)} kills, {during} while the temporary "
        f"file was being written (write takes {1000 * report['write_s']:.0f} ms); last.pt "
        f"readable after {len(results) - len(bad)}/{len(results)} (a newer version in "
        f"{advanced}, the one before in the others); temporary files left behind by the killed "
        f"writer: {left} (removed by the harness)"
    )
    assert not bad, bad
    assert not went_back, went_back  # never an older checkpoint than the one before the try
    assert during >= len(results) // 2, "the kills did not land inside writes"
    # the checkpoint the trainer would resume from is a complete one
    model, meta = load_checkpoint(tmp_path / "last.pt")
    assert isinstance(model, MultiMix) and meta["version"] >= 0


def _tiny_args(out: Path, cache: Path, *extra: str) -> list[str]:
    return tiny_train_args(out, cache, *extra, epochs=1, steps=4)


def test_trainer_killed_during_a_checkpoint_write_resumes(tmp_path):
    """`python -m train` SIGKILLed while it writes last.pt (mid-run): last.pt loads, and
    `--resume` continues from it to the end of the run."""
    if not (REPO / "train" / "trainer.py").is_file():
        pytest.skip("train/ is not there")
    out, cache = tmp_path / "run", tmp_path / "synth"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *_tiny_args(out, cache)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    writes, in_write = 0, False
    deadline = time.monotonic() + 300
    try:
        seen: set[str] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            tmp = [
                n
                for n in (os.listdir(out) if out.is_dir() else [])
                if n.startswith(".last.pt.") and n.endswith(".tmp") and n not in seen
            ]
            if tmp:
                seen.update(tmp)
                writes += 1
                if writes == 2:  # the second last.pt write: after step 2 of 4
                    time.sleep(0.02)
                    in_write = (out / tmp[0]).exists()
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.0005)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read()[-3000:])
    model, meta = load_checkpoint(out / "last.pt")
    state = read_checkpoint(out / "last.pt")
    killed_at = state["trainer"]["next_step"]
    assert 1 <= killed_at <= 2
    resumed = _python("-m", "train", *_tiny_args(out, cache, "--resume"), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = read_checkpoint(out / "last.pt")
    assert final["trainer"]["next_step"] == 4
    steps = [
        json.loads(x).get("step")
        for x in (out / "log.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "train"
    ]
    assert steps[-(4 - killed_at) :] == list(range(killed_at, 4)), steps  # resumed where it was
    load_checkpoint(out / "best.pt")
    # the resumed run removed the temporary file the SIGKILL left half-written
    FIGURES["temporary files left in the run folder"] = len(list(out.glob(".*.tmp")))
    assert FIGURES["temporary files left in the run folder"] == 0, list(out.glob(".*.tmp"))
    print(
        f"\ntrainer SIGKILLed {'during' if in_write else 'right after'} its 2nd last.pt write: "
        f"last.pt loaded (next step {killed_at}), --resume ran steps {killed_at}..3 and finished; "
        f"{FIGURES['temporary files left in the run folder']} temporary file(s) left in the run "
        "folder"
    )
    FIGURES["trainer kills"] = 1


# --------------------------------------------------------------------------- failed writes


def _checkpoint(path: Path, version: int) -> str:
    torch.manual_seed(version)
    save_checkpoint(path, MultiMix(), meta={"version": version})
    return _digest(path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DISK_FULL = r"""
import resource, signal, sys
from pathlib import Path
import torch
from mmtrt.checkpoint import save_checkpoint
from mmtrt.model import MultiMix
path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
limit = path.stat().st_size // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    save_checkpoint(path, MultiMix(), meta={"version": 2})
except BaseException as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(3)
"""


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return r.returncode == 0


@pytest.mark.parametrize("how", ["file-size-limit", "full-tmpfs"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, how):
    """A write that runs out of space fails and leaves the previous checkpoint as it was, and no
    temporary file behind: a file-size limit (RLIMIT_FSIZE, works anywhere) and a really full
    filesystem (a small tmpfs; needs root and mount)."""
    folder = tmp_path / "ckpt"
    mounted = False
    if how == "full-tmpfs":
        mounted = _mount_tmpfs(folder, "12m")  # one checkpoint (7.9 MB) fits, two do not
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        folder.mkdir(exist_ok=True)
        path = folder / "last.pt"
        before = _checkpoint(path, 1)
        if how == "file-size-limit":
            r = _python("-c", DISK_FULL, str(path), timeout=300)
            assert r.returncode == 3, r.stderr[-2000:]
            message = r.stdout.strip()
        else:
            with pytest.raises(Exception) as info:
                torch.manual_seed(2)
                save_checkpoint(path, MultiMix(), meta={"version": 2})
            message = f"{type(info.value).__name__}: {info.value}"
        print(f"\n{how}: the failed write raised {message[:200]}")
        assert _digest(path) == before
        assert load_checkpoint(path)[1]["version"] == 1
        assert sorted(p.name for p in folder.iterdir()) == ["last.pt"], list(folder.iterdir())
        FIGURES.setdefault("failed-write messages", []).append(message[:200])
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


def test_disk_full_error_names_the_file_and_the_cause(tmp_path):
    """torch.save's zip writer turns a short write into "unexpected pos N vs M"; the checkpoint
    writer says which file could not be written and why (mmtrt.files.atomic_write)."""
    folder = tmp_path / "ckpt"
    mounted = _mount_tmpfs(folder, "12m")
    try:
        folder.mkdir(exist_ok=True)
        path = folder / "last.pt"
        _checkpoint(path, 1)
        if mounted:  # in-process: fast
            try:
                save_checkpoint(path, MultiMix(), meta={"version": 2})
                message = "no error"
            except Exception as e:  # noqa: BLE001 - its message is what is tested
                message = f"{type(e).__name__}: {e}"
        else:
            message = _python("-c", DISK_FULL, str(path), timeout=300).stdout
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
    assert str(path) in message
    assert any(w in message.lower() for w in ("no space", "too large", "disk full", "space left"))


def test_unwritable_checkpoint_folder(tmp_path):
    """The folder cannot take the file: its path runs through a regular file, or the folder is
    immutable (chattr +i: even root cannot create files in it; skipped where chattr is not
    supported). The error names the path and the cause; the previous checkpoint is intact."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder should be\n")
    with pytest.raises(OSError) as info:
        save_checkpoint(blocker / "run" / "last.pt", MultiMix())
    print(f"\nfolder through a file: {type(info.value).__name__}: {info.value}")
    assert str(blocker) in str(info.value)

    folder = tmp_path / "run"
    folder.mkdir()
    before = _checkpoint(folder / "last.pt", 1)
    r = (
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if shutil.which("chattr")
        else None
    )
    if r is None or r.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {r.stderr.strip() if r else 'no chattr'}")
    try:
        with pytest.raises(OSError) as info:
            save_checkpoint(folder / "last.pt", MultiMix(), meta={"version": 2})
        print(f"immutable folder: {type(info.value).__name__}: {info.value}")
        assert str(folder) in str(info.value)
        assert "not permitted" in str(info.value).lower() or "permission" in str(info.value).lower()
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    assert _digest(folder / "last.pt") == before
    assert load_checkpoint(folder / "last.pt")[1]["version"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]
