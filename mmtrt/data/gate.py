"""The input gate of DICOM metadata: is this file a frontal chest radiograph, as far as its
header says? The model was made for frontal (AP / PA) chest X-rays, and answers anything it is
given; an image its header says is something else is refused, with the reason, instead.

The policy, one rule per attribute (each judged only when the attribute is present: a header
that says nothing is no reason to refuse; the pixels are another gate's to judge):

================  ==========================================================================
rule              refused when
================  ==========================================================================
``body-part``     Body Part Examined (0018,0015) is not one of :data:`CHEST_BODY_PARTS`
                  (CHEST, THORAX, LUNG...), or the Anatomic Region Sequence (0008,2218) holds
                  codes and none of them is a chest code (:data:`CHEST_CODES`: SNOMED CT
                  816094009 Chest, 51185008 Thoracic structure, 39607008 Lung; SNOMED RT
                  T-D3000, T-28000; or a code meaning Chest, Thorax or Lung)
``view``          View Position (0018,5101) is present and neither AP nor PA: LL and RL
                  (laterals), RLD / LLD (decubitus), RLO / LLO (obliques), LATERAL and any
                  other value
``modality``      Modality (0008,0060) is present and neither CR nor DX
                  (:data:`RADIOGRAPH_MODALITIES`): CT, MR, US, MG, OT...
================  ==========================================================================

Strict by default; each rule is relaxed by its name only (``mmtrt infer --allow view``, the
repository setting ``--allow`` of ``mmtrt repo`` for the served file model). A refused image's
:class:`Verdict` names every rule it failed, the attribute and its value.

Only the header is read (:func:`judge_file`: no pixels decoded). A file that is no DICOM file
has no metadata to judge and is accepted here; one whose header cannot be read is left to the
decoder, which says what is wrong with it. ``mmtrt infer`` and the served file model refuse
only files that decode: one that is no usable image (a structured report, a truncated file...)
is an error, as before, not a refusal. This module is copied beside the served models
(``mmtrt repo``), like the decoder it works beside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .decoded import DataError, Source, as_source
from .dicom import RADIOGRAPH_MODALITIES, read_dataset
from .images import looks_like_dicom

__all__ = ["RULES", "Verdict", "ACCEPTED", "judge", "judge_file", "relaxed_rules", "out_of_distribution"]

#: rule name -> the attribute it judges (the names ``--allow`` takes)
RULES = {
    "body-part": "Body Part Examined / Anatomic Region Sequence",
    "view": "View Position",
    "modality": "Modality",
}
#: Body Part Examined values of a chest (PS3.16 Annex L terms; compared upper-case)
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "LUNGS")
#: Anatomic Region Sequence codes of a chest, by coding scheme
CHEST_CODES = {
    "SCT": {"816094009": "Chest", "51185008": "Thoracic structure", "39607008": "Lung"},
    "SRT": {"T-D3000": "Chest", "T-28000": "Lung"},  # the legacy SNOMED RT codes of the last two
}
CHEST_CODE_MEANINGS = ("chest", "thorax", "lung", "thoracic structure")
#: View Position values of a frontal radiograph
FRONTAL_VIEWS = ("AP", "PA")
#: what the defined terms of View Position (PS3.3 C.8.11.5.1.1) mean, for the reasons
VIEW_NAMES = {
    "LL": "left lateral",
    "RL": "right lateral",
    "LLD": "left lateral decubitus",
    "RLD": "right lateral decubitus",
    "LLO": "left lateral oblique",
    "RLO": "right lateral oblique",
}


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one image: ``accepted``, else the ``rules`` it failed and one
    ``reasons`` line each, naming the attribute and its value."""

    accepted: bool
    rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The reasons as one line ("" when accepted)."""
        return "; ".join(self.reasons)


ACCEPTED = Verdict(True)


def relaxed_rules(names: str | Iterable[str] | None) -> frozenset[str]:
    """The rules to relax, from ``"view,modality"`` or an iterable of names (None or "": none).
    ValueError naming an unknown rule and the known ones."""
    if names is None:
        return frozenset()
    items = names.split(",") if isinstance(names, str) else list(names)
    asked = {str(n).strip() for n in items if str(n).strip()}
    unknown = sorted(asked - set(RULES))
    if unknown:
        raise ValueError(f"unknown gate rule(s) {', '.join(unknown)}: choose from {', '.join(RULES)}")
    return frozenset(asked)


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _body_part(ds) -> str | None:
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part.upper() not in CHEST_BODY_PARTS:
        return f"Body Part Examined (0018,0015) is {body_part!r}, not a chest ({', '.join(CHEST_BODY_PARTS)})"
    codes = [item for item in ds.get("AnatomicRegionSequence") or [] if _text(item, "CodeValue")]
    if codes and not any(_is_chest_code(item) for item in codes):
        named = ", ".join(
            f"{_text(item, 'CodingSchemeDesignator') or '?'} {_text(item, 'CodeValue')}"
            + (f" ({_text(item, 'CodeMeaning')})" if _text(item, "CodeMeaning") else "")
            for item in codes
        )
        return f"Anatomic Region Sequence (0008,2218) codes {named}: none is a chest, thorax or lung"
    return None


def _is_chest_code(item) -> bool:
    scheme = _text(item, "CodingSchemeDesignator").upper()
    if _text(item, "CodeValue") in CHEST_CODES.get(scheme, {}):
        return True
    return _text(item, "CodeMeaning").lower() in CHEST_CODE_MEANINGS


def _view(ds) -> str | None:
    view = _text(ds, "ViewPosition")
    if not view or view.upper() in FRONTAL_VIEWS:
        return None
    named = VIEW_NAMES.get(view.upper())
    return (
        f"View Position (0018,5101) is {view!r}{f' ({named})' if named else ''}, not a frontal view "
        f"({' or '.join(FRONTAL_VIEWS)})"
    )


def _modality(ds) -> str | None:
    modality = _text(ds, "Modality")
    if not modality or modality.upper() in RADIOGRAPH_MODALITIES:
        return None
    return f"Modality (0008,0060) is {modality!r}, not a radiograph ({' or '.join(RADIOGRAPH_MODALITIES)})"


_CHECKS = {"body-part": _body_part, "view": _view, "modality": _modality}
assert tuple(_CHECKS) == tuple(RULES)


def judge(ds, relaxed: Iterable[str] = ()) -> Verdict:
    """The verdict on a pydicom data set: every rule not in ``relaxed`` that it fails."""
    relaxed = relaxed_rules(relaxed)
    failed = [(rule, check(ds)) for rule, check in _CHECKS.items() if rule not in relaxed]
    failed = [(rule, reason) for rule, reason in failed if reason]
    if not failed:
        return ACCEPTED
    rules, reasons = zip(*failed)
    return Verdict(False, rules, tuple(f"{reason} [rule {rule}]" for rule, reason in failed))


def judge_file(source: Source, relaxed: Iterable[str] = ()) -> Verdict:
    """The verdict on a file (or a file's bytes, ``EncodedFile``), from its DICOM header only.
    Not DICOM, or a header that cannot be read: accepted here (the decoder says what is wrong)."""
    source = as_source(source)
    if not looks_like_dicom(source):
        return ACCEPTED
    try:
        ds = read_dataset(source, stop_before_pixels=True)
    except DataError:
        return ACCEPTED
    return judge(ds, relaxed)


def out_of_distribution(score: float, threshold: float | None = None) -> str:
    """The reason an image the image gate of the exported graphs (mmtrt/ood.py) refused is given:
    its pixels do not look like the images the export's gate was fitted on."""
    above = (
        f"above the export's threshold {threshold:.4g}"
        if threshold is not None
        else "above the export's threshold"
    )
    return (
        f"out of distribution: the image gate's score {score:.4g} is {above} (the image does not "
        "look like the chest X-rays the model was fitted on)"
    )
