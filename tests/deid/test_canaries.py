"""The canary scanner itself: it must see every planted value in both channels, or the suite is blind."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian

from tests.harness.canaries import (
    Canaries,
    assert_planted,
    encode_dataset,
    missing_canaries,
    scan_dataset,
    un_element,
)
from tests.harness.datasets import make_ct

NAME = "QXFAMILY^QXGIVEN^QXMIDDLE"
MRN = "MRN83920571"
CANARIES = Canaries(names=(NAME,), mrns=(MRN,), dates=("19610417",))


def clean_ct() -> Dataset:
    """A CT carrying none of CANARIES (the pixel data is random, so this also bounds chance matches)."""
    ds = make_ct(patient_name="ANON^NOBODY", patient_id="P0000", sop_instance_uid="1.2.3.4")
    ds.PatientBirthDate = ""
    return ds


def hit_paths(ds: Dataset, canaries: Canaries = CANARIES) -> set[str]:
    return {hit.where for hit in scan_dataset(ds, canaries)}


def test_needles_cover_components_reversed_names_initials_digit_runs_and_date_formats() -> None:
    texts = {needle.text for needle in CANARIES.needles()}
    assert {"QXFAMILY", "QXGIVEN", "QXMIDDLE", "QXGIVEN QXFAMILY"} <= texts
    assert {"QQMRN83920571", MRN, "83920571"} <= texts
    assert {"19610417", "1961-04-17", "04/17/1961"} <= texts


def test_a_clean_data_set_gives_no_hits() -> None:
    assert scan_dataset(clean_ct(), CANARIES) == []


def test_a_name_three_levels_deep_is_found_with_its_tag_path() -> None:
    ds = clean_ct()
    inner = Dataset()
    inner.PersonName = "qxfamily^someone"  # case changed on purpose
    middle = Dataset()
    middle.ReferencedStudySequence = [inner]
    ds.RequestAttributesSequence = [middle]
    paths = hit_paths(ds)
    deep = "(0040,0275) RequestAttributesSequence[0].(0008,1110) ReferencedStudySequence[0]."
    assert f"{deep}(0040,A123) PersonName" in paths
    assert any(path.startswith("bytes[") and "RequestAttributesSequence" in path for path in paths)


def test_a_reversed_name_in_free_text_and_a_date_in_us_format_are_found() -> None:
    ds = clean_ct()
    ds.ImageComments = "seen qxgiven QXfamily on 04/17/1961"
    found = {hit.needle.form for hit in scan_dataset(ds, CANARIES)}
    assert {"reversed name", "date", "name component"} <= found


def test_latin1_utf8_and_iso2022_names_are_found_in_the_encoded_bytes() -> None:
    cases = [
        ("ISO_IR 100", "QXMÜLLER^QXJÜRGEN"),
        ("ISO_IR 192", "QXŻÓŁTOWSKA^QXŁUCJA"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ]
    for charset, name in cases:
        ds = clean_ct()
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        canaries = Canaries(names=(name,))
        byte_hits = [hit for hit in scan_dataset(ds, canaries) if hit.where.startswith("bytes[")]
        components = {part for group in name.split("=") for part in group.split("^")}
        assert {hit.needle.text for hit in byte_hits} >= components, charset
        assert_planted(ds, canaries)


def test_bytes_of_ob_un_and_raw_elements_and_the_file_meta_are_scanned() -> None:
    ds = clean_ct()
    ds.add(un_element(0x00081070, b"QXFAMILY  "))
    ds.add(DataElement(0x0029_1010, "OB", b"\x00\x01MRN83920571\x00"))
    ds.file_meta.SourceApplicationEntityTitle = "QXGIVEN"
    paths = hit_paths(ds)
    assert any(path.startswith("(0008,1070) OperatorsName[") for path in paths)
    assert any(path.startswith("(0029,1010)[") for path in paths)
    assert "file_meta.(0002,0016) SourceApplicationEntityTitle" in paths


def test_the_preamble_is_part_of_the_bytes_channel() -> None:
    buffer = io.BytesIO()
    ds = clean_ct()
    ds.preamble = b"QXFAMILY".ljust(128, b"\0")
    dcmwrite(buffer, ds, enforce_file_format=True)
    read = dcmread(io.BytesIO(buffer.getvalue()))
    assert any("the preamble" in path for path in hit_paths(read))


def test_an_undecodable_raw_element_is_still_scanned_and_left_as_it_was() -> None:
    ds = clean_ct()
    tag = Tag(0x00189345)  # CTDIvol, FD: seven bytes cannot be decoded
    ds[tag] = RawDataElement(tag, "FD", 7, b"QXGIVEN", 0, False, True)
    paths = hit_paths(ds)
    assert any(path.startswith("(0018,9345) CTDIvol (raw)") for path in paths)
    assert any(path.startswith("bytes[") for path in paths)
    assert isinstance(ds.get_item(tag), RawDataElement)


def test_implicit_vr_private_elements_read_as_un_are_found() -> None:
    ds = clean_ct()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "PN", NAME)
    read = dcmread(io.BytesIO(encode_dataset(ds)), force=True)
    assert read[0x00091001].VR == "UN"
    assert any(path.startswith("(0009,1001)") for path in hit_paths(read))


def test_missing_canaries_names_what_the_input_lacks() -> None:
    assert missing_canaries(clean_ct(), Canaries(mrns=(MRN,))) == [
        f"{MRN!r} not in the encoded bytes",
        f"{MRN!r} not in any decoded value",
    ]
