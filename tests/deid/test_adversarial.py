"""DEID.md 6 against the header engine: canaries in, zero canaries out (bytes and values), plus each arrow.

One test (or one parametrised family) per case, named after it. Every input is first proven to carry its
canaries, so a clean output means the engine removed them, not that the scanner missed them. Pixel cleaning is
not built in this slice: for the pixel cases the arrow is that an at-risk instance is rejected, never passed.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    EncapsulatedCDAStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    OphthalmicPhotography8BitImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UID_dictionary,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    VideoEndoscopicImageStorage,
    VLPhotographicImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from dicom_node.dicom.deid import CLAIMED_OPTIONS, DeidPolicy, DeidRejected, DeidResult, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys, load_or_create_secret
from dicom_node.dicom.deid_rules import Option
from dicom_node.dicom.deid_table import BASE_SOURCE, SOURCE_SHA256
from tests.harness.canaries import (
    Canaries,
    assert_no_canaries,
    assert_planted,
    encode_dataset,
    scan_text,
    un_element,
)
from tests.harness.datasets import make_ct
from tests.harness.dicom_tools import run_tool

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pydicom.sr.coding import Code

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(100, 132))
KEYS = DeidKeys.from_secret(SECRET)
POLICY = DeidPolicy()
ISSUER = POLICY.default_issuer
# An unregistered root for the test UIDs; pydicom's UID dictionary holds nothing under it.
ROOT = "1.2.826.0.1.3680043.10.543"

NAME = "QXFAMILY^QXGIVEN^QXMIDDLE"
MRN = "MRN83920571"
BIRTH_DATE = "19610417"
STUDY_DATE = "20250615"
ACCESSION = "QXACC7788"
STUDY_ID = "QXSID12"
SHIFT = KEYS.date_shift_days(ISSUER, MRN)

# CID 7050 (PS3.16), as the Option comments in deid_rules give them.
OPTION_CODES = {
    Option.CLEAN_GRAPHICS: "113103",
    Option.CLEAN_STRUCTURED_CONTENT: "113104",
    Option.CLEAN_DESCRIPTORS: "113105",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "113106",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "113107",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "113108",
    Option.RETAIN_DEVICE_IDENTITY: "113109",
    Option.RETAIN_UIDS: "113110",
    Option.RETAIN_SAFE_PRIVATE: "113111",
    Option.RETAIN_INSTITUTION_IDENTITY: "113112",
}
BURNED_IN = "deid.burned_in_uncleaned"
ENCAPSULATED = "deid.encapsulated_document"


# --- building inputs --------------------------------------------------------------------------------------


def patient_ct(
    *,
    study: str = "1",
    instance: int = 1,
    patient_id: str = MRN,
    patient_name: str = NAME,
    study_date: str = STUDY_DATE,
) -> Dataset:
    """make_ct with this module's canaries and UIDs under ROOT, unique per study and instance."""
    ds = make_ct(
        study_uid=f"{ROOT}.{study}",
        series_uid=f"{ROOT}.{study}.1",
        sop_instance_uid=f"{ROOT}.{study}.1.{instance}",
        instance_number=instance,
        patient_id=patient_id,
        patient_name=patient_name,
        seed=instance,
    )
    ds.FrameOfReferenceUID = f"{ROOT}.{study}.0"
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyDate = study_date
    ds.StudyTime = "083015"
    ds.AccessionNumber = ACCESSION
    ds.StudyID = STUDY_ID
    return ds


def item(**keywords: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def coded(code: Code) -> Dataset:
    return code_item(code.value, code.scheme_designator, code.meaning)


def unchecked(tag: int, vr: str, value: object) -> DataElement:
    """An element pydicom would warn about (an invalid date, say): adversarial input on purpose."""
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def identity_canaries(ds: Dataset, **extra: tuple[str, ...]) -> Canaries:
    """The patient's name, ID, birth and study dates, accession, Study ID and every unregistered input UID."""
    snapshot = copy.deepcopy(ds)  # reading converts raw elements; the engine must meet the input as stored
    texts = [str(snapshot.get(keyword, "")) for keyword in ("AccessionNumber", "StudyID")]
    texts.extend(uid for _, uid in all_uids(snapshot) if uid not in UID_dictionary)
    found = Canaries(
        names=(str(snapshot.PatientName),),
        mrns=(str(snapshot.PatientID),),
        dates=tuple(
            str(snapshot.get(keyword, "")) for keyword in ("PatientBirthDate", "StudyDate") if keyword in ds
        ),
        texts=tuple(text for text in texts if text),
    )
    return found + Canaries(**extra)


# --- running the engine and walking outputs ---------------------------------------------------------------


def deidentify(ds: Dataset, policy: DeidPolicy = POLICY, keys: DeidKeys = KEYS) -> DeidResult:
    """Run the engine and prove it left its input as it was (the contract: a new data set)."""
    before = encode_dataset(ds)
    result = deidentify_dataset(ds, policy, keys)
    assert encode_dataset(ds) == before, "the engine changed its input"
    assert result.dataset is not ds
    return result


def assert_clean(result: DeidResult, canaries: Canaries) -> None:
    """Zero canaries in the output bytes and values, and none in a pseudonym (they reach the non-PHI side)."""
    assert_no_canaries(result.dataset, canaries)
    needles = canaries.needles()
    leaks = [hit for row in result.pseudonyms for hit in scan_text(row.pseudo, needles, where=row.kind)]
    leaks.extend(scan_text(repr(result.report), needles, where="report"))  # the report is non-PHI (4.6)
    assert not leaks, [str(hit) for hit in leaks]


def assert_rejected(ds: Dataset, code: str, canaries: Canaries) -> None:
    """Rejected with `code`, and the error carries no canary (it reaches logs and rejection rows)."""
    with pytest.raises(DeidRejected) as caught:
        deidentify_dataset(ds, POLICY, KEYS)
    assert caught.value.code == code
    needles = canaries.needles()
    assert not scan_text(f"{caught.value!s} {caught.value.args!r}", needles, where="error")


def walk_elements(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, DataElement]]:
    """(path, element) for every decodable element at every depth (the canary scan covers the rest)."""
    for tag in sorted(ds.keys()):
        try:
            element = ds[tag]
        except Exception:  # a malformed element, planted on purpose
            continue
        path = f"{prefix}{element.tag}"
        yield path, element
        if element.VR == "SQ":
            for index, child in enumerate(element.value):
                yield from walk_elements(child, f"{path}[{index}].")


def all_uids(ds: Dataset) -> list[tuple[str, str]]:
    """(path, value) of every UI value, element-wise, in the file meta and at every depth."""
    found: list[tuple[str, str]] = []
    sources = [("file_meta.", ds.file_meta)] if hasattr(ds, "file_meta") else []
    for prefix, dataset in [*sources, ("", ds)]:
        for path, element in walk_elements(dataset, prefix):
            if element.VR == "UI" and element.value:
                values = element.value if isinstance(element.value, MultiValue) else [element.value]
                found.extend((path, str(value)) for value in values if value)
    return found


def shift(value: str, days: int) -> str:
    return (datetime.strptime(value, "%Y%m%d") + timedelta(days=days)).strftime("%Y%m%d")


def offset_days(original: str, shifted: str) -> int:
    return (datetime.strptime(shifted, "%Y%m%d") - datetime.strptime(original, "%Y%m%d")).days


def empty_or_absent(ds: Dataset, keyword: str) -> bool:
    return keyword not in ds or ds[keyword].value in (None, "", b"") or ds[keyword].VM == 0


def method_text(ds: Dataset) -> str:
    value = ds.DeidentificationMethod
    return "; ".join(value) if isinstance(value, MultiValue) else str(value)


# --- Header: standard places (1-5) ------------------------------------------------------------------------


