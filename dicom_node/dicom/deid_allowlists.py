"""The node's own lists on top of Table E.1-1 (DEID.md 4.2 rules 4 and 6): what default-deny lets through.

Everything not named here and not kept by the table goes, so a new list entry is a reviewed decision to let a
value out; the coded-concept lookup keeps a CodeMeaning only as pydicom's dictionary spells it.
"""

from __future__ import annotations

from functools import cache
from typing import Final, cast

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from dicom_node.dicom.validation import REQUIRED_ALWAYS, REQUIRED_WITH_PIXELS

# PS3.6 Annex A as pydicom 3.0 ships it: SOP classes, transfer syntaxes and other UIDs that identify no one.
REGISTERED_UIDS: Final[frozenset[str]] = frozenset(cast("dict[str, object]", UID_dictionary))


def _tags(*keywords: str) -> frozenset[int]:
    tags = {tag_for_keyword(keyword) for keyword in keywords}
    if None in tags:
        raise ValueError("unknown keyword in an allowlist")
    return frozenset(int(tag) for tag in tags if tag is not None)


# Free-text VRs (LO, SH, LT, ST, UT, UC, UR, AE) kept when not in the table: equipment and acquisition terms.
TEXT_ALLOWLIST: Final = _tags(
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ConvolutionKernel",
    "SequenceName",
    "PulseSequenceName",
    "ReceiveCoilName",
    "TransmitCoilName",
    "FilterType",
    "ImagedNucleus",
    "Radiopharmaceutical",
    "ReconstructionMethod",
    "RescaleType",
    "DetectorManufacturerName",
    "DetectorManufacturerModelName",
)
# Type 2 free text outside the table that image IODs require to be present: emptied, never removed.
EMPTIED_TEXT: Final = _tags("PositionReferenceIndicator")
# Binary VRs kept when not in the table: image data and its lookup tables, nothing that can hold text.
BINARY_ALLOWLIST: Final = _tags(
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "AlphaPaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "LUTData",
)
# Pixel data belongs to the instance itself; inside an item it is an icon or a thumbnail and goes.
TOP_LEVEL_ONLY: Final = _tags("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Retired attributes kept anyway (none yet: CT, MR and PT need none).
RETIRED_ALLOWLIST: Final[frozenset[int]] = frozenset()
# DEID.md 4.2 rule 6: removed whatever the table or an option says; they link identities or hide originals.
ALWAYS_REMOVED: Final = _tags(
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "OriginalAttributesSequence",
    "ModifiedAttributesSequence",
    "EncryptedAttributesSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "DataSetTrailingPadding",
    "IconImageSequence",
    "ReferencedPatientPhotoSequence",
    "TimezoneOffsetFromUTC",
)
# Code strings that hold user-chosen labels rather than defined terms: Type 1 ones get a dummy, others go.
DUMMIED_CODE_STRINGS: Final = _tags("ContentLabel")
REMOVED_CODE_STRINGS: Final = _tags("VisitStatusID", "AnnotationDisplayFormatID", "DataPathID")
# Retain Patient Characteristics is claimed for these four rows only (DEID.md 1.3); the others stay Basic.
RETAINED_CHARACTERISTICS: Final = _tags("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
# Values the top-level identity step writes itself (DEID.md 4.2 rule 6), so the walk drops the originals.
FIXED_IDENTITY: Final = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientAge",
    "AccessionNumber",
    "StudyID",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)
# Type 1 attributes of the image IODs we pass on; one we cannot read rejects the instance (4.2 rule 7).
REQUIRED: Final = _tags(*REQUIRED_ALWAYS, *REQUIRED_WITH_PIXELS, "PixelData")
# Elements whose values seed the cross-match: a kept text equal to one of them is an identifier in disguise.
IDENTIFYING_SOURCES: Final = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PatientAddress",
    "MedicalRecordLocator",
    "PatientTelephoneNumbers",
)
CODE_VALUE: Final = 0x00080100
CODING_SCHEME_DESIGNATOR: Final = 0x00080102
CODE_MEANING: Final = 0x00080104
# The rest of a coded entry's text: removed, since the kept code and its dictionary meaning say it all.
CODE_TEXT: Final = frozenset(
    {CODE_VALUE, CODING_SCHEME_DESIGNATOR, 0x00080103, CODE_MEANING, 0x00080119, 0x00080120}
)
STANDARD_SCHEMES: Final = frozenset({"DCM", "SCT", "SRT", "LN", "RADLEX", "UCUM", "FMA", "NCIt", "MDC"})


@cache
def _concept_meanings() -> dict[tuple[str, str], str]:
    """(scheme, code value) → code meaning, from pydicom's copy of the standard's concepts (PS3.16)."""
    from pydicom.sr._concepts_dict import concepts as untyped

    concepts = cast("dict[str, dict[str, dict[str, tuple[str, list[int]]]]]", untyped)
    meanings: dict[tuple[str, str], str] = {}
    for scheme, by_name in concepts.items():
        if scheme not in STANDARD_SCHEMES:
            continue
        for by_value in by_name.values():
            for value, (meaning, _cids) in by_value.items():
                meanings.setdefault((scheme, value), meaning)
    return meanings


def standard_code_meaning(scheme: str, value: str) -> str | None:
    """The dictionary meaning of a code from a standard scheme, or None when the code is not one we know."""
    scheme = scheme.strip()
    if scheme not in STANDARD_SCHEMES:
        return None
    # SNOMED codes travel under SRT in older data; pydicom files them under SCT.
    lookup_scheme = "SCT" if scheme == "SRT" else scheme
    return _concept_meanings().get((lookup_scheme, value.strip()))
