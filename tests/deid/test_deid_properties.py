"""Properties of the rule engine over data sets built from the generated Table E.1-1 itself.

Each example plants elements drawn from `deid_table.PROFILE_ROWS` (values carrying unique canaries, UIDs
under an unregistered root, dates) at random depths inside sequences, and checks what must hold for any
input: no canary and no original UID in the output bytes, only registered or 2.25 UIDs, no element whose
row says X, the same bytes twice, one date offset per patient, and an untouched input.
"""

from __future__ import annotations

import copy
import io
import itertools
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from dicom_node.dicom.deid import DeidPolicy, DeidResult, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.dicom.deid_rules import Action, Option
from dicom_node.dicom.deid_table import PROFILE_ROWS, PROFILE_TABLE
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY, make_ct

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dicom_node.dicom.deid_rules import ProfileRow

KEYS = DeidKeys.from_secret(bytes(range(32)))
POLICY = DeidPolicy()
# An unregistered root: nothing under it is in pydicom's UID dictionary, so every such UID must be remapped.
ROOT = "1.2.826.0.1.3680043.10.543.77"
STUDY_DATE = "20240310"

# Written by the engine itself after the walk (DEID.md 4.2 rule 6, 4.6) or deciding the pixel risk (4.4):
# never drawn, so a drawn value cannot collide with the engine's own or turn the instance into a rejection.
ENGINE_WRITTEN = frozenset(
    tag_for_keyword(keyword)
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientAge",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
        "ContributingEquipmentSequence",
        "BurnedInAnnotation",
        "Modality",
        "ImageType",
        "SeriesDescription",
        "SpecificCharacterSet",
    )
)
REMOVING = frozenset(
    {
        Action.REMOVE,
        Action.ZERO,
        Action.DUMMY,
        Action.REMOVE_OR_ZERO,
        Action.REMOVE_OR_DUMMY,
        Action.REMOVE_OR_ZERO_OR_DUMMY,
        Action.ZERO_OR_DUMMY,
    }
)
CANARY_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "OB", "UN"})


def _vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _untouched_by_policy(row: ProfileRow) -> bool:
    """The policy's options leave this row at its Basic Profile action."""
    return all(row.options.get(option, row.basic) == row.basic for option in POLICY.options)


# Elements whose mere presence rejects the instance (DEID.md 4.4 step 2: an Encapsulated Document is never
# de-identified), so planting one would test the rejection, not the walk; the rejection has its own tests.
REJECTING_TAGS = frozenset({0x00420011})


def _drawable(row: ProfileRow) -> bool:
    return (
        row.tag >> 16 not in (0x0000, 0x0002, 0x0004, 0x7FE0)
        and row.tag not in ENGINE_WRITTEN
        and row.tag not in REJECTING_TAGS
        and bool(keyword_for_tag(row.tag))
    )