def test_case01_identity_in_standard_places_leaves_only_keyed_pseudonyms() -> None:
    ds = patient_ct()
    ds.PatientAddress = "12 QXSTREET Road, QXTOWN"
    ds.PatientTelephoneNumbers = "QX5550199"
    ds.PatientMotherBirthName = "QXMOTHER^QXMUM"
    ds.PatientBirthName = "QXBIRTHNAME^QXGIVEN"
    ds.OtherPatientNames = ["QXALIAS^QXONE", "QXALIASTWO^QXTWO"]
    ds.ReferringPhysicianName = "QXREFERRER^QXDOC"
    ds.PerformingPhysicianName = "QXPERFORMER^QXDOC"
    ds.NameOfPhysiciansReadingStudy = "QXREADER^QXDOC"
    ds.OperatorsName = ["QXOPERATOR^QXTECH", "QXSECONDOP^QXTECH"]
    ds.RequestingPhysician = "QXREQUESTER^QXDOC"
    ds.InstitutionName = "QXINSTITUTE Hospital"
    ds.InstitutionAddress = "1 QXAVENUE, QXCITY"
    ds.InstitutionalDepartmentName = "QXDEPARTMENT"
    ds.StationName = "QXSTATION"
    ds.DeviceSerialNumber = "QXSERIAL99"
    canaries = identity_canaries(
        ds,
        names=(
            "QXMOTHER^QXMUM",
            "QXBIRTHNAME^QXGIVEN",
            "QXALIAS^QXONE",
            "QXALIASTWO^QXTWO",
            "QXREFERRER^QXDOC",
            "QXPERFORMER^QXDOC",
            "QXREADER^QXDOC",
            "QXOPERATOR^QXTECH",
            "QXSECONDOP^QXTECH",
            "QXREQUESTER^QXDOC",
        ),
        texts=(
            *("QXSTREET", "QXTOWN", "QX5550199", "QXINSTITUTE", "QXAVENUE", "QXCITY"),
            *("QXDEPARTMENT", "QXSTATION", "QXSERIAL99"),
        ),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    pid = KEYS.patient_pseudonym(ISSUER, MRN)
    assert out.PatientID == pid
    assert str(out.PatientName) == f"ANON^{pid}"
    assert out.IssuerOfPatientID == POLICY.default_issuer
    assert out.AccessionNumber == KEYS.accession(ISSUER, ACCESSION)
    assert out.StudyID == KEYS.study_id(ISSUER, STUDY_ID)
    assert empty_or_absent(out, "PatientBirthDate")
    assert "OtherPatientNames" not in out


def test_case02_other_patient_ids_and_issuer_qualifiers_go() -> None:
    ds = patient_ct()
    ds.OtherPatientIDs = ["MRNALT3141592", "MRNALT2718281"]
    ds.OtherPatientIDsSequence = [
        item(PatientID="MRN55512345", IssuerOfPatientID="QXINSTITUTE", TypeOfPatientID="TEXT"),
        item(PatientID="MRN66612345", IssuerOfPatientID="QXOTHERHOSP", TypeOfPatientID="TEXT"),
    ]
    ds.IssuerOfPatientIDQualifiersSequence = [
        item(
            UniversalEntityID="QXUNIVERSAL.ENTITY",
            UniversalEntityIDType="ISO",
            IdentifierTypeCode="MR",
            AssigningFacilitySequence=[item(LocalNamespaceEntityID="QXFACILITY")],
        )
    ]
    canaries = identity_canaries(
        ds,
        mrns=("MRNALT3141592", "MRNALT2718281", "MRN55512345", "MRN66612345"),
        texts=("QXINSTITUTE", "QXOTHERHOSP", "QXUNIVERSAL", "QXFACILITY"),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    assert "OtherPatientIDs" not in result.dataset
    assert "OtherPatientIDsSequence" not in result.dataset


def test_case03_an_mrn_reused_in_other_identifiers_gets_a_different_pseudonym_per_kind() -> None:
    ds = patient_ct()
    ds.RequestedProcedureID = MRN
    ds.ScheduledProcedureStepID = MRN
    ds.StudyID = MRN
    ds.AccessionNumber = MRN
    ds.SeriesDescription = f"CT chest {MRN}"
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    pseudonyms = {
        out.PatientID: KEYS.patient_pseudonym(ISSUER, MRN),
        out.AccessionNumber: KEYS.accession(ISSUER, MRN),
        out.StudyID: KEYS.study_id(ISSUER, MRN),
    }
    assert all(actual == expected for actual, expected in pseudonyms.items())
    assert len(pseudonyms) == 3, "one MRN must not give the same pseudonym in two roles"
    assert empty_or_absent(out, "RequestedProcedureID")
    assert empty_or_absent(out, "ScheduledProcedureStepID")


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 100", "QXMÜLLER^QXJÜRGEN"),
        ("ISO_IR 192", "QXŻÓŁTOWSKA^QXŁUCJA"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
    ids=["latin1", "utf8", "iso2022-japanese"],
)
def test_case04_non_ascii_names_lose_every_component_group(charset: str | list[str], name: str) -> None:
    ds = patient_ct(patient_name=name)
    ds.SpecificCharacterSet = charset
    ds.OperatorsName = name
    ds.ReferencedImageSequence = [
        item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f"{ROOT}.9.1", PersonName=name)
    ]
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.PatientName.ideographic == ""
    assert out.PatientName.phonetic == ""
    assert out.SpecificCharacterSet == ds.SpecificCharacterSet
    assert str(out.PatientName).isascii()


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        ("105Y", "090Y"),
        ("090Y", "090Y"),
        ("089Y", "089Y"),
        ("045Y", "045Y"),
        ("006M", "006M"),
        (None, "090Y"),
    ],
    ids=["105Y", "090Y", "089Y", "045Y", "006M", "absent-born-1920"],
)
def test_case05_ages_are_capped_at_90_and_birth_date_goes(age: str | None, expected: str) -> None:
    """An absent age may be computed from the birth date (DEID.md 4.3); if it is, it is capped too."""
    ds = patient_ct()
    ds.PatientBirthDate = "19200301"
    if age is not None:
        ds.PatientAge = age
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.get("PatientAge", expected if age is None else None) == expected
    assert empty_or_absent(out, "PatientBirthDate")
    assert offset_days(STUDY_DATE, out.StudyDate) == SHIFT


# --- Header: hiding places (6-16) -------------------------------------------------------------------------


