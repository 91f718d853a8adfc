"""The generated conformance statement (PS3.2 Table N.11-6) says what the engine really does."""

from __future__ import annotations

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from dicom_node.dicom.deid import CLAIMED_OPTIONS, DeidPolicy, deidentify_dataset
from dicom_node.dicom.deid_conformance import FIXED, conformance_lines
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.dicom.deid_table import PATTERN_ROWS, PROFILE_ROWS
from dicom_node.dicom.deid_walk import action_for
from tests.harness.datasets import make_ct

KEYS = DeidKeys.from_secret(bytes(range(32)))
_TEXT_VALUES = {
    "LO": "REMOVE ME",
    "SH": "REMOVEME",
    "LT": "remove me",
    "ST": "remove me",
    "PN": "Remove^Me",
    "CS": "REMOVEME",
    "DA": "20200101",
    "TM": "101010",
    "DT": "20200101101010",
    "DS": "1.5",
    "IS": "7",
    "UT": "remove me",
    "AS": "042Y",
}
REMOVED = [
    row
    for row in PROFILE_ROWS
    if action_for(row.tag, CLAIMED_OPTIONS).value == "X"
    and row.tag >> 16 not in (0x0000, 0x0002)
    and row.tag not in FIXED
    and keyword_for_tag(row.tag)
    and dictionary_VR(row.tag) in _TEXT_VALUES
]


def _deidentify(ds: Dataset) -> Dataset:
    return deidentify_dataset(ds, DeidPolicy(), KEYS).dataset


def test_every_row_of_the_table_is_stated_once() -> None:
    lines = list(conformance_lines())
    rows = [line for line in lines if line.startswith("| (") or line.startswith("| (GGGG")]
    assert len(rows) == len(PROFILE_ROWS) + len(PATTERN_ROWS)
    stated = {line.split(" | ")[0].removeprefix("| ") for line in rows}
    assert len(stated) == len(rows)


@pytest.mark.parametrize("row", REMOVED, ids=lambda row: keyword_for_tag(row.tag))
def test_an_element_stated_as_removed_is_gone_from_the_output(row: object) -> None:
    tag = row.tag  # type: ignore[attr-defined]
    ds = make_ct()
    ds.add_new(tag, dictionary_VR(tag), _TEXT_VALUES[dictionary_VR(tag)])
    assert tag not in _deidentify(ds)


def test_the_fixed_identity_values_are_what_the_statement_says() -> None:
    original = make_ct()
    out = _deidentify(original)
    assert set(FIXED) <= {row.tag for row in PROFILE_ROWS}
    assert str(out.PatientName) == f"ANON^{out.PatientID}" and out.PatientID != original.PatientID
    assert out.PatientID.startswith("P") and len(out.PatientID) == 16
    assert out.PatientBirthDate == ""
    assert len(out.AccessionNumber) == 16 and out.AccessionNumber != original.AccessionNumber
    assert out.IssuerOfPatientID == DeidPolicy().default_issuer


def test_kept_and_shifted_rows_behave_as_stated() -> None:
    original = make_ct()
    out = _deidentify(original)
    statement = "\n".join(conformance_lines())
    assert "| (0010,0040) | Patient's Sex | Z | K: kept |" in statement
    assert out.PatientSex == original.PatientSex
    assert "| (0008,0020) | Study Date | Z | C: cleaned" in statement
    assert out.StudyDate and out.StudyDate != original.StudyDate
    assert out.StudyInstanceUID.startswith("2.25.")