# Rows whose value must not survive: a canary goes in, nothing of it may come out.
CANARY_ROWS = tuple(
    row
    for row in PROFILE_ROWS
    if _drawable(row) and _untouched_by_policy(row) and row.basic in REMOVING and _vr(row.tag) in CANARY_VRS
)
# Rows whose whole element must go, at any depth, under this policy.
REMOVED_ROWS = frozenset(
    row.tag
    for row in PROFILE_ROWS
    if _drawable(row) and _untouched_by_policy(row) and row.basic is Action.REMOVE
)
UID_ROWS = tuple(
    row
    for row in PROFILE_ROWS
    if _drawable(row) and _untouched_by_policy(row) and row.basic is Action.UID and _vr(row.tag) == "UI"
)
# Dates that Retain Longitudinal Temporal Information with Modified Dates shifts (C) rather than drops.
DATE_ROWS = tuple(
    row
    for row in PROFILE_ROWS
    if _drawable(row)
    and _vr(row.tag) == "DA"
    and row.action_under(Option.RETAIN_LONGITUDINAL_MODIFIED_DATES) is Action.CLEAN
)
# Containers: the two X/Z/U* sequences the engine keeps and walks, and standard sequences the table does not
# name (rule 4 walks them), so planted elements land at depth 1, 2 and 3.
CONTAINERS = tuple(
    tag
    for tag in (
        *(row.tag for row in PROFILE_ROWS if row.basic is Action.REMOVE_OR_ZERO_OR_REMAP),
        *(
            tag_for_keyword(keyword)
            for keyword in (
                "AnatomicRegionSequence",
                "DerivationCodeSequence",
                "ReferencedSeriesSequence",
                "SharedFunctionalGroupsSequence",
                "PlaneOrientationSequence",
            )
        ),
    )
    if tag is not None
    and _vr(tag) == "SQ"
    and (
        PROFILE_TABLE.row_for(tag) is None
        or PROFILE_TABLE.basic_action(tag) is Action.REMOVE_OR_ZERO_OR_REMAP
    )
)
REFERENCED_SOP_CLASS_UID = 0x00081150
CODE_MEANING = 0x00080104
REGISTERED_SAMPLE = tuple(sorted(UID_dictionary))[:: max(1, len(UID_dictionary) // 40)]


@dataclass
class Plan:
    """What one example planted: canary strings, unregistered UIDs, and dates by their path."""

    canaries: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    registered: dict[str, str] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def canary(self) -> str:
        value = f"ZQC{next(self.counter):04d}XK"
        self.canaries.append(value)
        return value

    def uid(self) -> str:
        value = f"{ROOT}.{next(self.counter)}"
        self.uids.append(value)
        return value


def canary_value(vr: str, canary: str) -> object:
    if vr == "PN":
        return f"{canary}^{canary}G"
    if vr in ("OB", "UN"):
        return canary.encode()
    if vr == "UR":
        return f"http://example.invalid/{canary}"
    return canary


@st.composite
def planted_item(draw: st.DrawFn, plan: Plan, path: str, depth: int) -> Dataset:
    """One data set (or sequence item) with drawn table elements; `path` names it for the date checks."""
    ds = Dataset()
    for _ in range(draw(st.integers(1, 6 if depth == 0 else 3))):
        kind = draw(st.sampled_from(["canary", "uid", "registered", "date", "removed", "container"]))
        if kind == "container" and depth < 3:
            tag = draw(st.sampled_from(CONTAINERS))
            if tag in ds:
                continue
            count = draw(st.integers(1, 2))
            items = [
                draw(planted_item(plan, f"{path}{tag:08X}[{index}].", depth + 1)) for index in range(count)
            ]
            ds.add(DataElement(tag, "SQ", Sequence(items)))
            continue
        if kind == "canary" or kind == "container":
            row = draw(st.sampled_from(CANARY_ROWS))
            vr = _vr(row.tag)
            assert vr is not None
            element = DataElement(row.tag, vr, canary_value(vr, plan.canary()))
        elif kind == "uid":
            row = draw(st.sampled_from(UID_ROWS))
            element = DataElement(row.tag, "UI", plan.uid())
        elif kind == "registered":
            # A registered UID (a coding scheme, a SOP class) in a UID row must stay as it is.
            tag = REFERENCED_SOP_CLASS_UID
            if tag in ds:
                continue
            value = draw(st.sampled_from(REGISTERED_SAMPLE))
            plan.registered[f"{path}{tag:08X}"] = value
            element = DataElement(tag, "UI", value)
        elif kind == "date":
            row = draw(st.sampled_from(DATE_ROWS))
            value = draw(st.dates(date(1950, 1, 1), date(2030, 12, 31))).strftime("%Y%m%d")
            if row.tag in ds:
                continue
            plan.dates[f"{path}{row.tag:08X}"] = value
            element = DataElement(row.tag, "DA", value)
        else:
            tag = draw(st.sampled_from(sorted(REMOVED_ROWS)))
            vr = _vr(tag)
            if vr == "SQ":
                inner = Dataset()
                inner.add(DataElement(CODE_MEANING, "LO", plan.canary()))
                element = DataElement(tag, vr, Sequence([inner]))
            elif vr in CANARY_VRS:
                element = DataElement(tag, vr, canary_value(vr, plan.canary()))
            else:
                continue
        if element.tag in ds:
            continue
        ds.add(element)
    return ds


@st.composite
def planted_instances(draw: st.DrawFn) -> tuple[Dataset, Plan]:
    """make_ct with UIDs under ROOT, plus drawn table elements at random depths."""
    plan = Plan()
    study, series, instance = plan.uid(), plan.uid(), plan.uid()
    ds = make_ct(study_uid=study, series_uid=series, sop_instance_uid=instance)
    ds.FrameOfReferenceUID = plan.uid()
    ds.StudyDate = STUDY_DATE
    plan.dates["00080020"] = STUDY_DATE
    extra = draw(planted_item(plan, "", 0))
    for element in extra:
        if element.tag not in ds:
            ds.add(element)
    # A drawn value whose tag was taken already never went in; only what the input holds counts.
    planted = encoded(copy.deepcopy(ds))
    plan.canaries = [canary for canary in plan.canaries if canary.encode() in planted]
    plan.uids = [uid for uid in plan.uids if uid.encode() in planted]
    return ds, plan


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    """(path, element) at every depth; paths name sequence items by index, as `planted_item` does."""
    for element in ds:
        yield f"{path}{int(element.tag):08X}", element
        if element.VR == "SQ":
            for index, child in enumerate(element.value):
                yield from walk(child, f"{path}{int(element.tag):08X}[{index}].")


def uid_values(ds: Dataset) -> list[str]:
    values: list[str] = []
    for dataset in (ds.file_meta, ds):
        for _, element in walk(dataset):
            if element.VR == "UI" and element.value:
                items = element.value if isinstance(element.value, MultiValue) else [element.value]
                values.extend(str(value) for value in items if value)
    return values


def deidentify(ds: Dataset) -> DeidResult:
    return deidentify_dataset(ds, POLICY, KEYS)


EXAMPLES = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@EXAMPLES
@given(planted_instances())
def test_no_planted_canary_or_original_uid_survives_in_the_output_bytes(case: tuple[Dataset, Plan]) -> None:
    ds, plan = case
    result = deidentify(ds)
    output = encoded(result.dataset)
    survivors = [canary for canary in plan.canaries if canary.encode() in output]
    survivors += [uid for uid in plan.uids if uid.encode() in output]
    survivors += [value for value in (PATIENT_NAME_CANARY, PATIENT_ID_CANARY) if value.encode() in output]
    assert not survivors, survivors
    assert not [canary for canary in plan.canaries if canary in repr(result.report)]


@EXAMPLES
@given(planted_instances())
def test_every_output_uid_is_registered_or_a_2_25_pseudonym(case: tuple[Dataset, Plan]) -> None:
    ds, plan = case
    out = deidentify(ds).dataset
    values = uid_values(out)
    stray = [value for value in values if value not in UID_dictionary and not value.startswith("2.25.")]
    assert not stray, stray
    # Registered UIDs planted in kept or walked places are still there, unchanged (rule 4).
    kept = {path: str(element.value) for path, element in walk(out) if path in plan.registered}
    assert kept == plan.registered
    assert out.SOPClassUID == ds.SOPClassUID


@EXAMPLES
@given(planted_instances())
def test_no_element_whose_row_says_remove_is_in_the_output(case: tuple[Dataset, Plan]) -> None:
    ds, _ = case
    planted = {int(element.tag) for _, element in walk(ds)} & REMOVED_ROWS
    out = deidentify(ds).dataset
    present = sorted(
        f"{path} {keyword_for_tag(int(element.tag))}"
        for path, element in walk(out)
        if int(element.tag) in REMOVED_ROWS
    )
    assert not present, (present, sorted(planted))


@EXAMPLES
@given(planted_instances())
def test_deidentifying_is_deterministic_and_leaves_the_input_as_it_was(case: tuple[Dataset, Plan]) -> None:
    ds, _ = case
    before = copy.deepcopy(ds)
    before_bytes = encoded(copy.deepcopy(ds))
    first = encoded(deidentify(ds).dataset)
    assert ds == before
    assert encoded(copy.deepcopy(ds)) == before_bytes
    second = encoded(deidentify(ds).dataset)
    third = encoded(deidentify(copy.deepcopy(before)).dataset)
    assert first == second == third


@EXAMPLES
@given(planted_instances())
def test_every_surviving_date_moves_by_the_patients_one_offset(case: tuple[Dataset, Plan]) -> None:
    ds, plan = case
    out = deidentify(ds).dataset
    shifted = {
        path: str(element.value) for path, element in walk(out) if element.VR == "DA" and element.value
    }
    assert "00080020" in shifted, "StudyDate must be shifted, not dropped"
    offsets = {
        path: (datetime.strptime(shifted[path], "%Y%m%d") - datetime.strptime(original, "%Y%m%d")).days
        for path, original in plan.dates.items()
        if path in shifted
    }
    expected = KEYS.date_shift_days(POLICY.default_issuer, PATIENT_ID_CANARY)
    assert set(offsets.values()) == {expected}, offsets
    assert expected <= -365
