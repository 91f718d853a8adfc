"""deidentify_dataset on synthetic instances: identity gone at every depth, references kept, pixels intact."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from dicom_node.dicom.deid import (
    CLAIMED_OPTIONS,
    DeidPolicy,
    DeidRejected,
    DeidResult,
    deidentify_dataset,
)
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.dicom.deid_rules import Option
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY, make_ct, make_us

KEYS = DeidKeys.from_secret(bytes(range(32)))
POLICY = DeidPolicy()
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def deidentify(ds: Dataset, policy: DeidPolicy = POLICY) -> DeidResult:
    return deidentify_dataset(ds, policy, KEYS)


def test_patient_name_and_id_canaries_are_gone_from_the_dataset_and_its_bytes() -> None:
    out = deidentify(make_ct()).dataset
    for canary in (PATIENT_NAME_CANARY, PATIENT_ID_CANARY, "CANARY"):
        assert canary not in str(out)
        assert canary.encode() not in encoded(out)
    assert out.PatientID == KEYS.patient_pseudonym("DICOM_NODE", PATIENT_ID_CANARY)
    assert out.PatientName == f"ANON^{out.PatientID}"
    assert out.IssuerOfPatientID == "DICOM_NODE"
    assert out.PatientBirthDate == ""


def test_the_input_is_not_changed() -> None:
    ds = make_ct()
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    before = copy.deepcopy(ds)
    before_bytes = encoded(copy.deepcopy(ds))
    result = deidentify(ds)
    assert ds == before
    assert encoded(ds) == before_bytes
    assert result.dataset is not ds


def test_uids_are_remapped_consistently_across_two_instances_of_one_study() -> None:
    study, series = generate_uid(), generate_uid()
    first = deidentify(make_ct(study_uid=study, series_uid=series, instance_number=1)).dataset
    second = deidentify(make_ct(study_uid=study, series_uid=series, instance_number=2)).dataset
    assert first.StudyInstanceUID == second.StudyInstanceUID == KEYS.uid(study)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == KEYS.uid(series)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPClassUID == first.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert study not in str(first) and series not in str(first)


def test_the_same_input_and_secret_give_the_same_bytes() -> None:
    ds = make_ct()
    assert encoded(deidentify(ds).dataset) == encoded(deidentify(ds).dataset)


def test_pixel_data_is_byte_identical() -> None:
    ds = make_ct(rows=128, columns=128)
    result = deidentify(ds)
    assert result.dataset.PixelData == ds.PixelData
    assert result.report.pixel_decision == "not_at_risk"


def test_the_recording_attributes_say_what_was_done() -> None:
    result = deidentify(make_ct())
    out = result.dataset
    assert out.PatientIdentityRemoved == "YES"
    method = list(out.DeidentificationMethod)
    assert method[0].startswith("dicom-node ")
    assert any("sha256:" in value and "2024e+2026c" in value for value in method)
    assert f"key:{KEYS.key_id}" in method
    assert all(len(value) <= 64 for value in method)
    codes = [(item.CodeValue, item.CodingSchemeDesignator) for item in out.DeidentificationMethodCodeSequence]
    assert codes[0] == ("113100", "DCM")
    assert {value for value, _ in codes[1:]} == {"113107", "113108"}
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    equipment = out.ContributingEquipmentSequence[-1]
    assert equipment.Manufacturer == "dicom-node"
    purpose = equipment.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109104",
        "DCM",
        "De-identifying Equipment",
    )
    assert equipment.ContributionDateTime.startswith(out.StudyDate)
    assert set(result.report.options_applied) == CLAIMED_OPTIONS


def test_dates_are_shifted_by_the_patients_offset_and_times_kept() -> None:
    ds = make_ct()
    ds.SeriesDate = "20251231"
    ds.AcquisitionDateTime = "20260101083000.5+0100"
    out = deidentify(ds).dataset
    days = KEYS.date_shift_days("DICOM_NODE", PATIENT_ID_CANARY)
    expected = (date(2026, 1, 1) + timedelta(days=days)).strftime("%Y%m%d")
    assert out.StudyDate == expected
    assert out.StudyTime == "120000"
    assert out.AcquisitionDateTime == expected + "083000.5+0100"
    assert out.SeriesDate == (date(2025, 12, 31) + timedelta(days=days)).strftime("%Y%m%d")


def test_an_unparseable_date_is_removed() -> None:
    ds = make_ct()
    ds.SeriesDate = "2026"
    out = deidentify(ds).dataset
    assert "SeriesDate" not in out


def test_patient_characteristics_are_kept_and_the_age_capped() -> None:
    ds = make_ct()
    ds.PatientAge = "095Y"
    ds.PatientWeight = 70
    ds.PatientSize = 1.8
    ds.EthnicGroup = "CANARYETHNIC"
    out = deidentify(ds).dataset
    assert out.PatientAge == "090Y"
    assert out.PatientSex == "O"
    assert float(out.PatientWeight) == 70 and float(out.PatientSize) == 1.8
    assert "EthnicGroup" not in out


def test_without_options_dates_and_characteristics_follow_the_basic_profile() -> None:
    ds = make_ct()
    ds.PatientAge = "050Y"
    out = deidentify(ds, DeidPolicy(options=frozenset())).dataset
    assert "PatientAge" not in out
    assert out.StudyDate == ""
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [item.CodeValue for item in out.DeidentificationMethodCodeSequence] == ["113100"]


def test_options_the_engine_does_not_implement_are_refused() -> None:
    with pytest.raises(ValueError):
        DeidPolicy(options=frozenset({Option.RETAIN_SAFE_PRIVATE}))


def test_private_elements_go_at_every_depth_and_creators_are_reported() -> None:
    ds = make_ct()
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x10, "LO", "CANARY-PRIVATE")
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    item.private_block(0x0011, "OTHER", create=True).add_new(0x01, "UN", b"CANARY-UN")
    ds.ReferencedImageSequence = Sequence([item])
    result = deidentify(ds)
    out = result.dataset
    assert b"CANARY" not in encoded(out)
    assert not any(element.tag.is_private for element in out.iterall())
    assert set(result.report.private_creators_removed) == {"ACME 1.0", "OTHER"}
    assert result.report.actions["private_removed"] == 4
    referenced = out.ReferencedImageSequence[0]
    assert referenced.ReferencedSOPClassUID == CTImageStorage
    assert referenced.ReferencedSOPInstanceUID == KEYS.uid(item.ReferencedSOPInstanceUID)


def test_free_text_goes_and_allowlisted_equipment_text_stays() -> None:
    ds = make_ct()
    ds.StudyDescription = "CANARY STUDY"
    ds.ImageComments = "CANARY comment"
    ds.ConvolutionKernel = "B30f"
    out = deidentify(ds).dataset
    assert "StudyDescription" not in out and "ImageComments" not in out
    assert out.Manufacturer == "dicom-node tests"
    assert out.ConvolutionKernel == "B30f"


def test_an_allowlisted_text_carrying_the_patient_id_is_removed() -> None:
    ds = make_ct()
    ds.ManufacturerModelName = f"X {PATIENT_ID_CANARY}"
    out = deidentify(ds).dataset
    assert "ManufacturerModelName" not in out


def test_code_meanings_are_kept_only_as_the_dictionary_spells_them() -> None:
    ds = make_ct()
    known = Dataset()
    known.CodeValue, known.CodingSchemeDesignator, known.CodeMeaning = "113100", "DCM", "CANARY"
    local = Dataset()
    local.CodeValue, local.CodingSchemeDesignator, local.CodeMeaning = "X1", "99LOCAL", "CANARY local"
    ds.ProcedureCodeSequence = Sequence([known, local])
    out = deidentify(ds).dataset
    assert "CANARY" not in str(out)
    kept, cleaned = out.ProcedureCodeSequence
    assert (kept.CodeValue, kept.CodeMeaning) == ("113100", "Basic Application Confidentiality Profile")
    assert "CodeValue" not in cleaned and "CodeMeaning" not in cleaned


def test_unknown_and_retired_elements_are_removed() -> None:
    ds = make_ct()
    ds.add_new(0x00330010, "LO", "CANARY-UNKNOWN")
    ds.add_new(0x00080040, "US", 1)  # Data Set Type, retired
    out = deidentify(ds).dataset
    assert 0x00330010 not in out and 0x00080040 not in out


def test_overlays_and_icons_are_removed() -> None:
    ds = make_ct()
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60003000, "OW", b"\x00" * 8)
    icon = Dataset()
    icon.PixelData = b"CANARY-ICON!"
    ds.IconImageSequence = Sequence([icon])
    out = deidentify(ds).dataset
    assert not any(element.tag.group == 0x6000 for element in out)
    assert "IconImageSequence" not in out


def test_an_ultrasound_instance_without_regions_is_rejected_as_burned_in() -> None:
    ds = make_ct()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.Modality = "US"
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == "deid.burned_in_uncleaned"
    assert "CANARY" not in str(raised.value)


def test_an_ultrasound_instance_with_regions_is_cleaned_outside_them() -> None:
    ds = make_us(regions=[(8, 8, 40, 30)])
    result = deidentify(ds)
    pixels = np.frombuffer(result.dataset.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    original = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    inside = np.zeros(pixels.shape, dtype=bool)
    inside[8:31, 8:41] = True
    assert np.all(pixels[~inside] == 0)
    assert np.array_equal(pixels[inside], original[inside])
    assert result.report.pixel_decision == "cleaned_us_regions"
    assert result.dataset.BurnedInAnnotation == "NO"
    assert "113101" in {item.CodeValue for item in result.dataset.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"BurnedInAnnotation": "YES"}, "deid.burned_in_uncleaned"),
        ({"ImageType": ["DERIVED", "SECONDARY"]}, "deid.burned_in_uncleaned"),
        ({"SeriesDescription": "Dose Report"}, "deid.burned_in_uncleaned"),
        ({"SOPClassUID": PDF_STORAGE}, "deid.encapsulated_document"),
    ],
)
def test_at_risk_instances_are_rejected_with_their_code(change: dict[str, object], code: str) -> None:
    ds = make_ct()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == code


def test_an_overlay_in_the_pixel_bits_is_at_risk() -> None:
    ds = make_ct()
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60000100, "US", 16)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == "deid.burned_in_uncleaned"


def test_text_hidden_above_the_high_bit_is_cleared() -> None:
    ds = make_ct()
    pixels = bytearray(ds.PixelData)
    pixels[1] |= 0x20  # bit 13 of the first pixel: BitsStored is 12
    ds.PixelData = bytes(pixels)
    result = deidentify(ds)
    out = bytearray(result.dataset.PixelData)
    assert out[1] == pixels[1] & 0x0F
    assert out[2:] == pixels[2:]
    assert result.report.pixel_decision == "cleaned_bits_above_high_bit"
    assert "113101" in {item.CodeValue for item in result.dataset.DeidentificationMethodCodeSequence}


def test_the_patients_name_spelled_in_the_pixel_bytes_is_at_risk() -> None:
    ds = make_ct()
    pixels = bytearray(ds.PixelData)
    pixels[64:75] = b"PATIENTNAME"
    ds.PixelData = bytes(pixels)
    with pytest.raises(DeidRejected):
        deidentify(ds)


def test_a_malformed_required_element_rejects_the_instance() -> None:
    ds = make_ct()
    tag = Tag(0x00280010)  # Rows, US: three bytes cannot be one
    ds[tag] = RawDataElement(tag, "US", 3, b"\x00\x02\x00", 0, False, True)
    with pytest.raises(DeidRejected) as raised:
        deidentify(ds)
    assert raised.value.code == "deid.malformed_required"


def test_a_malformed_optional_element_is_removed_not_copied() -> None:
    ds = make_ct()
    tag = Tag(0x00189345)  # CTDIvol, FD: seven bytes cannot be decoded
    ds[tag] = RawDataElement(tag, "FD", 7, b"CANARYX", 0, False, True)
    out = deidentify(ds).dataset
    assert tag not in out
    assert b"CANARY" not in encoded(out)


def test_a_name_hidden_in_the_bytes_of_a_binary_number_is_removed() -> None:
    ds = make_ct()
    tag = Tag(0x00189345)
    ds[tag] = RawDataElement(tag, "FD", 8, b"CANARY\x00\x00", 0, False, True)
    out = deidentify(ds).dataset
    assert tag not in out


def test_identity_in_sequences_the_table_does_not_list_is_removed() -> None:
    ds = make_ct()
    region = Dataset()
    region.PatientID = PATIENT_ID_CANARY
    region.OperatorsName = PATIENT_NAME_CANARY
    ds.AnatomicRegionSequence = Sequence([region])
    out = deidentify(ds).dataset
    assert "CANARY" not in str(out)
    assert out.AnatomicRegionSequence[0].PatientID == ""


def test_partial_invalid_and_range_dates_are_removed() -> None:
    ds = make_ct()
    ds.SeriesDate = "00000000"
    ds.AcquisitionDate = "2019.03.12"
    ds.AcquisitionDateTime = "202601"
    ds.ContentDate = "20190101-20190201"
    out = deidentify(ds).dataset
    for keyword in ("SeriesDate", "AcquisitionDate", "AcquisitionDateTime", "ContentDate"):
        assert keyword not in out, keyword


def test_shifted_dates_keep_the_real_interval_between_two_studies_of_one_patient() -> None:
    first = make_ct()
    second = make_ct()
    second.StudyDate = "20260122"
    shifted = [deidentify(ds).dataset.StudyDate for ds in (first, second)]
    days = (date.fromisoformat(shifted[1]) - date.fromisoformat(shifted[0])).days
    assert days == 21
    other = make_ct(patient_id="SOMEONE-ELSE")
    assert deidentify(other).dataset.StudyDate != shifted[0]


def test_our_own_output_is_not_deidentified_twice() -> None:
    out = deidentify(make_ct()).dataset
    with pytest.raises(DeidRejected) as raised:
        deidentify(out)
    assert raised.value.code == "deid.already_deidentified"


def test_pseudonyms_list_every_mapping_once() -> None:
    study = generate_uid()
    result = deidentify(make_ct(study_uid=study))
    kinds = [pseudonym.kind for pseudonym in result.pseudonyms]
    assert kinds.count("patient_id") == kinds.count("accession") == kinds.count("study_id") == 1
    assert len(set(result.pseudonyms)) == len(result.pseudonyms)
    uids = {
        pseudonym.original: pseudonym.pseudo for pseudonym in result.pseudonyms if pseudonym.kind == "uid"
    }
    assert uids[study] == result.dataset.StudyInstanceUID


# --- Fail-closed fuzzing (STYLE.md 2.8): canaries anywhere in, none out. ---

TEXT_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PersonName",
    "InstitutionName",
    "InstitutionAddress",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ConvolutionKernel",
    "StationName",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "TextValue",
    "ContentDescription",
    "DerivationDescription",
    "PatientAddress",
    "InstitutionalDepartmentName",
    "RequestedProcedureDescription",
    "DetectorID",
    "CodeMeaning",
    "CodeValue",
    "CodingSchemeDesignator",
    "LabelText",
    "RescaleType",
)
SEQUENCE_KEYWORDS = (
    "ReferencedImageSequence",
    "SourceImageSequence",
    "ContentSequence",
    "ProcedureCodeSequence",
    "AnatomicRegionSequence",
    "RequestAttributesSequence",
    "ContributingEquipmentSequence",
    "ReferencedStudySequence",
    "DerivationCodeSequence",
    "ConceptNameCodeSequence",
    "ReferencedSeriesSequence",
)


@dataclass(frozen=True)
class Text:
    keyword: str


@dataclass(frozen=True)
class Private:
    vr: str


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str


@dataclass(frozen=True)
class Nested:
    keyword: str
    items: tuple[tuple[object, ...], ...]


LEAVES = st.one_of(
    st.builds(Text, st.sampled_from(TEXT_KEYWORDS)),
    st.builds(Private, st.sampled_from(["LO", "UN", "UT", "SQ"])),
    st.builds(Code, st.sampled_from(["113100", "T-D1100", "CANARY"]), st.sampled_from(["DCM", "SRT", "99L"])),
)
ELEMENTS = st.recursive(
    LEAVES,
    lambda inner: st.builds(
        Nested,
        st.sampled_from(SEQUENCE_KEYWORDS),
        st.lists(st.lists(inner, max_size=4).map(tuple), min_size=1, max_size=2).map(tuple),
    ),
    max_leaves=24,
)
CANARIES = st.from_regex(r"ZQ[A-Z0-9]{6,12}", fullmatch=True)


def add_spec(ds: Dataset, spec: object, canary: str) -> None:
    if isinstance(spec, Text):
        tag = tag_for_keyword(spec.keyword)
        assert tag is not None
        vr = dictionary_VR(tag)
        ds.add_new(tag, vr, f"{canary}^{canary}" if vr == "PN" else canary)
    elif isinstance(spec, Private):
        block = ds.private_block(0x0009, f"VENDOR {canary}"[:64], create=True)
        if spec.vr == "SQ":
            inner = Dataset()
            inner.add_new(0x00080104, "LO", canary)
            block.add_new(0x20, "SQ", Sequence([inner]))
        else:
            block.add_new(0x10, spec.vr, canary.encode() if spec.vr == "UN" else canary)
    elif isinstance(spec, Code):
        ds.CodeValue = canary if spec.value == "CANARY" else spec.value
        ds.CodingSchemeDesignator = spec.scheme
        ds.CodeMeaning = canary
    elif isinstance(spec, Nested):
        items = []
        for item_specs in spec.items:
            item = Dataset()
            for child in item_specs:
                add_spec(item, child, canary)
            items.append(item)
        tag = tag_for_keyword(spec.keyword)
        assert tag is not None
        ds.add_new(tag, "SQ", Sequence(items))


def fuzz_dataset(specs: list[object], canary: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CT"
    for spec in specs:
        add_spec(ds, spec, canary)
    # The canary is this patient's identity, so a copy of it in an allowlisted text is caught too.
    ds.PatientID = canary
    ds.PatientName = f"{canary}^{canary}"
    return ds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ELEMENTS, min_size=1, max_size=8), CANARIES)
def test_no_canary_survives_at_any_depth(specs: list[object], canary: str) -> None:
    ds = fuzz_dataset(specs, canary)
    before = copy.deepcopy(ds)
    result = deidentify(ds)
    assert ds == before
    assert canary not in str(result.dataset)
    assert canary.encode() not in encoded(result.dataset)
    assert canary not in repr(result.report)
    assert all(canary not in pseudonym.pseudo for pseudonym in result.pseudonyms)


def test_instances_without_a_patient_id_do_not_share_one_pseudonym_or_offset() -> None:
    """Two unidentified patients (no PatientID) must not be linked by the pseudonym or the date offset."""
    keys = DeidKeys.from_secret(bytes(range(32)))

    def without_id(study_uid: str) -> Dataset:
        ds = make_ct(study_uid=study_uid)
        del ds.PatientID
        return deidentify_dataset(ds, DeidPolicy(), keys).dataset

    first, second = without_id("1.2.3.4.100"), without_id("1.2.3.4.200")
    assert first.PatientID != second.PatientID
    assert first.StudyDate != second.StudyDate, "one shared offset would link them"
    assert without_id("1.2.3.4.100").PatientID == first.PatientID, "still deterministic per study"
