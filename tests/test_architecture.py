"""The package's structure: no import cycle inside mmtrt/ (imports inside functions included),
a client that loads nothing of the server side, one module that talks to Triton, test modules
that mirror the layout, and no script that edits sys.path to find the packages."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmtrt"
#: the one module that imports tritonclient
TRITON_CLIENT_MODULE = "mmtrt/serving/client.py"
#: tests that talk to Triton below that module on purpose: requests it never sends (a declared
#: data type other than the data's, JSON bodies, model versions) and raw gRPC protobuf messages
RAW_PROTOCOL_TESTS = (
    "tests/integration/test_reliability_fuzz.py",
    # the admin APIs a client without the key is refused (shared memory, logging): calls mmtrt never makes
    "tests/integration/test_security.py",
    # the admin RPCs the nginx guard refuses over gRPC, and a message above its limit
    "tests/integration/test_nginx_guard.py",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The mmtrt modules ``path`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # mmtrt.serving.server.X -> mmtrt.serving.server
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "mmtrt.serving.errors" in graph["mmtrt.serving.server"]  # `from .errors import ...`
    assert "mmtrt.graph_modules" in graph["mmtrt.graphs"]  # inside GraphSpec.build
    assert "mmtrt.serving.config" in graph["mmtrt.serving.checks"]


def test_no_import_cycle_inside_mmtrt():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_client_loads_nothing_of_the_server_side():
    """`mmtrt infer`'s client and command import no server lifecycle or repository code."""
    code = (
        "import sys, mmtrt.serving.client, mmtrt.serving.infer, mmtrt.serving.commands; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('mmtrt'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(loaded.split())
    server_side = {
        "mmtrt.serving.server",
        "mmtrt.serving.processes",
        "mmtrt.serving.binary",
        "mmtrt.serving.repository",
        "mmtrt.serving.checks",
    }
    assert {"mmtrt.serving.client", "mmtrt.serving.infer"} <= loaded
    assert not loaded & server_side, sorted(loaded & server_side)


def test_tests_import_helpers_not_other_tests():
    """Shared test code lives in tests/helpers.py (and fake_tensorrt.py): no test module imports
    another test module or conftest.py."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [
                f"{path.relative_to(tests)} imports {n}" for n in names if n.startswith(("test_", "conftest"))
            ]
    assert not found, found


# Test folders that name no folder of the repository, and what they hold.
TEST_FOLDERS_BEYOND_THE_LAYOUT = {
    "model": "mmtrt's top-level modules (model, checkpoint, import_weights, cli_options)",
    "integration": "end-to-end runs across packages",
}


def test_test_modules_mirror_the_layout():
    """tests/<folder>/test_*.py, where <folder> is a folder of mmtrt/ or of the repository (or one
    of TEST_FOLDERS_BEYOND_THE_LAYOUT); only this module sits at the top of tests/."""
    tests = ROOT / "tests"
    folders = {p.name for p in [*PACKAGE.iterdir(), *ROOT.iterdir()] if p.is_dir()} - {"tests"}
    misplaced = [
        str(path.relative_to(tests))
        for path in sorted(tests.rglob("test_*.py"))
        if path != Path(__file__).resolve()
        and (
            len(path.relative_to(tests).parts) != 2
            or path.parent.name not in folders | set(TEST_FOLDERS_BEYOND_THE_LAYOUT)
        )
    ]
    assert not misplaced, misplaced


def _source_files(root: Path):
    """The repository's Python and shell files (not hidden folders, caches or run outputs)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "runs", "build")]
        yield from (Path(folder) / f for f in files if f.endswith((".py", ".sh")))


def test_nothing_edits_sys_path():
    """The packages are installed (pip install -e .): a script or test that inserts a folder into
    sys.path hides a broken install and imports whatever copy that folder holds."""
    needle = "sys.path." + "insert"  # (spelled so that this file does not match itself)
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in _source_files(ROOT)
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if needle in line
    ]
    assert not found, found


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return names


def test_only_the_client_module_imports_tritonclient():
    """Talking to Triton has one home, mmtrt/serving/client.py (connection, TLS, headers, model
    metadata, requests, retries, fail-over): no other module of the repository imports
    tritonclient, except the tests of the raw protocol listed above."""
    importers = sorted(
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
        and any(n == "tritonclient" or n.startswith("tritonclient.") for n in _imported_names(path))
    )
    assert importers == sorted([TRITON_CLIENT_MODULE, *RAW_PROTOCOL_TESTS]), importers
