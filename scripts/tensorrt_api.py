"""TensorRT's real Python API, on machines where TensorRT cannot be installed.

TensorRT's Python bindings are small wheels on PyPI (`tensorrt-cu12-bindings`): a pybind11 module
whose signatures are the real ones. It imports on a CPU-only machine once the nine entry points it
links against exist; none is called at import, so stub libraries built from a few lines of C do.
From the imported module this script writes, per TensorRT major version:

* third_party/typings/tensorrt<N>/tensorrt/__init__.pyi: type stubs (pybind11-stubgen, plus the fixes below),
  that `check` type-checks mmtrt's TensorRT code against;
* tests/export/tensorrt_api_<N>.json: the API surface (every name, every enum value), from which
  the tests' stand-in for TensorRT (tests/fake_tensorrt.py) takes its names and values.

    python scripts/tensorrt_api.py generate   # downloads two wheels (~1.3 MB each); needs gcc
    python scripts/tensorrt_api.py check      # mypy, each file against the API it is written for

Both outputs are committed, so `check` (run by scripts/test.sh) needs no download. To follow a
new TensorRT release, change VERSIONS, run `generate` and commit what changed.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tensorrt-cu12-bindings"
VERSIONS = {10: "10.16.1.11", 11: "11.4.0.106"}  # the newest 10.x and 11.x on PyPI

# What mypy checks against which TensorRT. The TensorRT-10-only path (builder precision flags and
# per-layer constraints, removed in 11) lives in its own module, checked against 10 only.
CHECKED = {
    10: ["mmtrt/export/tensorrt.py", "mmtrt/export/tensorrt10.py"],
    11: ["mmtrt/export/tensorrt.py"],
}


def stubs_dir(major: int) -> Path:
    return ROOT / "third_party" / "typings" / f"tensorrt{major}"


def surface_file(major: int) -> Path:
    return ROOT / "tests" / "export" / f"tensorrt_api_{major}.json"


# --------------------------------------------------------------------------- importing the bindings

# The entry points the bindings link against, by library; nothing calls them at import.
ENTRY_POINTS = {
    "libnvinfer": [
        "createInferBuilder_INTERNAL",
        "createInferRuntime_INTERNAL",
        "createInferRefitter_INTERNAL",
        "getPluginRegistry",
        "getBuilderPluginRegistry",
    ],
    "libnvinfer_plugin": ["initLibNvInferPlugins"],
    "libnvonnxparser": [
        "createNvOnnxParser_INTERNAL",
        "createNvOnnxParserRefitter_INTERNAL",
        "getNvOnnxParserVersion",
    ],
}


def unpack_bindings(major: int, work: Path) -> dict[str, str]:
    """Download and unpack the bindings wheel, build the stub libraries; the environment that imports
    `tensorrt_bindings`."""
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--dest", str(wheels), f"{PACKAGE}=={VERSIONS[major]}"],
        check=True,
    )
    (wheel,) = wheels.glob(f"{PACKAGE.replace('-', '_')}-{VERSIONS[major]}-*.whl")
    site = work / "site"
    zipfile.ZipFile(wheel).extractall(site)
    libs = work / "libs"
    libs.mkdir()
    for library, symbols in ENTRY_POINTS.items():
        source = libs / f"{library}.c"
        source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols))
        soname = f"{library}.so.{major}"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(libs / soname), str(source)],
            check=True,
        )
    return {**os.environ, "PYTHONPATH": str(site), "LD_LIBRARY_PATH": str(libs)}


# --------------------------------------------------------------------------- stubs

# What the bindings' package adds in Python on top of the pybind11 module (tensorrt/__init__.py).
PYTHON_ADDITIONS = """
__version__: str
def volume(iterable: collections.abc.Iterable[typing.SupportsInt]) -> int: ...
def nptype(trt_type: DataType) -> type[numpy.generic]: ...
"""

# pybind11 converts a sequence of ints wherever a Dims is taken (py::implicitly_convertible).
DIMS_LIKE = "Dims | collections.abc.Sequence[typing.SupportsInt]"

# What the bindings do without a signature to show it: Dims iterates (through __getitem__), and
# IHostMemory (an engine, a timing cache) is a buffer (bytes(memory)).
PROTOCOLS = {
    "Dims": "def __iter__(self) -> collections.abc.Iterator[int]: ...",
    "IHostMemory": "def __buffer__(self, flags: int, /) -> memoryview: ...",
}

# C++ types in the bindings' docstrings whose Python name differs.
CPP_NAMES = {
    "IBuilder": "Builder",
    "IParserError": "ParserError",
    "detail::accessor<detail::accessor_policies::str_attr>": "IPluginRegistry",  # get_plugin_registry()
}


def fix_stubs(text: str) -> str:
    """pybind11-stubgen's output made valid for mypy, each fix for one thing it cannot know."""
    defined = set(re.findall(r"^\s*class (\w+)", text, flags=re.M))

    def python_name(match: re.Match) -> str:
        name = CPP_NAMES.get(match.group(1), match.group(1))
        return name if name in defined else "typing.Any"

    # C++ types printed as they are: the Python class of the same name
    text = re.sub(r"\bdetail::accessor<[\w:]+>", lambda m: CPP_NAMES[m.group(0)], text)
    text = re.sub(r"\b(?:nvinfer1|nvonnxparser)::(?:v_\d+_\d+::)?(\w+)", python_name, text)
    # enum defaults printed as reprs (`<DataType.FLOAT: 0>`) and `None` defaults of typed parameters
    text = re.sub(r"= <\w+\.\w+: -?\d+>", "= ...", text)
    text = re.sub(r": (\w+) = None\b", r": \1 | None = None", text)
    # `in` is a Python keyword: the parameter can only be passed by position
    text = re.sub(r"\(self(: \w+)?, in: ", r"(self\1, __in: ", text)
    # add_scale_nd: channel_axis has no default although shift, scale and power before it do
    text = text.replace(
        "power: Weights | None = None, channel_axis: typing.SupportsInt)",
        "power: Weights | None = None, *, channel_axis: typing.SupportsInt)",
    )
    # a Dims parameter also takes a sequence of ints
    text = re.sub(r"(\w+): Dims(?=[,)])", rf"\1: {DIMS_LIKE}", text)
    return text


