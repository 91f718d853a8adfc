"""The private safe list (DEID.md 4.2 rule 2) and the Type-aware handling of values that must go (rule 3)."""

from __future__ import annotations

import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage

from dicom_node.dicom.deid import DeidPolicy, DeidRejected
from dicom_node.dicom.deid_rules import Option, SafePrivate
from tests.deid.test_adversarial import (
    MRN,
    NAME,
    assert_clean,
    deidentify,
    identity_canaries,
    odd_group_paths,
    patient_ct,
)
from tests.harness.canaries import assert_planted

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
WAVEFORM_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"

SAFE = DeidPolicy(
    safe_private=frozenset(
        {
            SafePrivate(group=0x0019, creator="ACME MR", offset=0x0C, vrs=frozenset({"FD", "IS"}), max_vm=3),
            SafePrivate(group=0x0019, creator="ACME MR", offset=0x0D, vrs=frozenset({"US"})),
        }
    )
)


def with_blocks(first: str, second: str) -> Dataset:
    ds = patient_ct()
    ds.add(DataElement(0x00190010, "LO", first))
    ds.add(DataElement(0x00190011, "LO", second))
    return ds


def test_a_safe_listed_number_is_kept_in_whichever_block_its_creator_reserved() -> None:
    for tens, elevens in ((0x1000, 0x1100), (0x1100, 0x1000)):
        ds = (
            with_blocks("ACME MR", "OTHER VENDOR")
            if tens == 0x1000
            else with_blocks("OTHER VENDOR", "ACME MR")
        )
        ds.add(DataElement(0x00190000 | tens | 0x0C, "FD", [1.5, 2.5]))
        ds.add(DataElement(0x00190000 | tens | 0x0D, "US", 7))
        ds.add(DataElement(0x00190000 | elevens | 0x0C, "FD", 9.0))  # same offset, the other creator

        out = deidentify(ds, SAFE).dataset

        assert list(out[0x00190000 | tens | 0x0C].value) == [1.5, 2.5]
        assert out[0x00190000 | tens | 0x0D].value == 7
        assert 0x00190000 | elevens | 0x0C not in out
        creator = 0x00190010 if tens == 0x1000 else 0x00190011
        assert out[creator].value == "ACME MR"
        assert (0x00190011 if creator == 0x00190010 else 0x00190010) not in out


def test_the_report_names_kept_and_removed_creators_and_the_option_is_claimed() -> None:
    ds = with_blocks("ACME MR", "OTHER VENDOR")
    ds.add(DataElement(0x0019100D, "US", 7))
    ds.add(DataElement(0x00191101, "US", 7))

    result = deidentify(ds, SAFE)

    assert result.report.private_creators_kept == ("ACME MR",)
    assert result.report.private_creators_removed == ("OTHER VENDOR",)
    assert Option.RETAIN_SAFE_PRIVATE in result.report.options_applied
    assert "113111" in {item.CodeValue for item in result.dataset.DeidentificationMethodCodeSequence}


def test_a_spoofed_creator_a_wrong_vr_text_in_a_number_orphans_and_private_sequences_go() -> None:
    ds = with_blocks("ACME MR ", "QXSPOOF ACME")
    ds.add(DataElement(0x0019100C, "LO", f"QXSAFETEXT {MRN}"))  # the right offset, a text VR
    ds.add(DataElement(0x0019100D, "SS", 5))  # the right offset, an undeclared VR
    ds.add(DataElement(0x0019110C, "FD", 3.0))  # the right offset under the spoofed creator
    ds.add(DataElement(0x00211010, "FD", 3.0))  # an orphan: no creator reserved the block
    ds.add(DataElement(0x0019100E, "SQ", Sequence([Dataset()])))
    canaries = identity_canaries(ds, texts=("QXSAFETEXT",))  # creator names are reported by design
    assert_planted(ds, canaries)

    result = deidentify(ds, SAFE)

    assert_clean(result, canaries)
    assert odd_group_paths(result.dataset) == []
    assert result.report.private_creators_kept == ()
    assert Option.RETAIN_SAFE_PRIVATE not in result.report.options_applied


@pytest.mark.parametrize("value", ["12AB", "1\\2\\3\\4", "83920571"])
def test_a_number_string_that_is_text_too_many_or_an_id_goes(value: str) -> None:
    ds = with_blocks("ACME MR", "OTHER")
    # Raw, as read from a file: pydicom refuses to build an IS of "12AB" in memory.
    raw = value.encode().ljust(len(value) + len(value) % 2)
    ds._dict[Tag(0x0019100C)] = RawDataElement(Tag(0x0019100C), "IS", len(raw), raw, 0, False, True)

    out = deidentify(ds, SAFE).dataset

    assert odd_group_paths(out) == []


def test_a_safe_listed_number_in_a_sequence_item_is_kept_but_a_private_sequence_is_not() -> None:
    ds = patient_ct()
    inner = Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.543.9.9"
    inner.add(DataElement(0x00190010, "LO", "ACME MR"))
    inner.add(DataElement(0x0019100D, "US", 3))
    inner.add(DataElement(0x0019100F, "SQ", Sequence([Dataset()])))
    ds.ReferencedImageSequence = [inner]

    out = deidentify(ds, SAFE).dataset

    kept = out.ReferencedImageSequence[0]
    assert kept[0x0019100D].value == 3 and kept[0x00190010].value == "ACME MR"
    assert 0x0019100F not in kept


