"""The node's own lists on top of Table E.1-1 (DEID.md 4.2 rules 4 and 6): what default-deny lets through.

Everything not named here and not kept by the table goes, so a new list entry is a reviewed decision to let a
value out; the coded-concept lookup keeps a CodeMeaning only as pydicom's dictionary spells it.
"""

from __future__ import annotations

import re
from functools import cache
from types import MappingProxyType
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
STANDARD_SCHEMES: Final = frozenset(
    {"DCM", "SCT", "SRT", "SNM3", "LN", "RADLEX", "UCUM", "FMA", "NCIt", "MDC", "SCPECG"}
)


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


# SNOMED codes of the older SNOMED-RT form (SRT, SNM3: "T-D0050") are looked up through pydicom's map to SCT.
_LEGACY_SNOMED: Final = frozenset({"SRT", "SNM3"})
# A code of a standard scheme that our dictionary does not hold keeps its value and scheme only when the
# value has the scheme's shape (PS3.16 Table 8-1): digits and punctuation, never free text. Its meaning is
# then the code value itself: derived from the vetted value, it adds nothing the value does not say.
_CODE_SHAPES: Final = MappingProxyType(
    {
        "DCM": re.compile(r"\d{5,6}"),
        "SCT": re.compile(r"\d{6,18}"),
        "SRT": re.compile(r"[A-Z][A-Z0-9]?-[0-9A-Z]{2,6}"),
        "SNM3": re.compile(r"[A-Z][A-Z0-9]?-[0-9A-Z]{2,6}"),
        "LN": re.compile(r"\d{1,7}-\d"),
        "SCPECG": re.compile(r"\d{1,2}(\.\d{1,2}){0,4}(-\d{1,3}){1,4}"),
        "RADLEX": re.compile(r"RID\d{1,6}"),
        "NCIt": re.compile(r"C\d{2,6}"),
        "MDC": re.compile(r"\d{1,6}(:\d{1,6})?"),
        "FMA": re.compile(r"\d{1,6}"),
        # UCUM units: no {annotations} (free text), letter runs of at most four ("[hnsf'U]", "mg/dL").
        "UCUM": re.compile(r"(?!.*[A-Za-z]{5})[A-Za-z0-9\[\]'/.*%^_\-]{1,16}"),
    }
)


def shaped_code_meaning(scheme: str, value: str) -> str | None:
    """A standard code's meaning: the dictionary's, else the value itself if shaped as its scheme says."""
    scheme = scheme.strip()
    value = value.strip()
    known = standard_code_meaning(scheme, value)
    if known is not None:
        return known
    if scheme in _LEGACY_SNOMED:
        mapped = _snomed_rt_to_ct().get(value)
        if mapped is not None:
            known = _concept_meanings().get(("SCT", mapped))
            if known is not None:
                return known
    shape = _CODE_SHAPES.get(scheme)
    if shape is not None and shape.fullmatch(value) is not None:
        return value
    return None


@cache
def _snomed_rt_to_ct() -> dict[str, str]:
    from pydicom.sr._snomed_dict import mapping

    return mapping["SRT"]