class _Tidy(ast.NodeTransformer):
    """Docstrings dropped (the bindings carry them; mypy needs only the signatures), `bool` in
    annotations made the builtin one (the module's own `bool` is a DataType that shadows it), and
    the PROTOCOLS added."""

    def visit_ClassDef(self, node):
        if node.name in PROTOCOLS:
            node.body.extend(ast.parse(PROTOCOLS[node.name]).body)
        return self.generic_visit(node)

    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Expr(ast.Constant(...))]
        return super().generic_visit(node)

    def visit_arg(self, node):
        node.annotation = node.annotation and builtin_bool(node.annotation)
        return node

    def visit_FunctionDef(self, node):
        node.returns = node.returns and builtin_bool(node.returns)
        return self.generic_visit(node)

    def visit_AnnAssign(self, node):
        node.annotation = builtin_bool(node.annotation)
        return node


class _BuiltinBool(ast.NodeTransformer):
    def visit_Name(self, node):
        return ast.Attribute(ast.Name("builtins"), "bool") if node.id == "bool" else node


def builtin_bool(annotation: ast.expr) -> ast.expr:
    return _BuiltinBool().visit(annotation)


def tidy(text: str) -> str:
    return "import builtins\n" + ast.unparse(_Tidy().visit(ast.parse(text))) + "\n"


def write_stubs(major: int, env: dict[str, str], work: Path) -> Path:
    out = work / "stubs"
    subprocess.run(
        [sys.executable, "-m", "pybind11_stubgen", "tensorrt_bindings.tensorrt", "--output-dir", str(out)]
        + ["--print-invalid-expressions-as-is"],  # the C++ names fix_stubs maps back to Python ones
        env=env,
        check=True,
        capture_output=True,
    )
    text = fix_stubs((out / "tensorrt_bindings" / "tensorrt.pyi").read_text())
    text = tidy(text + PYTHON_ADDITIONS)
    header = f"# TensorRT {VERSIONS[major]} ({PACKAGE}), written by scripts/tensorrt_api.py: do not edit.\n"
    path = stubs_dir(major) / "tensorrt" / "__init__.pyi"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + text)
    return path


