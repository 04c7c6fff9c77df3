"""mmtrt.serving.settings: each setting declared once; `mmtrt repo`'s options and the python
models' config.pbtxt parameters generated from the fields and read back from them, every bad
value named."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from mmtrt.cli import main
from mmtrt.serving.settings import (
    PRECISIONS,
    GraphSettings,
    ImageLimits,
    OnnxRuntimeSettings,
    OpenVINOSettings,
    RepositorySettings,
    from_options,
    from_parameters,
    options,
    to_parameters,
)


def test_every_option_is_one_field_with_its_help_and_the_command_has_them_all():
    found = options(RepositorySettings)
    assert len({o.flag for o in found}) == len({o.name for o in found}) == len(found)
    assert all(o.help for o in found)
    help_text = CliRunner().invoke(main, ["repo", "--help"]).stdout
    for option in found:
        assert option.flag in help_text
    assert {o.flag for o in found} >= {"--ort-threads", "--ov-threads", "--max-image-bytes", "--runtime"}


def test_from_options_fills_nested_settings_by_their_option_names():
    settings = from_options(
        RepositorySettings, {"ort_threads": 1, "max_image_bytes": 5, "openvino": OpenVINOSettings(threads=2)}
    )
    assert settings.onnxruntime == OnnxRuntimeSettings(threads=1)
    assert settings.openvino == OpenVINOSettings(threads=2)
    assert settings.image_limits == ImageLimits(max_bytes=5)
    assert settings.runtime == "onnxruntime" and settings.max_batch is None  # the defaults
    based = from_options(RepositorySettings, {"ov_streams": 2}, base=settings)
    assert based.openvino == OpenVINOSettings(threads=2, streams=2) and based.image_limits.max_bytes == 5
    with pytest.raises(TypeError, match="unknown setting.s. ort_thread: choose from .*ort_threads"):
        from_options(RepositorySettings, {"ort_thread": 1})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"flavour": "tpu"}, "unknown flavour 'tpu': choose from cpu, gpu"),
        ({"runtime": "tvm"}, "unknown runtime 'tvm': choose from onnxruntime, openvino, auto"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"max_batch": 0}, "max_batch must be a positive integer, got 0"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be an integer >= 0"),
        ({"ort_threads": -1}, "onnxruntime threads must be an integer >= 0"),
        ({"ov_streams": 0}, "OpenVINO streams must be a positive integer"),
        ({"max_image_pixels": True}, "image limit max_pixels must be a positive integer"),
        ({"flavour": "gpu", "runtime": "openvino"}, "applies to the cpu flavour only"),
        ({"flavour": "gpu", "precision": "bf16"}, "precision applies to the cpu flavour"),
    ],
)
def test_a_bad_setting_is_named(values, message):
    with pytest.raises(ValueError, match=message):
        from_options(RepositorySettings, values)


def test_parameters_round_trip_and_name_what_is_wrong():
    graph = GraphSettings(
        "encoder.bf16.onnx",
        runtime="openvino",
        runtime_choice='auto: "quoted"',
        precision="bf16",
        onnxruntime=OnnxRuntimeSettings(threads=3),
        openvino=OpenVINOSettings(threads=2, streams=4, cache_dir="/tmp/ov cache"),
    )
    params = to_parameters(graph)
    assert params["ort_intra_op_threads"] == "3" and params["ov_num_streams"] == "4"
    assert from_parameters(GraphSettings, params) == graph
    assert from_parameters(ImageLimits, to_parameters(ImageLimits(7, 9))) == ImageLimits(7, 9)
    for key, value, problem in [
        ("runtime", "tvm", "config.pbtxt parameter runtime is 'tvm': choose from onnxruntime, openvino"),
        ("ov_num_streams", "0", "parameter ov_num_streams is '0': give a positive integer"),
        ("ort_intra_op_threads", "two", "parameter ort_intra_op_threads is 'two': give an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=problem):
            from_parameters(GraphSettings, {**params, key: value})
    for key in params:
        with pytest.raises(ValueError, match=f"config.pbtxt sets no '{key}' parameter"):
            from_parameters(GraphSettings, {k: v for k, v in params.items() if k != key})


def test_every_parameter_is_declared_once():
    for cls in (GraphSettings, ImageLimits):
        names = [
            f.metadata["parameter"]
            for owner in (cls, OnnxRuntimeSettings, OpenVINOSettings)
            for f in dataclasses.fields(owner)
            if f.metadata.get("parameter")
        ]
        assert len(names) == len(set(names))


def test_the_precisions_are_those_of_the_export():
    from mmtrt.export.precision import PRECISIONS as EXPORTED

    assert set(PRECISIONS) == set(EXPORTED)