@pytest.mark.parametrize(
    "entry",
    [
        {"group": 0x0018, "creator": "A", "offset": 1, "vrs": frozenset({"US"})},
        {"group": 0x0019, "creator": "A", "offset": 0x100, "vrs": frozenset({"US"})},
        {"group": 0x0019, "creator": "A", "offset": 1, "vrs": frozenset({"LO"})},
        {"group": 0x0019, "creator": "A", "offset": 1, "vrs": frozenset({"UI"})},
        {"group": 0x0019, "creator": "", "offset": 1, "vrs": frozenset({"US"})},
        {"group": 0x0019, "creator": "A", "offset": 1, "vrs": frozenset({"US"}), "max_vm": 0},
    ],
)
def test_a_safe_list_entry_outside_the_numeric_rules_is_refused(entry: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SafePrivate(**entry)  # type: ignore[arg-type]


def test_the_default_policy_keeps_no_private_element() -> None:
    assert DeidPolicy().safe_private == frozenset()
    ds = with_blocks("ACME MR", "OTHER")
    ds.add(DataElement(0x0019100D, "US", 7))
    assert odd_group_paths(deidentify(ds).dataset) == []


# --- Values that must go, resolved against the attribute's Type -------------------------------------------


def test_a_name_equal_to_an_image_type_defined_term_keeps_the_term() -> None:
    ds = patient_ct()
    ds.PatientName = "Perfusion^Stroke"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PERFUSION", "QXSTROKEWARD"]
    ds.OperatorsName = "Qxstrokeward^Ann"

    out = deidentify(ds).dataset

    assert list(out.ImageType) == ["ORIGINAL", "PRIMARY", "PERFUSION", ""]


def test_an_image_type_value_that_is_no_code_string_is_emptied_not_the_attribute() -> None:
    ds = patient_ct()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOM/RAD"]

    out = deidentify(ds).dataset

    assert list(out.ImageType) == ["ORIGINAL", "PRIMARY", ""]


def test_device_serial_number_is_a_dummy_where_type_1_and_empty_elsewhere() -> None:
    for sop_class, expected in ((ENHANCED_CT, "ANON"), (CTImageStorage, "")):
        ds = patient_ct()
        ds.SOPClassUID = sop_class
        ds.DeviceSerialNumber = "SN-QX4471"

        out = deidentify(ds).dataset

        assert out.DeviceSerialNumber == expected


def test_type_1_segment_text_gets_a_dummy_and_type_2_content_description_is_emptied() -> None:
    ds = patient_ct()
    ds.SOPClassUID = SEGMENTATION
    ds.ContentDescription = f"Liver of {NAME}"
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "QXSEGMENTLABEL"
    segment.SegmentAlgorithmName = "QXALGORITHM"
    segment.SegmentAlgorithmType = "AUTOMATIC"
    ds.SegmentSequence = [segment]
    canaries = identity_canaries(ds, texts=("QXSEGMENTLABEL", "QXALGORITHM"))

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.ContentDescription == ""
    assert (out.SegmentSequence[0].SegmentLabel, out.SegmentSequence[0].SegmentAlgorithmName) == (
        "ANON",
        "ANON",
    )


def test_a_legacy_snomed_code_keeps_its_value_and_gets_the_dictionary_meaning() -> None:
    ds = patient_ct()
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D0050", "SRT", "QXLOCALTISSUE"
    ds.AnatomicRegionSequence = [region]

    out = deidentify(ds).dataset.AnatomicRegionSequence[0]

    assert (out.CodeValue, out.CodingSchemeDesignator) == ("T-D0050", "SRT")
    assert "QX" not in out.CodeMeaning and out.CodeMeaning


def test_an_sr_document_is_rejected_as_structured_content() -> None:
    ds = patient_ct()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.ContentSequence = [Dataset()]
    with pytest.raises(DeidRejected) as rejected:
        deidentify(ds)
    assert rejected.value.code == "deid.structured_content"


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
def test_an_instance_without_its_identity_is_rejected(keyword: str) -> None:
    ds = patient_ct()
    delattr(ds, keyword)
    with pytest.raises(DeidRejected) as rejected:
        deidentify(ds)
    assert rejected.value.code == "deid.malformed_required"


def waveform(samples: bytes) -> Dataset:
    ds = patient_ct()
    ds.SOPClassUID = WAVEFORM_12_LEAD
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        if keyword in ds:
            delattr(ds, keyword)
    group = Dataset()
    group.NumberOfWaveformChannels = 1
    group.NumberOfWaveformSamples = len(samples) // 2
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.add(DataElement(0x54001010, "OW", samples))
    ds.WaveformSequence = [group]
    return ds


def test_waveform_samples_are_kept_byte_for_byte() -> None:
    samples = bytes(range(256)) * 4
    out = deidentify(waveform(samples)).dataset
    assert out.WaveformSequence[0].WaveformData == samples


def test_waveform_samples_spelling_the_patient_id_reject_the_instance() -> None:
    with pytest.raises(DeidRejected) as rejected:
        deidentify(waveform(b"\x00\x01" * 64 + MRN.encode() + b"\x00" * 64))
    assert rejected.value.code == "deid.burned_in_uncleaned"


def test_a_well_formed_number_string_at_a_safe_offset_is_kept() -> None:
    ds = with_blocks("ACME MR", "OTHER")
    ds.add(DataElement(0x0019100C, "IS", ["12", "-3"]))

    out = deidentify(ds, SAFE).dataset

    assert list(out[0x0019100C].value) == [12, -3]


def test_a_code_known_only_by_its_shape_that_spells_the_mrn_goes() -> None:
    ds = patient_ct()
    digits = "83920571"
    ds.PatientID = digits
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = digits, "SCT", "QXMEANING"
    region.CodingSchemeVersion = digits
    ds.AnatomicRegionSequence = [region]

    out = deidentify(ds).dataset.AnatomicRegionSequence[0]

    assert digits not in str(out) and "QXMEANING" not in str(out)