# --------------------------------------------------------------------------- the API surface

# Run inside the imported bindings: every public name of the module, every class's public names,
# every enum's members and values (nested enums as `Outer.Inner`), and the module's constants.
SURFACE = r"""
import json, sys
import tensorrt_bindings as trt

LEFTOVERS = {"attr", "value"}  # the loop variables of a `for` in the package's __init__.py

def public(names):
    return sorted(n for n in names if not n.startswith("_") and n not in LEFTOVERS)

classes, enums, constants = {}, {}, {}
def visit(name, cls):
    if isinstance(getattr(cls, "__members__", None), dict):
        enums[name] = {m: int(v) for m, v in cls.__members__.items()}
    classes[name] = public(dir(cls))
    for attr in public(vars(cls)):
        inner = getattr(cls, attr)
        if isinstance(inner, type) and inner.__qualname__.endswith(attr):
            visit(f"{name}.{attr}", inner)

for name in public(dir(trt)):
    value = getattr(trt, name)
    if isinstance(value, type) and value.__module__.startswith("tensorrt"):
        visit(name, value)
    elif type(value).__module__.startswith("tensorrt") and hasattr(value, "name"):
        constants[name] = f"{type(value).__qualname__}.{value.name}"
surface = {
    "tensorrt": trt.__version__,
    "module": public(n for n in dir(trt) if not isinstance(getattr(trt, n), type(sys))),
    "classes": classes,
    "enums": enums,
    "constants": constants,
}
print(json.dumps(surface, indent=1, sort_keys=True))
"""


def write_surface(major: int, env: dict[str, str]) -> Path:
    surface = subprocess.run(
        [sys.executable, "-c", SURFACE], env=env, check=True, capture_output=True, text=True
    ).stdout
    path = surface_file(major)
    path.write_text(surface)
    return path


# --------------------------------------------------------------------------- commands


def mypy(
    major: int, files: list[str], *extra: str, cache: Path = ROOT / ".mypy_cache"
) -> subprocess.CompletedProcess:
    """mypy (configured in pyproject.toml) on `files` against the TensorRT `major` stubs, with a
    cache per version (one shared cache would be invalidated by every switch of stubs)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache / f"tensorrt{major}"), *extra, *files],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(stubs_dir(major))},
        capture_output=True,
        text=True,
    )


@click.group()
def main():
    """TensorRT's real API without TensorRT: stubs and API surface (generate), type checks (check)."""


@main.command()
@click.option("--major", "majors", type=click.Choice([str(m) for m in VERSIONS]), multiple=True)
def generate(majors):
    """Download the bindings and write the stubs and the API surface of each TensorRT version."""
    for major in [int(m) for m in majors] or VERSIONS:
        with tempfile.TemporaryDirectory(prefix=f"tensorrt{major}-") as work:
            env = unpack_bindings(major, Path(work))
            stubs, surface = write_stubs(major, env, Path(work)), write_surface(major, env)
        click.echo(f"TensorRT {VERSIONS[major]}: {stubs.relative_to(ROOT)}, {surface.relative_to(ROOT)}")


@main.command()
@click.option(
    "--shadow",
    nargs=2,
    multiple=True,
    metavar="FILE COPY",
    help="check COPY in place of FILE (mypy's --shadow-file)",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="mypy's cache (default: .mypy_cache)")
def check(shadow, cache_dir):
    """Type-check mmtrt's TensorRT code against the API of each TensorRT version it is written for."""
    extra = [arg for pair in shadow for arg in ("--shadow-file", *pair)]
    if shadow:  # mypy's cache would take a shadowed file of the original's size for the original
        extra.append("--no-incremental")
    cache = {"cache": Path(cache_dir)} if cache_dir else {}
    failed = []
    for major, files in CHECKED.items():
        result = mypy(major, files, *extra, **cache)
        for line in result.stdout.splitlines():
            click.echo(f"TensorRT {VERSIONS[major]}: {line}")
        if result.returncode:
            failed.append(VERSIONS[major])
    if failed:
        raise click.ClickException(
            f"the TensorRT code does not type-check against TensorRT {', '.join(failed)}"
        )


if __name__ == "__main__":
    main()
