"""The input gate of DICOM metadata (mmtrt.data.gate): each rule refuses with a reason naming the
attribute and its value, a relaxed rule accepts, an absent attribute is accepted; on real files
written with pydicom (and pydicom's own CT), header only."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_fixtures import pydicom_file, save, xray_dataset, xray_pixels
from pydicom.dataset import Dataset

from mmtrt.cli_options import GATE_RULES_HELP
from mmtrt.data import gate
from mmtrt.data.decoded import EncodedFile

TWELVE = xray_pixels(1, (64, 64)).astype(np.uint16) * 16


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _file(tmp_path, name, **attributes):
    return save(xray_dataset(TWELVE, **attributes), tmp_path / name)


@pytest.mark.parametrize(
    "attributes, rule, reason",
    [
        (
            {"modality": "CR", "BodyPartExamined": "EXTREMITY"},
            "body-part",
            "Body Part Examined (0018,0015) is 'EXTREMITY', not a chest (CHEST, THORAX, LUNG, LUNGS) "
            "[rule body-part]",
        ),
        (
            {"AnatomicRegionSequence": [_code("30021000", "SCT", "Lower leg")]},
            "body-part",
            "Anatomic Region Sequence (0008,2218) codes SCT 30021000 (Lower leg): none is a chest, "
            "thorax or lung [rule body-part]",
        ),
        (
            {"ViewPosition": "LL"},
            "view",
            "View Position (0018,5101) is 'LL' (left lateral), not a frontal view (AP or PA) [rule view]",
        ),
        (
            {"ViewPosition": "LATERAL"},
            "view",
            "View Position (0018,5101) is 'LATERAL', not a frontal view (AP or PA) [rule view]",
        ),
        (
            {"modality": "MR"},
            "modality",
            "Modality (0008,0060) is 'MR', not a radiograph (CR or DX) [rule modality]",
        ),
    ],
)
def test_each_rule_refuses_with_its_reason_and_relaxed_accepts(tmp_path, attributes, rule, reason):
    path = _file(tmp_path, "x.dcm", **attributes)
    verdict = gate.judge_file(path)
    assert (verdict.accepted, verdict.rules, verdict.reason) == (False, (rule,), reason)
    assert gate.judge_file(path, {rule}) == gate.ACCEPTED
    others = set(gate.RULES) - {rule}
    assert gate.judge_file(path, others).rules == (rule,)  # only its own rule relaxes it
    # the bytes of the file, as the served file model judges them
    assert gate.judge_file(EncodedFile(path.read_bytes(), "image 0")) == verdict


def test_a_frontal_chest_radiograph_and_absent_attributes_are_accepted(tmp_path):
    chest = [_code("816094009", "SCT", "Chest")]
    for name, attributes in {
        "pa_chest.dcm": {"modality": "CR", "BodyPartExamined": "CHEST", "AnatomicRegionSequence": chest},
        "ap_thorax.dcm": {"ViewPosition": "AP", "BodyPartExamined": "THORAX"},
        "legacy_code.dcm": {"AnatomicRegionSequence": [_code("T-D3000", "SRT", "Chest")]},
        "meaning_only.dcm": {"AnatomicRegionSequence": [_code("C-1", "99LOCAL", "Lung")]},
        "empty_view.dcm": {"ViewPosition": ""},
    }.items():
        assert gate.judge_file(_file(tmp_path, name, **attributes)) == gate.ACCEPTED, name
    ds = xray_dataset(TWELVE)
    for keyword in ("Modality", "ViewPosition"):
        delattr(ds, keyword)
    assert "BodyPartExamined" not in ds and "AnatomicRegionSequence" not in ds
    assert gate.judge_file(save(ds, tmp_path / "bare.dcm")) == gate.ACCEPTED
    # not DICOM at all: nothing to judge here (the decoder reads it)
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert gate.judge_file(tmp_path / "x.png") == gate.ACCEPTED


def test_every_failed_rule_is_named_and_a_real_ct_is_refused(tmp_path):
    path = _file(tmp_path, "all.dcm", modality="CT", BodyPartExamined="HEAD", ViewPosition="RL")
    verdict = gate.judge_file(path)
    assert verdict.rules == ("body-part", "view", "modality")
    assert (
        "'HEAD'" in verdict.reason and "'RL' (right lateral)" in verdict.reason and "'CT'" in verdict.reason
    )
    assert gate.judge_file(path, "body-part,view").rules == ("modality",)
    ct = gate.judge_file(pydicom_file("CT_small.dcm"))  # pydicom's shipped CT slice
    assert ct.rules == ("modality",) and "Modality (0008,0060) is 'CT'" in ct.reason


def test_unknown_rules_are_refused_by_name():
    assert gate.relaxed_rules(" view , modality,") == {"view", "modality"}
    assert gate.relaxed_rules(None) == gate.relaxed_rules("") == frozenset()
    with pytest.raises(
        ValueError, match="unknown gate rule.s. lateral: choose from body-part, view, modality"
    ):
        gate.relaxed_rules("view,lateral")
    assert GATE_RULES_HELP == ", ".join(gate.RULES)  # the help of --allow names the rules
