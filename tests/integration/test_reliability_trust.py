"""Trust boundaries, checked on the source: nothing a client sends (request tensors, image files)
and no checkpoint reaches pickle, eval/exec or a shell.

The served code path (mmtrt/serving, the python-backend model in model_repository, the image
loader in mmtrt/data, the runtimes, mmtrt/checkpoint.py and the file helpers of mmtrt/files.py) must not
deserialise with pickle/marshal/shelve/dill, nor call eval, exec,
compile or __import__, nor run a shell; every torch.load in the project (mmtrt/, train/) must pass
weights_only=True, and numpy.load must not allow pickles.

The rest of the boundary is tested where it lives:
- a checkpoint holding pickled code is refused: tests/model/test_checkpoint.py::test_pickled_code_is_refused;
- a tampered model file is refused at load (sha256 against the export manifest):
  tests/serving/test_serving.py::test_tampered_onnx_refuses_to_load, and at build time
  tests/serving/test_serving.py::test_build_repository_errors;
- the server listens on loopback only unless told otherwise (psutil's table of sockets):
  tests/integration/test_reliability_serving.py::test_server_binds_loopback_by_default and
  ::test_serve_watchdog_restarts_a_killed_stub_under_load (`mmtrt serve`);
- hostile requests and files: tests/integration/test_reliability_fuzz.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVED = [
    ROOT / "mmtrt" / "serving",
    ROOT / "model_repository",
    ROOT / "mmtrt" / "data",
    ROOT / "mmtrt" / "checkpoint.py",
    ROOT / "mmtrt" / "files.py",
    ROOT / "mmtrt" / "runtimes",  # the served graph model runs their copy
    ROOT / "mmtrt" / "dicom_results.py",
]
CHECKPOINT_READERS = [ROOT / "mmtrt", ROOT / "train"]

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _python_files(paths) -> list[Path]:
    files = []
    for p in paths:
        files += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def served_path_findings(files) -> list[str]:
    findings = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = lambda n: f"{path.relative_to(ROOT)}:{n.lineno}"  # noqa: E731, B023 (used within this iteration)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in UNSAFE_MODULES:
                        findings.append(f"{where(node)}: imports {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                    findings.append(f"{where(node)}: imports from {node.module}")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if isinstance(node.func, ast.Name) and name in UNSAFE_BUILTINS:
                    findings.append(f"{where(node)}: calls {name}()")
                if name in ("os.system", "os.popen", "commands.getoutput"):
                    findings.append(f"{where(node)}: runs a shell ({name})")
                if name.startswith("subprocess.") and _is_true(_keyword(node, "shell")):
                    findings.append(f"{where(node)}: {name}(shell=True)")
                if name in ("yaml.load", "yaml.unsafe_load"):
                    findings.append(f"{where(node)}: {name} (use yaml.safe_load)")
    return findings


def checkpoint_findings(files) -> list[str]:
    findings = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name == "torch.load" or name.endswith(".torch.load"):
                if not _is_true(_keyword(node, "weights_only")):
                    findings.append(f"{where}: torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                findings.append(f"{where}: {name}(allow_pickle=True)")
    return findings


def test_the_checker_catches_what_it_looks_for(tmp_path):
    """The scanner itself: each unsafe form is found, the safe forms are not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nfrom marshal import loads\nimport torch, numpy as np, subprocess, os\n"
        "eval('1')\nexec('x=1')\nos.system('ls')\nsubprocess.run('ls', shell=True)\n"
        "torch.load('a.pt')\ntorch.load('a.pt', weights_only=False)\n"
        "np.load('a.npy', allow_pickle=True)\n"
    )
    good = tmp_path / "good.py"
    good.write_text(
        "import torch, json, numpy as np\nmodel.eval()\njson.loads('{}')\n"
        "torch.load('a.pt', map_location='cpu', weights_only=True)\n"
        "np.load('a.npy')\nsubprocess.run(['ls'])\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        served = served_path_findings([bad])
        ckpt = checkpoint_findings([bad])
        assert len(served) == 6, served  # pickle, marshal, eval, exec, os.system, shell=True
        assert len(ckpt) == 3, ckpt  # two torch.load, one np.load
        assert served_path_findings([good]) == [] and checkpoint_findings([good]) == []
    finally:
        ROOT = saved


def test_served_path_has_no_pickle_eval_or_shell():
    files = _python_files(SERVED)
    assert any(f.name == "model.py" and "model_repository" in f.parts for f in files)
    assert any(f.name == "infer.py" for f in files) and any(f.name == "datasets.py" for f in files)
    findings = served_path_findings(files)
    print(f"\nscanned {len(files)} files of the served path: {len(findings)} findings")
    assert findings == [], "\n".join(findings)


def test_every_torch_load_is_weights_only():
    files = _python_files(CHECKPOINT_READERS)
    findings = checkpoint_findings(files)
    loads = sum(
        1
        for f in files
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, ast.Call) and _dotted(n.func).endswith("torch.load")
    )
    print(
        f"\nscanned {len(files)} files of mmtrt/ and train/: {loads} torch.load call(s), "
        f"{len(findings)} without weights_only=True"
    )
    assert findings == [], "\n".join(findings)


@pytest.mark.parametrize("module", ["mmtrt.serving.server", "mmtrt.serving.commands"])
def test_loopback_is_the_default(module):
    """Nothing binds beyond loopback unless asked: TritonServer's and `mmtrt serve`'s defaults
    (the sockets themselves are checked in test_reliability_serving)."""
    import importlib
    import inspect

    mod = importlib.import_module(module)
    if module.endswith("server"):
        assert inspect.signature(mod.TritonServer).parameters["host"].default == "127.0.0.1"
        assert inspect.signature(mod.TritonServer).parameters["model_control_mode"].default == "none"
    else:
        host = next(p for p in mod.serve.params if p.name == "host")
        assert host.default == "127.0.0.1"
