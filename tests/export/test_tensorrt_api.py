"""mmtrt's TensorRT code against TensorRT's real API, without TensorRT: mypy with the stubs made from
the real bindings (third_party/typings/, scripts/tensorrt_api.py) passes on the code and fails on a wrong call;
FakeTensorRT has the real names and enum values of each version and none that version lacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from fake_tensorrt import SURFACES, FakeTensorRT
from helpers import tiny_saliency_graph

ROOT = Path(__file__).resolve().parents[2]
ENGINE_CODE = ROOT / "mmtrt" / "export" / "tensorrt.py"
TENSORRT_10_CODE = ROOT / "mmtrt" / "export" / "tensorrt10.py"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy")


def check(cache: Path, *shadow: tuple[Path, str]) -> subprocess.CompletedProcess:
    """`scripts/tensorrt_api.py check`, with each (file, text) pair checked in place of the file."""
    args = ["--cache-dir", str(cache)]
    for i, (path, text) in enumerate(shadow):
        copy = cache / f"shadow{i}_{path.name}"
        copy.write_text(text)
        args += ["--shadow", str(path), str(copy)]
    return subprocess.run(
        [sys.executable, "scripts/tensorrt_api.py", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_engine_code_type_checks_against_tensorrt_10_and_11(mypy_cache):
    result = check(mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TensorRT 10.16.1.11: Success" in result.stdout and "TensorRT 11.4.0.106: Success" in result.stdout


# Misuses the check must catch: (the right code, the wrong code, what mypy names)
MISUSES = [
    # a call TensorRT 10 removed (execute_async_v3 replaced it)
    ("self.context.execute_async_v3(", "self.context.execute_async_v2(", '"execute_async_v2"'),
    # a misspelled keyword
    ("ignore_mismatch=False)\n", "ignore_missmatch=False)\n", '"ignore_missmatch"'),
    # a wrong argument type: a profile's shapes are set by input name, not index
    ("profile.set_shape(tensor.name, ", "profile.set_shape(i, ", '"set_shape"'),
]


def test_wrong_tensorrt_calls_fail_the_check(mypy_cache):
    """Each misuse is reported against both versions; a wrong call in tensorrt10.py against
    TensorRT 10, the one version it is checked against (11 removed what it uses)."""
    code = ENGINE_CODE.read_text()
    for right, wrong, _ in MISUSES:
        assert code.count(right) == 1, right
        code = code.replace(right, wrong)
    code_10 = TENSORRT_10_CODE.read_text()
    assert code_10.count("layer.set_output_type(") == 1
    code_10 = code_10.replace("layer.set_output_type(", "layer.set_output(")
    result = check(mypy_cache, (ENGINE_CODE, code), (TENSORRT_10_CODE, code_10))
    assert result.returncode != 0
    errors = {
        version: [
            line for line in result.stdout.splitlines() if line.startswith(f"TensorRT {version}: mmtrt")
        ]
        for version in ("10.16.1.11", "11.4.0.106")
    }
    for lines in errors.values():
        for _, _, name in MISUSES:
            assert any("mmtrt/export/tensorrt.py" in e and name in e for e in lines), (name, result.stdout)
    assert any("mmtrt/export/tensorrt10.py" in e and '"set_output"' in e for e in errors["10.16.1.11"])
    assert not any("tensorrt10.py" in e for e in errors["11.4.0.106"])


# --------------------------------------------------------------------------- FakeTensorRT


@pytest.mark.parametrize("major", [10, 11])
def test_the_fake_has_the_real_enums_and_values(major):
    trt, surface = FakeTensorRT(major), SURFACES[major]
    assert trt.__version__ == surface["tensorrt"] and trt.__version__.startswith(f"{major}.")
    for name in ("BuilderFlag", "LayerType", "NetworkDefinitionCreationFlag", "TensorIOMode", "DataType"):
        assert {n: int(m) for n, m in getattr(trt, name).__members__.items()} == surface["enums"][name]
    assert int(trt.Logger.WARNING) == 2 and trt.Logger.WARNING is trt.Logger.Severity.WARNING
    assert trt.float32 == trt.DataType.FLOAT
    assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == {10: 1, 11: 0}[major]
    assert not hasattr(trt.LayerType, "OTHER")
    with pytest.raises(TypeError):  # like the bindings' enums: no arithmetic
        1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # noqa: B018


def test_the_fake_of_tensorrt_11_lacks_what_11_removed(tmp_path):
    onnx.save(tiny_saliency_graph(), str(tmp_path / "tiny.onnx"))
    layers = {}
    for major in (10, 11):
        trt = FakeTensorRT(major)
        network = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network(0)
        trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING)).parse_from_file(str(tmp_path / "tiny.onnx"))
        layers[major] = trt, network.get_layer(0)
        flags = set(trt.BuilderFlag.__members__)
        assert ({"FP16", "BF16", "OBEY_PRECISION_CONSTRAINTS"} <= flags) == (major == 10)
    trt, layer = layers[10]
    layer.precision = trt.float32
    layer.set_output_type(0, trt.float32)
    trt, layer = layers[11]
    with pytest.raises(AttributeError, match=r"TensorRT 11\.4\.0\.106 has no ILayer\.precision"):
        layer.precision = trt.float32
    with pytest.raises(AttributeError, match=r"has no ILayer\.set_output_type"):
        layer.set_output_type(0, trt.float32)
    with pytest.raises(AttributeError, match=r"TensorRT 11\.4\.0\.106 has no tensorrt\.build_engine"):
        trt.build_engine  # noqa: B018


def test_the_committed_stubs_and_api_surfaces_are_of_the_same_versions():
    for major, surface in SURFACES.items():
        stubs = (
            ROOT / "third_party" / "typings" / f"tensorrt{major}" / "tensorrt" / "__init__.pyi"
        ).read_text()
        assert stubs.startswith(f"# TensorRT {surface['tensorrt']} ")
        assert "class ILayer" in stubs and ("def set_output_type" in stubs) == (major == 10)