# PS3.4 B.5: image and segmentation classes whose IODs use the Enhanced General Equipment module (PS3.3
# C.7.5.2), where Manufacturer, Model, Device Serial Number and Software Versions are Type 1.
ENHANCED_EQUIPMENT_CLASSES: Final = frozenset(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "2.1",  # Enhanced CT
        "2.2",  # Legacy Converted Enhanced CT
        "4.1",  # Enhanced MR
        "4.2",  # MR Spectroscopy
        "4.3",  # Enhanced MR Color
        "4.4",  # Legacy Converted Enhanced MR
        "6.2",  # Enhanced US Volume
        "12.1.1",  # Enhanced XA
        "12.2.1",  # Enhanced XRF
        "13.1.3",  # Breast Tomosynthesis
        "30",  # Parametric Map
        "66.4",  # Segmentation
        "66.5",  # Surface Segmentation
        "128.1",  # Legacy Converted Enhanced PET
        "130",  # Enhanced PET
    )
)
# The Type (PS3.3) of the attributes whose value may have to go, in the IODs we see (CT, MR, US, SEG, ECG;
# SR is rejected whole): Type 1 gets a VR-typed dummy, Type 2 is emptied, any other is removed (DEID.md 4.2
# rule 3). The classes a Type holds in; None: wherever the attribute occurs (it belongs to one macro only,
# and 1C ones are present only where their condition holds). pydicom ships no module tables, so this list
# is ours and short on purpose: it grows with the IODs the node is configured for.
_TYPES: Final[dict[str, tuple[int, frozenset[str] | None]]] = {
    "DeviceSerialNumber": (1, ENHANCED_EQUIPMENT_CLASSES),
    "ImageType": (2, None),  # Type 1 in CT/MR, 2 in US; an empty value component is no leak
    "FrameType": (2, None),
    "SegmentLabel": (1, None),  # Segment Description macro
    "SegmentAlgorithmName": (1, None),  # 1C: present only for automatic and semi-automatic segments
    "ContentDescription": (2, None),  # Content Identification macro
    "LUTLabel": (1, None),  # Real World Value Mapping item macro
    "LUTExplanation": (1, None),
    "StackID": (1, None),  # 1C in the Frame Content macro, together with In-Stack Position Number
}
TYPE_IN_IOD: Final[dict[int, tuple[int, frozenset[str] | None]]] = {
    int(tag): entry for keyword, entry in _TYPES.items() for tag in _tags(keyword)
}


def attribute_type(tag: int, sop_class: str) -> int | None:
    """1 or 2 when `tag` is Type 1 or 2 in the IOD of `sop_class` (as far as our list knows), else None."""
    entry = TYPE_IN_IOD.get(tag)
    if entry is None:
        return None
    kind, classes = entry
    return kind if classes is None or sop_class in classes else None


# Code strings whose values are lists of defined terms (PS3.3 C.7.6.1.1.2, C.8.16.1, C.8.13.1.1.1): each
# value is judged alone, so one bad value empties that value, not the attribute the IOD requires.
COMPONENT_CODE_STRINGS: Final = _tags("ImageType", "FrameType")
# Defined terms of Image Type and Frame Type: a value equal to one of them is the standard's word, kept even
# when a name in the instance happens to be spelled the same (a patient named "Perfusion").
IMAGE_TYPE_TERMS: Final = frozenset(
    {
        *("ORIGINAL", "DERIVED", "MIXED", "PRIMARY", "SECONDARY", "NONE", "OTHER"),
        *("AXIAL", "LOCALIZER", "REFERENCE", "VOLUME", "PROJECTION", "ANGIO", "PERFUSION"),
        *("DIFFUSION", "CARDIAC", "CARDIAC_GATED", "CARDIAC_CASCORE", "CARDIAC_CTA", "DYNAMIC"),
        *("FLUOROSCOPY_GUIDED", "ATTENUATION", "CT_ANGIO", "IMAGE_ADDITION", "MULTI_ENERGY"),
        *("SPECTROSCOPY", "FLOW_ENCODED", "ENDOSCOPY", "FMRI", "TEMPERATURE", "T1", "T2", "T2_STAR"),
        *("PROTON_DENSITY", "STIR", "FLAIR", "DIXON", "WATER", "FAT", "VELOCITY", "MIP", "MINIP"),
        *("MPR", "CPR", "CURVED_MPR", "MAXIMUM", "MINIMUM", "MEAN", "ADDITION", "SUBTRACTION"),
        *("DIVISION", "RESAMPLED", "VOLUME_RENDER", "SURFACE_RENDER", "HELICAL", "SEQUENCED"),
        *("CINE", "REPORT", "FILTERED", "MOTION_CORRECTED", "MONOENERGETIC", "IODINE"),
    }
)