def test_case06_phi_three_levels_deep_goes_and_kept_sequences_are_walked() -> None:
    ds = patient_ct()
    ds.RequestAttributesSequence = [
        item(
            RequestedProcedureID=MRN,
            ReferencedStudySequence=[
                item(
                    ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                    ReferencedSOPInstanceUID=f"{ROOT}.8.1",
                    PersonName="QXDEEPONE^QXNAME",
                )
            ],
        )
    ]
    ds.ReferencedImageSequence = [
        item(
            ReferencedSOPClassUID=CTImageStorage,
            ReferencedSOPInstanceUID=f"{ROOT}.8.2",
            PersonName="QXDEEPTWO^QXNAME",
            PurposeOfReferenceCodeSequence=[
                item(
                    CodeValue="121311",
                    CodingSchemeDesignator="DCM",
                    CodeMeaning="Localizer",
                    ContextIdentifier="7201",
                    PersonName="QXDEEPTHREE^QXNAME",
                )
            ],
        )
    ]
    canaries = identity_canaries(ds, names=("QXDEEPONE^QXNAME", "QXDEEPTWO^QXNAME", "QXDEEPTHREE^QXNAME"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    kept = result.dataset.ReferencedImageSequence[0]
    assert kept.ReferencedSOPInstanceUID == KEYS.uid(f"{ROOT}.8.2")
    assert kept.ReferencedSOPClassUID == CTImageStorage


def test_case07_phi_in_sequences_the_table_does_not_list_goes() -> None:
    ds = patient_ct()
    region = coded(codes.SCT.Liver)
    region.PatientID = MRN
    ds.AnatomicRegionSequence = [region]
    ds.ProcedureCodeSequence = [
        item(
            CodeValue="168731009",
            CodingSchemeDesignator="SCT",
            CodeMeaning="Chest X-ray",
            OperatorsName="QXHIDDENOP^QXTECH",
        )
    ]
    canaries = identity_canaries(ds, names=("QXHIDDENOP^QXTECH",))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    kept = result.dataset.AnatomicRegionSequence[0]
    assert (kept.CodeValue, kept.CodingSchemeDesignator) == (codes.SCT.Liver.value, "SCT")


def test_case08_a_name_in_a_local_code_meaning_goes_and_a_standard_meaning_stays() -> None:
    ds = patient_ct()
    ds.AnatomicRegionSequence = [
        coded(codes.SCT.Liver),
        code_item("L0042", "99QXLOCAL", "Dr QXCODEMEANING chest protocol"),
        code_item(codes.SCT.Liver.value, "SCT", "Liver of QXSTANDARDMEANING"),
    ]
    ds.DerivationCodeSequence = [coded(codes.DCM.Localizer)]
    canaries = identity_canaries(ds, texts=("QXCODEMEANING", "QXSTANDARDMEANING"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.AnatomicRegionSequence[0].CodeMeaning == codes.SCT.Liver.meaning
    assert out.DerivationCodeSequence[0].CodeMeaning == codes.DCM.Localizer.meaning


def test_case09_text_value_overlays_and_curves_go() -> None:
    ds = patient_ct()
    ds.add(DataElement(0x0040A160, "UT", f"Report for QXTEXTVALUE {MRN}"))
    for group, label in ((0x6000, b"QXOVERLAYBITS0"), (0x6002, b"QXOVERLAYBITS2")):
        base = group << 16
        ds.add(DataElement(base | 0x0010, "US", 64))
        ds.add(DataElement(base | 0x0011, "US", 64))
        ds.add(DataElement(base | 0x0040, "CS", "G"))
        ds.add(DataElement(base | 0x0050, "SS", [1, 1]))
        ds.add(DataElement(base | 0x0100, "US", 1))
        ds.add(DataElement(base | 0x0102, "US", 0))
        ds.add(DataElement(base | 0x0022, "LO", f"QXOVERLAYDESC{group & 0xFF}"))
        ds.add(DataElement(base | 0x3000, "OW", label.ljust(512, b"\0")))
        ds.add(DataElement(base | 0x4000, "LT", f"QXOVLCOMMENT{group & 0xFF} by {NAME}"))
    for group in (0x5000, 0x501E):
        base = group << 16
        ds.add(DataElement(base | 0x0005, "US", 1))
        ds.add(DataElement(base | 0x0022, "LO", f"QXCURVEDESC{group & 0xFF}"))
        ds.add(DataElement(base | 0x3000, "OB", f"QXCURVEDATA{group & 0xFF}".encode().ljust(16, b"\0")))
    canaries = identity_canaries(
        ds,
        texts=(
            *("QXTEXTVALUE", "QXOVERLAYBITS0", "QXOVERLAYBITS2", "QXOVERLAYDESC"),
            *("QXOVLCOMMENT", "QXCURVEDESC", "QXCURVEDATA"),
        ),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert 0x0040A160 not in out
    left = [path for path, element in walk_elements(out) if 0x5000 <= element.tag.group <= 0x60FF]
    assert not left, left
    assert out.PixelData == ds.PixelData


def test_case09_sr_content_items_lose_text_names_dates_and_local_meanings() -> None:
    """Content Sequence is D in Basic: whatever of it stays must carry nothing (TEXT, PNAME, DATE, CODE)."""
    ds = patient_ct()
    ds.ContentSequence = [
        item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=f"Seen by QXSRTEXT for {MRN}"),
        item(RelationshipType="HAS OBS CONTEXT", ValueType="PNAME", PersonName="QXSROBSERVER^QXDOC"),
        item(RelationshipType="CONTAINS", ValueType="DATE", Date=STUDY_DATE),
        item(
            RelationshipType="CONTAINS",
            ValueType="CODE",
            ConceptCodeSequence=[code_item("L1", "99QXLOCAL", "QXSRMEANING lesion")],
            ContentSequence=[
                item(RelationshipType="HAS PROPERTIES", ValueType="TEXT", TextValue="QXSRNESTED")
            ],
        ),
    ]
    canaries = identity_canaries(
        ds, names=("QXSROBSERVER^QXDOC",), texts=("QXSRTEXT", "QXSRMEANING", "QXSRNESTED")
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)


def test_case10_original_encrypted_and_signature_attributes_and_padding_go() -> None:
    ds = patient_ct()
    ds.OriginalAttributesSequence = [
        item(
            ModifiedAttributesSequence=[item(PatientName="QXOLDNAME^QXOLDGIVEN", PatientID="MRNOLD99887")],
            AttributeModificationDateTime="20250101120000",
            ModifyingSystem="QXMODSYSTEM",
            SourceOfPreviousValues="QXPREVSOURCE",
            ReasonForTheAttributeModification="COERCE",
        )
    ]
    ds.EncryptedAttributesSequence = [
        item(EncryptedContentTransferSyntaxUID=ExplicitVRLittleEndian, EncryptedContent=b"QXENCRYPTEDBLOB.")
    ]
    ds.DigitalSignaturesSequence = [
        item(
            MACIDNumber=1,
            DigitalSignatureUID=f"{ROOT}.77",
            DigitalSignatureDateTime="20250615120000",
            CertificateType="X509_1993_SIG",
            CertificateOfSigner=b"QXCERTSIGNER",
            Signature=b"QXSIGNATUREVAL",
        )
    ]
    ds.DataSetTrailingPadding = f"QXPADDINGTEXT {MRN} ".encode()
    canaries = identity_canaries(
        ds,
        names=("QXOLDNAME^QXOLDGIVEN",),
        mrns=("MRNOLD99887",),
        texts=(
            *("QXMODSYSTEM", "QXPREVSOURCE", "QXENCRYPTEDBLOB", "QXCERTSIGNER"),
            *("QXSIGNATUREVAL", "QXPADDINGTEXT"),
        ),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    for keyword in (
        "OriginalAttributesSequence",
        "EncryptedAttributesSequence",
        "DigitalSignaturesSequence",
        "DataSetTrailingPadding",
    ):
        assert keyword not in result.dataset, keyword


def test_case11_retired_attributes_with_phi_go() -> None:
    ds = patient_ct()
    ds.InsurancePlanIdentification = "QXINSURANCEPLAN"
    ds.InterpretationAuthor = "QXINTERPRETER^QXDOC"
    ds.InterpretationText = f"Findings for QXINTERPTEXT {MRN}"
    ds.VerbalSourceTrial = "QXVERBALSOURCE^QXRELATIVE"
    canaries = identity_canaries(
        ds,
        names=("QXINTERPRETER^QXDOC", "QXVERBALSOURCE^QXRELATIVE"),
        texts=("QXINSURANCEPLAN", "QXINTERPTEXT"),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    for tag in (0x00101050, 0x4008010C, 0x4008010B, 0x0040A352):
        assert tag not in result.dataset, f"{tag:08X}"


def test_case12_tags_newer_than_the_pinned_table_or_pydicom_go() -> None:
    ds = patient_ct()
    ds.add(DataElement(0x00100012, "LO", "QXNAMETOUSE"))
    ds.add(DataElement(0x00100011, "SQ", [Dataset()]))
    ds[0x00100011].value[0].add(DataElement(0x00100012, "LO", "QXPREFERREDNAME"))
    ds.add(DataElement(0x00209999, "LO", "QXUNKNOWNEVENTAG"))
    canaries = identity_canaries(ds, texts=("QXNAMETOUSE", "QXPREFERREDNAME", "QXUNKNOWNEVENTAG"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    for tag in (0x00100011, 0x00100012, 0x00209999):
        assert tag not in result.dataset, f"{tag:08X}"


def test_case13_a_standard_name_encoded_as_un_goes() -> None:
    ds = patient_ct()
    ds.add(un_element(0x00081070, b"QXUNOPERATOR^QXTECH "))
    ds.add(un_element(0x00321032, b"QXUNREQUESTER^QXDOC "))
    ds.add(un_element(0x00081030, f"Study of QXUNSTUDY {MRN}".encode()))
    ds.add(un_element(0x00080021, STUDY_DATE.encode()))
    ds.ReferencedImageSequence = [
        item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f"{ROOT}.9.2")
    ]
    ds.ReferencedImageSequence[0].add(un_element(0x0040A123, b"QXUNNESTED^QXNAME "))
    canaries = identity_canaries(
        ds, names=("QXUNOPERATOR^QXTECH", "QXUNREQUESTER^QXDOC", "QXUNNESTED^QXNAME"), texts=("QXUNSTUDY",)
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)


def test_case14_file_meta_identity_and_the_input_file_name_do_not_reach_the_output(tmp_path: Path) -> None:
    ds = patient_ct()
    ds.file_meta.SourceApplicationEntityTitle = "QXSOURCEAE"
    ds.file_meta.SendingApplicationEntityTitle = "QXSENDINGAE"
    ds.file_meta.ReceivingApplicationEntityTitle = "QXRECEIVINGAE"
    ds.file_meta.ImplementationVersionName = "QXIMPLVERSION"
    ds.file_meta.PrivateInformationCreatorUID = UID(f"{ROOT}.99")
    ds.file_meta.PrivateInformation = b"QXPRIVATEINFO!"
    ds.preamble = b"QXPREAMBLE".ljust(128, b"\0")
    path = tmp_path / f"{NAME}_{MRN}.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    read = dcmread(path)
    canaries = identity_canaries(
        read,
        texts=("QXSOURCEAE", "QXSENDINGAE", "QXRECEIVINGAE", "QXIMPLVERSION", "QXPRIVATEINFO", "QXPREAMBLE"),
    )
    assert_planted(read, canaries)

    result = deidentify(read)

    assert_clean(result, canaries)
    out = result.dataset
    meta = out.file_meta
    assert 0x00020100 not in meta
    assert 0x00020102 not in meta
    for keyword in (
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
    ):
        assert meta.get(keyword, POLICY.node_ae_title) == POLICY.node_ae_title, keyword
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    carried_name = str(getattr(out, "filename", "") or "")
    assert not scan_text(carried_name, canaries.needles(), where="filename")


FREE_TEXT = f"Follow-up of QXGIVEN QXFAMILY ({MRN}) seen 2025-06-15, born 04/17/1961"


def test_case15_free_text_with_a_name_an_mrn_and_dates_goes() -> None:
    ds = patient_ct()
    keywords = (
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ImageComments",
        "PatientComments",
        "AdditionalPatientHistory",
        "RequestedProcedureDescription",
        "ReasonForStudy",
    )
    for keyword in keywords:
        setattr(ds, keyword, FREE_TEXT[:64] if keyword != "ImageComments" else FREE_TEXT)
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    for keyword in keywords:
        assert empty_or_absent(result.dataset, keyword), keyword


def test_case15_allowlisted_text_and_code_strings_holding_the_identity_still_go() -> None:
    """The allowlist keeps equipment terms; a value carrying the patient's identity is not one (DEID.md 6)."""
    ds = patient_ct()
    ds.Manufacturer = f"Scanner of {NAME}"
    ds.ManufacturerModelName = MRN
    ds.SoftwareVersions = f"v1 {BIRTH_DATE}"
    ds.BodyPartExamined = "QXFAMILY"
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)


@pytest.mark.parametrize(
    "value",
    [f"build {STUDY_DATE}", "build 2025-06-15", f"{ROOT}.1"],
    ids=["study-date", "study-date-iso", "study-instance-uid"],
)
def test_case15_allowlisted_text_holding_an_original_date_or_uid_still_goes(value: str) -> None:
    """A shifted date or a remapped UID left in clear beside its pseudonym undoes the shift or the remap."""
    ds = patient_ct()
    ds.SoftwareVersions = value
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)


def test_case16_rt_seg_and_presentation_state_labels_and_names_go() -> None:
    ds = patient_ct()
    ds.StructureSetROISequence = [
        item(
            ROINumber=1,
            ReferencedFrameOfReferenceUID=ds.FrameOfReferenceUID,
            ROIName="QXSMITH tumour",
            ROIGenerationAlgorithm="MANUAL",
        )
    ]
    ds.RTPlanLabel = "QXPLANLABEL"
    ds.ReviewerName = "QXREVIEWER^QXANNA"
    ds.SegmentSequence = [
        item(SegmentNumber=1, SegmentLabel="QXSEGLABEL liver", SegmentAlgorithmType="MANUAL")
    ]
    ds.TextObjectSequence = [item(UnformattedTextValue="QXUNFORMATTED note for QXFAMILY")]
    ds.ContentCreatorName = "QXCREATOR^QXBOB"
    ds.ContentLabel = "QXCONTENTLABEL"
    ds.ContentDescription = "QXCONTENTDESC"
    canaries = identity_canaries(
        ds,
        names=("QXREVIEWER^QXANNA", "QXCREATOR^QXBOB"),
        texts=("QXSMITH", "QXPLANLABEL", "QXSEGLABEL", "QXUNFORMATTED", "QXCONTENTLABEL", "QXCONTENTDESC"),
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    if "StructureSetROISequence" in out:
        roi = out.StructureSetROISequence[0]
        assert roi.ReferencedFrameOfReferenceUID == KEYS.uid(ds.FrameOfReferenceUID)
        assert empty_or_absent(roi, "ROIName")


# --- Private tags (17-20) ---------------------------------------------------------------------------------


def odd_group_paths(ds: Dataset) -> list[str]:
    sources = [("file_meta.", ds.file_meta)] if hasattr(ds, "file_meta") else []
    return [
        path
        for prefix, dataset in [*sources, ("", ds)]
        for path, element in walk_elements(dataset, prefix)
        if element.tag.group % 2
    ]


def test_case17_private_blocks_orphans_private_sequences_and_nested_private_elements_go() -> None:
    ds = patient_ct()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "QXPRIVATETEXT")
    block.add_new(0x02, "UI", ds.StudyInstanceUID)
    block.add_new(0x03, "DA", STUDY_DATE)
    block.add_new(0x04, "PN", NAME)
    ds.add(DataElement(0x00111005, "LO", "QXORPHANVALUE"))
    ds.private_block(0x0017, "QXFAMILY PRIVATE", create=True).add_new(0x01, "LO", "QXCREATORBLOCK")
    sequence_block = ds.private_block(0x0013, "ACME SEQ", create=True)
    sequence_block.add_new(0x10, "SQ", [item(PatientName=NAME, PatientID=MRN, StudyDate=STUDY_DATE)])
    region = coded(codes.SCT.Liver)
    region.private_block(0x0015, "ACME ITEM", create=True).add_new(0x01, "LO", "QXPRIVATEINITEM")
    ds.AnatomicRegionSequence = [region]
    canaries = identity_canaries(
        ds, texts=("QXPRIVATETEXT", "QXORPHANVALUE", "QXPRIVATEINITEM", "QXCREATORBLOCK")
    )
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    assert odd_group_paths(result.dataset) == []
    assert {"ACME 1.0", "ACME SEQ"} <= set(result.report.private_creators_removed)
    assert result.dataset.AnatomicRegionSequence[0].CodeValue == codes.SCT.Liver.value


def test_case18_a_creator_in_an_unexpected_block_is_resolved_by_creator_and_removed() -> None:
    """No safe list exists yet (Retain Safe Private is not claimed): every block goes, wherever it landed."""
    ds = patient_ct()
    ds.add(DataElement(0x00090010, "LO", "OTHER VENDOR"))
    ds.add(DataElement(0x00090011, "LO", "ACME 1.0"))
    ds.add(DataElement(0x00091001, "LO", "QXBLOCKTEN"))
    ds.add(DataElement(0x00091101, "LO", f"QXBLOCKELEVEN {NAME}"))
    canaries = identity_canaries(ds, texts=("QXBLOCKTEN", "QXBLOCKELEVEN"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    assert odd_group_paths(result.dataset) == []


def test_case19_a_spoofed_safe_creator_keeps_nothing() -> None:
    ds = patient_ct()
    ds.add(DataElement(0x00290010, "LO", "SIEMENS CSA HEADER"))
    ds.add(DataElement(0x00291010, "OB", f"SV10\x04\x03\x02\x01QXSPOOFEDCSA {MRN} ".encode()))
    ds.add(DataElement(0x00190010, "LO", "SIEMENS MR HEADER"))
    ds.add(un_element(0x0019100C, b"QXSPOOFEDBVALUE "))
    canaries = identity_canaries(ds, texts=("QXSPOOFEDCSA", "QXSPOOFEDBVALUE"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    assert odd_group_paths(result.dataset) == []
    assert Option.RETAIN_SAFE_PRIVATE not in result.report.options_applied
    codes = {entry.CodeValue for entry in result.dataset.DeidentificationMethodCodeSequence}
    assert OPTION_CODES[Option.RETAIN_SAFE_PRIVATE] not in codes


def test_case20_implicit_vr_private_elements_read_as_un_go(tmp_path: Path) -> None:
    ds = patient_ct()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "PN", "QXIMPLICIT^QXNAME")
    block.add_new(0x02, "DA", STUDY_DATE)
    block.add_new(0x03, "LO", f"QXIMPLICITTEXT {MRN}")
    path = tmp_path / "implicit.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    read = dcmread(path)
    canaries = identity_canaries(read, names=("QXIMPLICIT^QXNAME",), texts=("QXIMPLICITTEXT",))
    assert_planted(read, canaries)
    assert copy.deepcopy(read)[0x00091001].VR == "UN"

    result = deidentify(read)

    assert_clean(result, canaries)
    assert odd_group_paths(result.dataset) == []


# --- UIDs, references, consistency (21-29) ----------------------------------------------------------------


def test_case21_uids_embedding_the_mrn_and_study_date_leave_no_substring() -> None:
    digits = "83920571"
    ds = patient_ct()
    originals = {
        "StudyInstanceUID": f"{ROOT}.{digits}.{STUDY_DATE}.1",
        "SeriesInstanceUID": f"{ROOT}.{digits}.{STUDY_DATE}.2",
        "SOPInstanceUID": f"{ROOT}.{digits}.{STUDY_DATE}.3",
        "FrameOfReferenceUID": f"{ROOT}.{digits}.{STUDY_DATE}.4",
    }
    for keyword, value in originals.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(originals["SOPInstanceUID"])
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    for keyword, value in originals.items():
        assert out[keyword].value == KEYS.uid(value), keyword
    carrying = [(path, uid) for path, uid in all_uids(out) if digits in uid or STUDY_DATE in uid]
    assert not carrying, carrying


def referencing_instance(siblings: list[Dataset]) -> Dataset:
    """A derived instance whose references point at three siblings in every place DEID.md 6 case 22 names."""
    first, second, third = siblings
    ds = patient_ct(instance=90)
    ds.SeriesInstanceUID = f"{ROOT}.1.2"

    def ref(target: Dataset) -> Dataset:
        return item(ReferencedSOPClassUID=target.SOPClassUID, ReferencedSOPInstanceUID=target.SOPInstanceUID)

    ds.ReferencedImageSequence = [ref(first), ref(second)]
    ds.SourceImageSequence = [ref(third)]
    ds.ReferencedSeriesSequence = [
        item(SeriesInstanceUID=first.SeriesInstanceUID, ReferencedInstanceSequence=[ref(first)])
    ]
    ds.CurrentRequestedProcedureEvidenceSequence = [
        item(
            StudyInstanceUID=first.StudyInstanceUID,
            ReferencedSeriesSequence=[
                item(SeriesInstanceUID=second.SeriesInstanceUID, ReferencedSOPSequence=[ref(second)])
            ],
        )
    ]
    ds.ReferencedFrameOfReferenceSequence = [
        item(
            FrameOfReferenceUID=first.FrameOfReferenceUID,
            RTReferencedStudySequence=[
                item(
                    ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                    ReferencedSOPInstanceUID=first.StudyInstanceUID,
                    RTReferencedSeriesSequence=[
                        item(SeriesInstanceUID=first.SeriesInstanceUID, ContourImageSequence=[ref(first)])
                    ],
                )
            ],
        )
    ]
    ds.ROIContourSequence = [
        item(
            ReferencedROINumber=1,
            ContourSequence=[
                item(
                    ContourImageSequence=[ref(third)],
                    ContourGeometricType="POINT",
                    NumberOfContourPoints=1,
                    ContourData=[0.0, 0.0, 0.0],
                )
            ],
        )
    ]
    ds.ContentSequence = [
        item(
            RelationshipType="CONTAINS",
            ValueType="UIDREF",
            ConceptNameCodeSequence=[code_item("121232", "DCM", "Source series for segmentation")],
            UID=second.SOPInstanceUID,
        )
    ]
    ds.IrradiationEventUID = [f"{ROOT}.20.1", f"{ROOT}.20.2"]
    return ds


def test_case22_every_reference_points_at_the_new_uid_of_the_right_sibling() -> None:
    siblings = [patient_ct(instance=number) for number in (1, 2, 3)]
    referencing = referencing_instance(siblings)
    canaries = identity_canaries(referencing)
    assert_planted(referencing, canaries)

    new = [deidentify(sibling).dataset for sibling in siblings]
    result = deidentify(referencing)

    assert_clean(result, canaries)
    out = result.dataset
    first, second, third = new
    assert [entry.ReferencedSOPInstanceUID for entry in out.ReferencedImageSequence] == [
        first.SOPInstanceUID,
        second.SOPInstanceUID,
    ]
    assert all(entry.ReferencedSOPClassUID == CTImageStorage for entry in out.ReferencedImageSequence)
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == third.SOPInstanceUID
    series = out.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    evidence = out.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == first.StudyInstanceUID == out.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == second.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        second.SOPInstanceUID
    )
    frame = out.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    rt_study = frame.RTReferencedStudySequence[0]
    assert rt_study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    rt_series = rt_study.RTReferencedSeriesSequence[0]
    assert rt_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert rt_series.ContourImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    contour = out.ROIContourSequence[0].ContourSequence[0]
    assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == third.SOPInstanceUID
    if "ContentSequence" in out:  # Basic makes it D; whatever stays must point at the new sibling UID
        uids = [entry.UID for entry in out.ContentSequence if "UID" in entry]
        assert uids in ([], [second.SOPInstanceUID])
    assert list(out.IrradiationEventUID) == [KEYS.uid(f"{ROOT}.20.1"), KEYS.uid(f"{ROOT}.20.2")]
    for instance in [*new, out]:
        assert instance.file_meta.MediaStorageSOPInstanceUID == instance.SOPInstanceUID


DEIDENTIFY_FILES = """
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from dicom_node.dicom.deid import DeidPolicy, deidentify_dataset
from dicom_node.dicom.deid_keys import DeidKeys, load_or_create_secret

keys = DeidKeys.from_secret(load_or_create_secret(Path(sys.argv[1])))
out_dir = Path(sys.argv[2])
for name in sys.argv[3:]:
    result = deidentify_dataset(dcmread(name), DeidPolicy(), keys)
    dcmwrite(out_dir / Path(name).name, result.dataset)
"""


def rich_study() -> list[Dataset]:
    """Three instances with private blocks, nested sequences, references and dates: a lot to keep stable."""
    instances = []
    for number in (1, 2, 3):
        ds = patient_ct(instance=number)
        ds.OperatorsName = "QXOPERATOR^QXTECH"
        ds.AcquisitionDateTime = "20250615083015.123456+0200"
        ds.ContentDate = STUDY_DATE
        ds.ContentTime = "083100"
        ds.IrradiationEventUID = [f"{ROOT}.30.{number}", f"{ROOT}.31.{number}"]
        ds.ReferencedImageSequence = [
            item(
                ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f"{ROOT}.1.1.{number % 3 + 1}"
            )
        ]
        ds.AnatomicRegionSequence = [coded(codes.SCT.Liver)]
        ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "QXPRIVATETEXT")
        instances.append(ds)
    return instances


def run_deidentify_process(secret: Path, out_dir: Path, inputs: list[Path], hash_seed: str) -> None:
    out_dir.mkdir()
    completed = subprocess.run(
        [sys.executable, "-c", DEIDENTIFY_FILES, str(secret), str(out_dir), *map(str, inputs)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_case23_two_processes_in_different_orders_give_byte_identical_outputs(tmp_path: Path) -> None:
    """Two worker processes (different hash seeds, reversed order) and this one, all after a 'restart'.

    The secret is created once and re-read from its file by each process, as after a restart.
    """
    secret_path = tmp_path / "deid.secret"
    secret = load_or_create_secret(secret_path)
    inputs = []
    for ds in rich_study():
        path = tmp_path / "in" / f"{ds.InstanceNumber}.dcm"
        path.parent.mkdir(exist_ok=True)
        dcmwrite(path, ds, enforce_file_format=True)
        inputs.append(path)

    run_deidentify_process(secret_path, tmp_path / "a", inputs, hash_seed="1")
    run_deidentify_process(secret_path, tmp_path / "b", list(reversed(inputs)), hash_seed="2")
    keys = DeidKeys.from_secret(secret)

    for path in inputs:
        read = dcmread(path)
        canaries = identity_canaries(read, names=("QXOPERATOR^QXTECH",), texts=("QXPRIVATETEXT",))
        assert_planted(read, canaries)
        here = deidentify(read, POLICY, keys)
        assert_clean(here, canaries)
        encoded = encode_dataset(here.dataset)
        assert (tmp_path / "a" / path.name).read_bytes() == encoded, path.name
        assert (tmp_path / "b" / path.name).read_bytes() == encoded, path.name


def test_case24_one_patient_keeps_its_pseudonym_offset_and_intervals_two_patients_differ() -> None:
    first = patient_ct(study="1", study_date="20250101")
    later = patient_ct(study="2", study_date="20250122")
    other = patient_ct(study="3", patient_id="MRN44455566", study_date="20250101")
    for ds in (first, later, other):
        canaries = identity_canaries(ds)
        assert_planted(ds, canaries)
    outputs = []
    for ds in (first, later, other):
        result = deidentify(ds)
        assert_clean(result, identity_canaries(ds))
        outputs.append(result.dataset)
    out_first, out_later, out_other = outputs

    assert out_first.PatientID == out_later.PatientID != out_other.PatientID
    assert offset_days(out_first.StudyDate, out_later.StudyDate) == 21
    assert (
        offset_days("20250101", out_first.StudyDate) == offset_days("20250122", out_later.StudyDate) == SHIFT
    )
    other_shift = offset_days("20250101", out_other.StudyDate)
    assert other_shift == KEYS.date_shift_days(ISSUER, "MRN44455566")
    assert other_shift != SHIFT, "two patients share an offset: a global shift would look like this"


@pytest.mark.parametrize(
    ("issuer", "policy", "expected_issuer"),
    [
        ("QXISSUERA", POLICY, "QXISSUERA"),
        ("QXISSUERB", POLICY, "QXISSUERB"),
        (None, POLICY, POLICY.default_issuer),
        ("", POLICY, POLICY.default_issuer),
        (None, DeidPolicy(default_issuer="SITE_X"), "SITE_X"),
    ],
    ids=["issuer-a", "issuer-b", "absent", "empty", "configured-default"],
)
def test_case25_the_pseudonym_is_keyed_by_issuer_and_a_missing_issuer_takes_the_default(
    issuer: str | None, policy: DeidPolicy, expected_issuer: str
) -> None:
    ds = patient_ct()
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    extra = (issuer,) if issuer else ()
    canaries = identity_canaries(ds, texts=extra)
    assert_planted(ds, canaries)

    result = deidentify(ds, policy)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.PatientID == KEYS.patient_pseudonym(expected_issuer, MRN)
    assert out.IssuerOfPatientID == policy.default_issuer
    assert KEYS.patient_pseudonym("QXISSUERA", MRN) != KEYS.patient_pseudonym("QXISSUERB", MRN)
    assert offset_days(STUDY_DATE, out.StudyDate) == KEYS.date_shift_days(expected_issuer, MRN)


def test_case26_registered_uids_stay_and_a_registered_looking_unknown_uid_is_remapped() -> None:
    unknown = "1.2.840.10008.5.1.4.1.1.2.99"
    assert unknown not in UID_dictionary
    ds = patient_ct()
    ds.RelatedGeneralSOPClassUID = [CTImageStorage, unknown]
    ds.CodingSchemeIdentificationSequence = [
        item(CodingSchemeDesignator="DCM", CodingSchemeUID="1.2.840.10008.2.16.4"),
        item(CodingSchemeDesignator="99LOCAL", CodingSchemeUID=f"{ROOT}.5"),
    ]
    ds.ReferencedImageSequence = [
        item(ReferencedSOPClassUID=CTImageStorage, ReferencedSOPInstanceUID=f"{ROOT}.9.3")
    ]
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.SOPClassUID == CTImageStorage
    assert out.file_meta.MediaStorageSOPClassUID == CTImageStorage
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert list(out.RelatedGeneralSOPClassUID) == [CTImageStorage, KEYS.uid(unknown)]
    schemes = out.CodingSchemeIdentificationSequence
    assert schemes[0].CodingSchemeUID == "1.2.840.10008.2.16.4"
    assert schemes[1].CodingSchemeUID == KEYS.uid(f"{ROOT}.5")
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage


UID_FORMAT = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def documented_uid(secret: bytes, original: str) -> str:
    """DEID.md 4.3 written out independently of deid_keys, so a drift in the recipe shows."""
    subkey = hmac.new(secret, b"dicom-node/uid/v1", hashlib.sha256).digest()
    octets = bytearray(hmac.new(subkey, original.rstrip("\0 ").encode(), hashlib.sha256).digest()[:16])
    octets[6] = (octets[6] & 0x0F) | 0x80
    octets[8] = (octets[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(octets, 'big')}"


def test_case27_every_remapped_uid_is_a_2_25_uuid_integer_without_leading_zeros() -> None:
    ds = referencing_instance([patient_ct(instance=number) for number in (1, 2, 3)])
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    originals = {uid for _, uid in all_uids(ds) if uid not in UID_dictionary}

    result = deidentify(ds)

    assert_clean(result, canaries)
    remapped = [(path, uid) for path, uid in all_uids(result.dataset) if uid not in UID_dictionary]
    assert remapped
    implementation = result.dataset.file_meta.get("ImplementationClassUID")
    for path, uid in remapped:
        assert len(uid) <= 64, path
        match = UID_FORMAT.fullmatch(uid)
        assert match is not None, (path, uid)
        if uid == implementation:
            continue  # the node's own implementation UID, not a pseudonym
        value = int(match.group(1))
        assert value < 2**128, path
        assert (value >> 76) & 0xF == 8, f"{path}: version nibble"
        assert (value >> 62) & 0x3 == 0b10, f"{path}: variant bits"
    expected = {documented_uid(SECRET, uid) for uid in originals}
    assert {uid for _, uid in remapped} - {implementation} <= expected
    assert (
        KEYS.uid(f"{ROOT}.1\0")
        == KEYS.uid(f"{ROOT}.1 ")
        == KEYS.uid(f"{ROOT}.1")
        == documented_uid(SECRET, f"{ROOT}.1")
    )


def pseudonymised_values(ds: Dataset) -> dict[str, str]:
    values = {
        "PatientID": ds.PatientID,
        "AccessionNumber": ds.AccessionNumber,
        "StudyID": ds.StudyID,
        "StudyDate": ds.StudyDate,
    }
    values.update({path: uid for path, uid in all_uids(ds) if uid not in UID_dictionary})
    return values


def expected_pseudo(keys: DeidKeys, kind: str, original: str) -> str:
    recipes = {
        "uid": lambda: keys.uid(original),
        "patient_id": lambda: keys.patient_pseudonym(ISSUER, original),
        "accession": lambda: keys.accession(ISSUER, original),
        "study_id": lambda: keys.study_id(ISSUER, original),
    }
    return recipes[kind]()


def test_case28_a_rotated_key_changes_every_pseudonym_and_old_rows_still_re_identify() -> None:
    """No pseudonym map table exists yet: the Pseudonym rows the engine returns stand in for its rows."""
    other_keys = DeidKeys.from_secret(OTHER_SECRET)
    assert KEYS.key_id == hashlib.sha256(SECRET).hexdigest()[:8]
    assert other_keys.key_id == hashlib.sha256(OTHER_SECRET).hexdigest()[:8] != KEYS.key_id
    ds = referencing_instance([patient_ct(instance=number) for number in (1, 2, 3)])
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    old = deidentify(ds, POLICY, KEYS)
    new = deidentify(ds, POLICY, other_keys)

    assert_clean(old, canaries)
    assert_clean(new, canaries)
    old_values = pseudonymised_values(old.dataset)
    new_values = pseudonymised_values(new.dataset)
    assert old_values.keys() == new_values.keys()
    same = {
        key for key in old_values if key != "file_meta.(0002,0012)" and old_values[key] == new_values[key]
    }
    assert not same, same
    assert method_text(old.dataset).endswith(f"key:{KEYS.key_id}")
    assert method_text(new.dataset).endswith(f"key:{other_keys.key_id}")
    for row in old.pseudonyms:
        assert expected_pseudo(KEYS, row.kind, row.original) == row.pseudo, row
    old_map = {row.pseudo: row.original for row in old.pseudonyms}
    assert old_map[old.dataset.PatientID] == MRN
    assert old_map[old.dataset.StudyInstanceUID] == ds.StudyInstanceUID


def test_case29_pseudonym_rows_map_every_pseudo_back_to_the_original() -> None:
    """The SR for the PACS is not built yet; what it will need is that every pseudo value has its row."""
    ds = referencing_instance([patient_ct(instance=number) for number in (1, 2, 3)])
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    rows = result.pseudonyms
    assert len(rows) == len(set(rows)), "rows are de-duplicated"
    by_pseudo: dict[str, set[str]] = {}
    for row in rows:
        by_pseudo.setdefault(row.pseudo, set()).add(row.original)
    assert all(len(originals) == 1 for originals in by_pseudo.values()), "one pseudo, two originals"
    back = {pseudo: next(iter(originals)) for pseudo, originals in by_pseudo.items()}
    kinds = {row.pseudo: row.kind for row in rows}
    assert (back[out.PatientID], kinds[out.PatientID]) == (MRN, "patient_id")
    assert (back[out.AccessionNumber], kinds[out.AccessionNumber]) == (ACCESSION, "accession")
    assert (back[out.StudyID], kinds[out.StudyID]) == (STUDY_ID, "study_id")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert (back[out[keyword].value], kinds[out[keyword].value]) == (ds[keyword].value, "uid"), keyword
    references = [entry.ReferencedSOPInstanceUID for entry in out.ReferencedImageSequence]
    assert [back[uid] for uid in references] == [
        entry.ReferencedSOPInstanceUID for entry in ds.ReferencedImageSequence
    ]
    implementation = out.file_meta.get("ImplementationClassUID")
    unmapped = [
        (path, uid)
        for path, uid in all_uids(out)
        if uid not in UID_dictionary and uid != implementation and uid not in back
    ]
    assert not unmapped, unmapped


# --- Dates (30-31) ----------------------------------------------------------------------------------------


def test_case30_dates_at_any_depth_shift_times_stay_and_invalid_dates_never_pass() -> None:
    ds = patient_ct()
    ds.StudyTime = "083015.123"
    ds.AcquisitionDateTime = "20250615083015.123456+0200"
    ds.RadiopharmaceuticalInformationSequence = [
        item(RadiopharmaceuticalStartDateTime="20250615081500.5-0500", RadiopharmaceuticalStartTime="081500")
    ]
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x03, "DA", STUDY_DATE)
    ds.add(unchecked(0x00189151, "DT", "202506"))  # FrameReferenceDateTime, partial
    ds.add(unchecked(0x00189074, "DT", "2025"))  # FrameAcquisitionDateTime, partial
    ds.add(unchecked(0x00080012, "DA", "20250601-20250615"))  # InstanceCreationDate, a range
    ds.add(unchecked(0x00080023, "DA", "00000000"))  # ContentDate
    ds.add(unchecked(0x00080021, "DA", "2019.03.12"))  # SeriesDate
    ds.add(unchecked(0x00080022, "DA", ""))  # AcquisitionDate
    ds.TimezoneOffsetFromUTC = "+0200"
    ds.ImageComments = "Seen 2025-06-15 and again 06/15/2025"
    canaries = identity_canaries(ds, dates=("20250601", "20190312"))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    shifted = shift(STUDY_DATE, SHIFT)
    assert out.StudyDate == shifted
    assert out.StudyTime == "083015.123"
    assert out.AcquisitionDateTime == f"{shifted}083015.123456+0200"
    nested = out.RadiopharmaceuticalInformationSequence[0]
    assert nested.RadiopharmaceuticalStartDateTime == f"{shifted}081500.5-0500"
    assert nested.RadiopharmaceuticalStartTime == "081500"
    for tag, original in ((0x00189151, "202506"), (0x00189074, "2025"), (0x00080023, "00000000")):
        assert tag not in out or out[tag].value in ("", None) or out[tag].value != original, f"{tag:08X}"
    assert "TimezoneOffsetFromUTC" not in out
    assert empty_or_absent(out, "ImageComments")


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ImagesInAcquisition", 20250615),  # IS
        ("SliceLocation", "20250615"),  # DS
        ("ImageType", ["ORIGINAL", "PRIMARY", "20250615"]),  # CS
    ],
    ids=["is", "ds", "cs"],
)
def test_case30_an_original_date_hidden_in_a_number_or_code_string_goes(keyword: str, value: object) -> None:
    """The original study date next to its shifted copy gives away the patient's offset, so every date."""
    ds = patient_ct()
    setattr(ds, keyword, value)
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)


def test_case31_no_shifted_date_equals_its_original_for_any_patient_and_times_stay() -> None:
    for keys in (KEYS, DeidKeys.from_secret(OTHER_SECRET)):
        shifts = [keys.date_shift_days(ISSUER, f"MRN{number:08d}") for number in range(2000)]
        assert all(-3650 <= days <= -365 for days in shifts)
        assert len(set(shifts)) > 1000, "offsets must spread over patients"
        assert keys.date_shift_days(ISSUER, MRN, minimum=1, maximum=2) in (-1, -2)
    for number in range(20):
        patient_id = f"MRN{number:08d}"
        ds = patient_ct(patient_id=patient_id)
        result = deidentify(ds)
        assert_clean(result, identity_canaries(ds))
        out = result.dataset
        days = offset_days(STUDY_DATE, out.StudyDate)
        assert days == KEYS.date_shift_days(ISSUER, patient_id)
        assert days <= -365
        assert out.StudyTime == ds.StudyTime


# --- Pixels (32-38): the engine of this slice rejects at-risk instances, it does not clean them yet -------


def make_us(
    *, rgb: bool = False, burned_in: str | None = "YES", regions: bool = False, frames: int = 1
) -> Dataset:
    """An ultrasound instance with a 'banner' of canary bytes in its pixel data."""
    ds = patient_ct()
    for keyword in ("KVP", "RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    sop_class = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = "US"
    samples = 3 if rgb else 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = Tag(0x00181063)
    frame = bytearray(ds.Rows * ds.Columns * samples)
    banner = f"{NAME} {MRN}".encode()
    frame[: len(banner)] = banner
    ds.PixelData = bytes(frame) * frames
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    if regions:
        ds.SequenceOfUltrasoundRegions = [
            item(
                RegionSpatialFormat=1,
                RegionDataType=1,
                RegionFlags=0,
                RegionLocationMinX0=0,
                RegionLocationMinY0=8,
                RegionLocationMaxX1=ds.Columns - 1,
                RegionLocationMaxY1=ds.Rows - 1,
                PhysicalUnitsXDirection=3,
                PhysicalUnitsYDirection=3,
                PhysicalDeltaX=0.01,
                PhysicalDeltaY=0.01,
            )
        ]
    return ds


@pytest.mark.parametrize(
    ("rgb", "burned_in"), [(False, "YES"), (True, None)], ids=["greyscale-flag-yes", "rgb-flag-absent"]
)
def test_case32_us_with_regions_and_a_banner_is_rejected_until_cleaning_exists(
    rgb: bool, burned_in: str | None
) -> None:
    """Cleaning outside the US regions is not built yet: the at-risk instance is rejected, never passed."""
    ds = make_us(rgb=rgb, burned_in=burned_in, regions=True)
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


def test_case33_us_without_regions_and_without_ocr_is_rejected() -> None:
    ds = make_us(regions=False)
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


def dose_report() -> Dataset:
    ds = patient_ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.SeriesDescription = "Dose Report"
    ds.ConversionType = "WSD"
    return ds


def encapsulated_document(sop_class: str, mime_type: str) -> Dataset:
    ds = patient_ct()
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelData",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = mime_type
    ds.DocumentTitle = "QXDOCUMENTTITLE"
    ds.EncapsulatedDocument = f"%PDF-1.4 Patient: {NAME} {MRN} %%EOF ".encode()
    return ds


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (dose_report, BURNED_IN),
        (lambda: encapsulated_document(EncapsulatedPDFStorage, "application/pdf"), ENCAPSULATED),
        (lambda: encapsulated_document(EncapsulatedCDAStorage, "text/XML"), ENCAPSULATED),
    ],
    ids=["sc-dose-report", "encapsulated-pdf", "encapsulated-cda"],
)
def test_case34_dose_reports_and_encapsulated_documents_are_rejected(
    build: Callable[[], Dataset], code: str
) -> None:
    ds = build()
    canaries = identity_canaries(ds, texts=("QXDOCUMENTTITLE",) if "DocumentTitle" in ds else ())
    assert_planted(ds, canaries)
    assert_rejected(ds, code, canaries)


def test_case35_an_overlay_in_unused_high_bits_is_rejected_until_cleaning_exists() -> None:
    """Clearing bits above HighBit is not built yet: an overlay declared in the pixel bits must reject."""
    ds = patient_ct()
    pixels = bytearray(ds.PixelData)
    for index in range(0, 256, 2):  # text in bit 13 of the first 128 pixels
        pixels[index + 1] |= 0x20
    ds.PixelData = bytes(pixels)
    for element, vr, value in (
        (0x0010, "US", ds.Rows),
        (0x0011, "US", ds.Columns),
        (0x0040, "CS", "G"),
        (0x0050, "SS", [1, 1]),
        (0x0100, "US", 16),
        (0x0102, "US", 13),
    ):
        ds.add(DataElement(0x60000000 | element, vr, value))
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


def test_case35_an_icon_image_with_burned_text_is_removed() -> None:
    ds = patient_ct()
    ds.IconImageSequence = [
        item(
            Rows=8,
            Columns=8,
            SamplesPerPixel=1,
            PhotometricInterpretation="MONOCHROME2",
            BitsAllocated=8,
            BitsStored=8,
            HighBit=7,
            PixelRepresentation=0,
            PixelData=b"QXICONTEXT".ljust(64, b"\0"),
        )
    ]
    canaries = identity_canaries(ds, texts=("QXICONTEXT",))
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    assert "IconImageSequence" not in result.dataset
    assert result.dataset.PixelData == ds.PixelData


def mr_instance() -> Dataset:
    ds = patient_ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.Modality = "MR"
    for keyword in ("KVP", "RescaleIntercept", "RescaleSlope"):
        delattr(ds, keyword)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    return ds


def flagged(value: str) -> Dataset:
    ds = patient_ct()
    ds.BurnedInAnnotation = value
    return ds


@pytest.mark.parametrize(
    "build", [patient_ct, lambda: flagged("NO"), mr_instance], ids=["ct-flag-absent", "ct-flag-no", "mr"]
)
def test_case36_ct_and_mr_not_at_risk_keep_pixel_data_byte_for_byte(build: Callable[[], Dataset]) -> None:
    ds = build()
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    assert out.PixelData == ds.PixelData
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert result.report.pixel_decision == "not_at_risk"
    assert out.get("BurnedInAnnotation", "NO") == ds.get("BurnedInAnnotation", "NO")


def test_case37_multi_frame_us_cine_is_rejected_until_cleaning_exists() -> None:
    """Masking every frame is not built yet: a multi-frame US cine must be rejected, never passed."""
    ds = make_us(frames=6, regions=True)
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


def compressed_us(transfer_syntax: str) -> Dataset:
    ds = make_us()
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
        return ds
    # No JPEG encoder is installed: a marker-framed stand-in is enough, the decision is made on the header.
    frame = b"\xff\xd8" + f"{NAME} {MRN}".encode() + b"\xff\xd9"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


@pytest.mark.parametrize("transfer_syntax", [JPEGBaseline8Bit, JPEGLSLossless, RLELossless], ids=str)
def test_case38_compressed_at_risk_images_are_rejected_until_cleaning_exists(transfer_syntax: str) -> None:
    """Decode, clean and re-encode is not built yet: compressed at-risk instances must be rejected."""
    ds = compressed_us(transfer_syntax)
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


def secondary_ct() -> Dataset:
    ds = patient_ct()
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    return ds


def described(description: str) -> Dataset:
    ds = patient_ct()
    ds.SeriesDescription = description
    return ds


def with_class(sop_class: str, modality: str) -> Dataset:
    ds = patient_ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = modality
    return ds


def modality(value: str) -> Dataset:
    ds = patient_ct()
    ds.Modality = value
    return ds


def image_type(*values: str) -> Dataset:
    ds = patient_ct()
    ds.ImageType = list(values)
    return ds


def overlay_in_6002_pixel_bits() -> Dataset:
    """The overlay test of 4.4 must look at every 60xx group, not only 6000."""
    ds = patient_ct()
    ds.add(DataElement(0x60020100, "US", 16))
    ds.add(DataElement(0x60020102, "US", 14))
    ds.add(DataElement(0x60020010, "US", ds.Rows))
    ds.add(DataElement(0x60020011, "US", ds.Columns))
    ds.add(DataElement(0x60020040, "CS", "G"))
    return ds


@pytest.mark.parametrize(
    "build",
    [
        lambda: flagged("YES"),
        secondary_ct,
        lambda: described("Screen Save"),
        lambda: described("patient protocol report"),
        lambda: with_class(SecondaryCaptureImageStorage, "CT"),
        lambda: with_class(XRayAngiographicImageStorage, "XA"),
        lambda: with_class(VLPhotographicImageStorage, "XC"),
        lambda: modality("OT"),
        lambda: modality("US"),
        lambda: modality("ES"),
        lambda: image_type("ORIGINAL", "PRIMARY", "SCREEN SAVE"),
        lambda: flagged("yes"),
        lambda: with_class(XRayRadiofluoroscopicImageStorage, "RF"),
        lambda: with_class(VideoEndoscopicImageStorage, "ES"),
        lambda: with_class(OphthalmicPhotography8BitImageStorage, "OP"),
        lambda: with_class(MultiFrameGrayscaleByteSecondaryCaptureImageStorage, "CT"),
        overlay_in_6002_pixel_bits,
    ],
    ids=[
        *("flag-yes", "secondary", "screen-save", "report", "sc-class", "xa", "vl-photo", "modality-ot"),
        *("modality-us", "modality-es", "image-type-screen-save", "flag-lower-case-yes", "rf", "video-endo"),
        *("ophthalmic-photo", "multiframe-sc", "overlay-6002-in-pixel-bits"),
    ],
)
def test_case39_pixels_at_risk_and_not_cleaned_are_rejected_never_marked_deidentified(
    build: Callable[[], Dataset],
) -> None:
    """DEID.md 4.4 step 1: each at-risk trigger alone rejects the instance (no cleaning in this slice)."""
    ds = build()
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    assert_rejected(ds, BURNED_IN, canaries)


# --- Recording, retention, robustness (39-41) -------------------------------------------------------------

METHOD = re.compile(
    r"dicom-node \S+;\s*PS3\.15 Annex E \(table 2024e\+2026c(?: rows)?, sha256:(?P<sha>[0-9a-f]{12})\);"
    r"\s*options: (?P<options>[^;]*);\s*key:(?P<key>[0-9a-f]{8})"
)


@pytest.mark.parametrize(
    "options",
    [CLAIMED_OPTIONS, frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS}), frozenset()],
    ids=["claimed", "characteristics-only", "basic-only"],
)
def test_case39_recording_lists_exactly_the_options_that_ran(options: frozenset[Option]) -> None:
    ds = patient_ct()
    ds.PatientAge = "064Y"
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    policy = DeidPolicy(options=options)

    result = deidentify(ds, policy)

    assert_clean(result, canaries)
    out = result.dataset
    applied = set(result.report.options_applied)
    assert applied == set(options), "a CT with dates and characteristics exercises every claimed option"
    assert out.PatientIdentityRemoved == "YES"
    match = METHOD.fullmatch(method_text(out))
    assert match is not None, method_text(out)
    assert match["sha"] == SOURCE_SHA256[BASE_SOURCE][:12]
    assert match["key"] == KEYS.key_id
    assert set(re.findall(r"\d{6}", match["options"])) - {"113100"} == {OPTION_CODES[o] for o in applied}
    recorded = [
        (entry.CodeValue, entry.CodingSchemeDesignator) for entry in out.DeidentificationMethodCodeSequence
    ]
    assert sorted(recorded) == sorted([("113100", "DCM")] + [(OPTION_CODES[o], "DCM") for o in applied])
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in applied:
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    else:
        assert out.get("LongitudinalTemporalInformationModified", "REMOVED") == "REMOVED"
    equipment = [
        entry
        for entry in out.ContributingEquipmentSequence
        if entry.get("Manufacturer") == "dicom-node"
        and [(code.CodeValue, code.CodingSchemeDesignator) for code in entry.PurposeOfReferenceCodeSequence]
        == [("109104", "DCM")]
    ]
    assert len(equipment) == 1
    assert equipment[0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "De-identifying Equipment"
    if "ContributionDateTime" in equipment[0] and "StudyDate" in out and out.StudyDate:
        assert str(equipment[0].ContributionDateTime).startswith(out.StudyDate)


def test_case39_our_own_output_is_rejected_as_already_deidentified_and_another_tools_is_not() -> None:
    ds = patient_ct()
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)
    first = deidentify(ds).dataset
    with pytest.raises(DeidRejected) as caught:
        deidentify_dataset(first, POLICY, KEYS)
    assert caught.value.code == "deid.already_deidentified"

    foreign = patient_ct()
    foreign.PatientIdentityRemoved = "YES"
    foreign.DeidentificationMethod = "QXOTHERTOOL 1.0"
    result = deidentify(foreign)
    assert_clean(result, identity_canaries(foreign, texts=("QXOTHERTOOL",)))


RETAINED = (
    "Modality",
    "SOPClassUID",
    "ImageType",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "KVP",
    "ConvolutionKernel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
)


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's error lines with the values taken out, so the same defect compares equal across files."""
    completed = run_tool("dciodvfy", [str(path)])
    errors = set()
    for line in (completed.stdout + completed.stderr).splitlines():
        if not line.startswith("Error"):
            continue
        line = re.sub(r"(?<!Element=)(?<!Module=)<[^>]*>", "<>", line)
        line = re.sub(r'"[^"]*"', '""', line)
        errors.add(re.sub(r"\s+", " ", line).strip())
    return errors


def test_case40_retention_keeps_what_models_need_and_adds_no_dciodvfy_error(tmp_path: Path) -> None:
    """Model-declared safe private elements do not exist yet (no safe list), so none is checked here."""
    ds = patient_ct()
    ds.BodyPartExamined = "CHEST"
    ds.ManufacturerModelName = "Model 7"
    ds.RescaleType = "HU"
    ds.ConvolutionKernel = "B30f"
    ds.PatientAge = "064Y"
    ds.PatientSex = "F"
    ds.PatientWeight = 70.5
    ds.PatientSize = 1.68
    ds.PatientPosition = "HFS"
    ds.Laterality = ""
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionNumber = 1
    canaries = identity_canaries(ds)
    assert_planted(ds, canaries)

    result = deidentify(ds)

    assert_clean(result, canaries)
    out = result.dataset
    changed = [keyword for keyword in RETAINED if out.get(keyword) != ds.get(keyword)]
    assert not changed, changed
    assert out.PixelData == ds.PixelData
    before = tmp_path / "in.dcm"
    after = tmp_path / "out.dcm"
    dcmwrite(before, ds, enforce_file_format=True)
    dcmwrite(after, out, enforce_file_format=True)
    new_errors = dciodvfy_errors(after) - dciodvfy_errors(before)
    assert not new_errors, sorted(new_errors)


# Places for the fuzzer: free text only where default-deny removes it (allowlisted and CS values stay).
STANDARD_TEXT = (
    (0x00081030, "LO"),  # StudyDescription
    (0x0008103E, "LO"),  # SeriesDescription
    (0x00204000, "LT"),  # ImageComments
    (0x0040A123, "PN"),  # PersonName
    (0x00081070, "PN"),  # OperatorsName
    (0x00321032, "PN"),  # RequestingPhysician
    (0x00080080, "LO"),  # InstitutionName
    (0x00181000, "LO"),  # DeviceSerialNumber
    (0x00380300, "LO"),  # CurrentPatientLocation
    (0x00400254, "LO"),  # PerformedProcedureStepDescription
    (0x00102000, "LO"),  # MedicalAlerts
    (0x00400280, "ST"),  # CommentsOnThePerformedProcedureStep
    (0x0040A160, "UT"),  # TextValue
    (0x00080050, "SH"),  # AccessionNumber
    (0x00200010, "SH"),  # StudyID
    (0x00100020, "LO"),  # PatientID (nested copies)
    (0x00080104, "LO"),  # CodeMeaning, in items without a coding scheme
)
SEQUENCES = (
    0x00082218,  # AnatomicRegionSequence
    0x00081140,  # ReferencedImageSequence
    0x00081115,  # ReferencedSeriesSequence
    0x00400275,  # RequestAttributesSequence
    0x00089215,  # DerivationCodeSequence
    0x00540016,  # RadiopharmaceuticalInformationSequence
    0x00209997,  # an even-group SQ unknown to pydicom
)
FUZZ_TOKENS = tuple(f"QXFUZZ{index:02d}" for index in range(12))


@st.composite
def planted_datasets(draw: st.DrawFn) -> tuple[Dataset, Canaries]:
    """patient_ct plus canaries at random standard, private, unknown and malformed places, up to four deep."""
    ds = patient_ct()
    planted: list[str] = []
    for index in range(draw(st.integers(1, 8))):
        target = ds
        for _ in range(draw(st.integers(0, 4))):
            tag = draw(st.sampled_from(SEQUENCES))
            if tag not in target:
                target.add(DataElement(tag, "SQ", [Dataset()]))
            elif target[tag].VR != "SQ":
                break
            target = target[tag].value[0]
        token = draw(st.sampled_from(FUZZ_TOKENS))
        text = draw(st.sampled_from([token, f"{token} {MRN}", f"note on {NAME} {token}", f"{token}^QXGIVEN"]))
        place = draw(st.sampled_from(["standard", "private", "orphan", "unknown", "un", "malformed"]))
        if place == "standard":
            tag, vr = draw(st.sampled_from(STANDARD_TEXT))
            text = text[:16] if vr == "SH" else text
            element = unchecked(tag, vr, text)
        elif place == "private":
            group = draw(st.sampled_from([0x0009, 0x0011, 0x0019, 0x0029, 0x0043, 0x7FD1]))
            creator = f"FUZZ VENDOR {draw(st.integers(0, 3))}"
            vr = draw(st.sampled_from(["LO", "PN", "UT", "SH", "UN", "OB"]))
            text = text[:16] if vr == "SH" else text
            value: object = text.encode() if vr in ("UN", "OB") else text
            block = target.private_block(group, creator, create=True)
            offset = draw(st.integers(0, 0xFF))
            if block.get_tag(offset) in target:
                continue
            block.add_new(offset, vr, value)
            planted.append(text)
            continue
        elif place == "orphan":
            group = draw(st.sampled_from([0x0009, 0x0021, 0x0045]))
            element = unchecked((group << 16) | 0x1000 | index, "LO", text)
        elif place == "unknown":
            element = unchecked(0x00209900 | index, "LO", text)
        elif place == "un":
            tag, _ = draw(st.sampled_from(STANDARD_TEXT))
            encoded = text.encode()
            element = un_element(tag, encoded + b" " * (len(encoded) % 2))
        else:
            raw = text.encode()
            raw += b"!" * (1 - len(raw) % 2)  # odd length: no FD can hold it
            if Tag(0x00189345) in target:
                continue
            target[Tag(0x00189345)] = RawDataElement(Tag(0x00189345), "FD", len(raw), raw, 0, False, True)
            planted.append(text)
            continue
        if element.tag in target:
            continue
        target.add(element)
        planted.append(text)
    tokens = tuple(sorted({token for token in FUZZ_TOKENS if any(token in text for text in planted)}))
    return ds, identity_canaries(ds, texts=tokens)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_datasets())
def test_case41_random_datasets_with_canaries_anywhere_give_zero_canaries_out_or_a_rejection(
    case: tuple[Dataset, Canaries],
) -> None:
    ds, canaries = case
    assert_planted(ds, canaries)
    try:
        result = deidentify(ds)
    except DeidRejected as rejected:
        assert rejected.code.startswith("deid.")
        assert not scan_text(f"{rejected!s} {rejected.args!r}", canaries.needles(), where="error")
        return
    assert_clean(result, canaries)


@pytest.mark.parametrize(
    ("tag", "vr", "raw"),
    [
        (0x00189345, "FD", b"QXBADFD"),  # CTDIvol: seven bytes are no double
        (0x00280030, "DS", b"QXBADDS\\1"),  # PixelSpacing: not a number
        (0x00081030, "LO", b"QXBADUTF\xff\xfe "),  # StudyDescription: invalid in the declared UTF-8
    ],
    ids=["fd-wrong-length", "ds-not-a-number", "lo-bad-charset"],
)
def test_case41_a_malformed_element_is_removed_or_rejected_never_passed_through(
    tag: int, vr: str, raw: bytes
) -> None:
    ds = patient_ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    token = raw[:7].decode()
    canaries = identity_canaries(ds, texts=(token,))
    assert_planted(ds, canaries)
    try:
        result = deidentify(ds)
    except DeidRejected as rejected:
        assert rejected.code.startswith("deid.")
        return
    assert_clean(result, canaries)
