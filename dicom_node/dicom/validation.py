"""Conformance and clinical checks on a received instance, read from its header only.

Pure dataset logic: no network, no database. Each failed check yields a stable error code; the
DIMSE status for each code is decided at the network boundary (`dicom_node.net.status`).
Pixel data is never decoded: native pixel data is checked by its length, encapsulated data is not read.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

# PS3.5 9.1: components of digits, no leading zero, separated by dots, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

# PS3.3 C.7.6.3.1.2, including retired values that real archives still hold.
KNOWN_PHOTOMETRIC_INTERPRETATIONS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
        "XYB",
    }
)

# Type 1 attributes of the SOP Common, General Study and General Series modules (PS3.3 C.12.1, C.7.2.1,
# C.7.3.1), which every storage IOD we route by includes.
REQUIRED_ALWAYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
# Type 1 attributes of the Image Pixel module (PS3.3 C.7.6.3), required once pixel data is present.
REQUIRED_WITH_PIXELS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_SIZE = 64 * 1024


class Code:
    """Stable validation error codes (API, rejection rows and ErrorComment all carry these)."""

    UNREADABLE = "instance.unreadable"
    TRUNCATED = "instance.truncated"
    SOP_CLASS_MISMATCH = "instance.sop_class_mismatch"
    SOP_INSTANCE_UID_MISMATCH = "instance.sop_instance_uid_mismatch"
    TYPE1_MISSING = "instance.type1_missing"
    UID_INVALID = "instance.uid_invalid"
    PHOTOMETRIC_UNKNOWN = "instance.photometric_unknown"
    BITS_STORED_EXCEEDS_ALLOCATED = "instance.bits_stored_exceeds_allocated"
    DIMENSIONS_OUT_OF_BOUNDS = "instance.dimensions_out_of_bounds"
    PIXEL_DATA_LENGTH_MISMATCH = "instance.pixel_data_length_mismatch"
    MODALITY_NOT_ALLOWED = "instance.modality_not_allowed"
    SERIES_IN_OTHER_STUDY = "instance.series_in_other_study"


class UnreadableInstance(Exception):
    """The received bytes are not a DICOM data set we can read."""

    code = Code.UNREADABLE


@dataclass(frozen=True, slots=True)
class ValidationRules:
    max_rows: int
    max_columns: int
    modality_allowlist: frozenset[str]


@dataclass(frozen=True, slots=True)
class ReceiveContext:
    """What the association told us about the instance, to compare with what the data set says."""

    context_sop_class_uid: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The identity ingest stores; PHI (patient id, UIDs) that only `original_*` columns may hold."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None
    modality: str | None


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    dataset: Dataset
    file_size: int
    path: Path
    transfer_syntax_uid: str


# What pydicom raises on bytes that are not a readable data set (a cut deflate stream: zlib.error).
_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    IndexError,
    NotImplementedError,
    OverflowError,
    AttributeError,
    zlib.error,
)


class TruncatedInstance(UnreadableInstance):
    """The file ends before the data set it announces does."""

    code = Code.TRUNCATED


def read_file(path: Path) -> Dataset:
    """A DICOM file at rest, whole (bulk values deferred, read on access), refused when cut short.

    For tools that read files from disk (`dicom-node deidentify`): the transfer syntax comes from
    the file's own meta information rather than from an association.
    """
    try:
        header = dcmread(path, defer_size=_DEFER_SIZE)
        transfer_syntax = str(header.file_meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian)
        parsed = ParsedInstance(header, path.stat().st_size, path, transfer_syntax)
        truncated = _is_truncated(parsed)
    except _READ_ERRORS as exc:
        raise UnreadableInstance() from exc
    if truncated:
        raise TruncatedInstance()
    return header


def read_instance(path: Path, *, transfer_syntax_uid: str) -> ParsedInstance:
    """Parse the header of a received file; bulk values are deferred, encapsulated pixels skipped."""
    encapsulated = UID(transfer_syntax_uid).is_encapsulated
    try:
        dataset = dcmread(path, defer_size=_DEFER_SIZE, stop_before_pixels=encapsulated)
        file_size = path.stat().st_size
    except _READ_ERRORS as exc:
        raise UnreadableInstance() from exc
    return ParsedInstance(
        dataset=dataset, file_size=file_size, path=path, transfer_syntax_uid=transfer_syntax_uid
    )


def _value(dataset: Dataset, keyword: str) -> Any:
    """An attribute's value, or None when absent, empty or undecodable."""
    try:
        element = dataset.data_element(keyword)
    except (ValueError, KeyError, TypeError, OverflowError, IndexError, UnicodeDecodeError):
        return None
    if element is None or element.value is None or element.value == "":
        return None
    return element.value


def _is_truncated(parsed: ParsedInstance) -> bool:
    """True when the last top-level element claims more bytes than the file holds.

    pydicom returns a short value instead of raising, so a data set cut off in its last element
    (typically pixel data) would otherwise pass as complete.
    """
    transfer_syntax = UID(parsed.transfer_syntax_uid)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return False  # offsets are in the inflated stream; a cut-off deflate stream fails to inflate
    if transfer_syntax.is_encapsulated:
        return _encapsulated_pixels_truncated(parsed.path)
    dataset = parsed.dataset
    tags = list(dataset.keys())
    if not tags:
        return True
    last = dataset.get_item(max(tags), keep_deferred=True)
    length = getattr(last, "length", None)
    value_tell = getattr(last, "value_tell", None)
    if length is None or value_tell is None or length == _UNDEFINED_LENGTH:
        return False
    return bool(value_tell + length > parsed.file_size)


# (7FE0,0010) Pixel Data, explicit VR little endian, undefined length: how encapsulated pixel data starts.
_ENCAPSULATED_PIXEL_HEADERS = (
    b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff",
    b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff",
)
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


def _encapsulated_pixels_truncated(path: Path) -> bool:
    """True when the fragments of the top-level encapsulated Pixel Data do not end in a delimiter.

    PS3.5 A.4: items (FFFE,E000) of defined length, then (FFFE,E0DD). Only item headers are read
    (values are skipped by offset), so memory stays flat whatever the pixel data's size.
    """
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        start = max(view.rfind(header) for header in _ENCAPSULATED_PIXEL_HEADERS)
        if start < 0:
            return False  # no encapsulated pixel data in this data set
        position, size = start + 12, len(view)
        while position + 8 <= size:
            group, element, length = struct.unpack_from("<HHI", view, position)
            if (group, element) == _SEQUENCE_DELIMITER:
                return False
            if (group, element) != _ITEM or length == _UNDEFINED_LENGTH:
                return True
            position += 8 + length
        return True


def _native_pixel_length(dataset: Dataset) -> int | None:
    raw = dataset.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    if raw is None:
        return None
    length = getattr(raw, "length", None)
    if length is None:
        value = raw.value
        length = len(value) if isinstance(value, bytes | bytearray) else None
    return length


def read_header(dataset: Dataset) -> InstanceHeader:
    def text(keyword: str) -> str | None:
        value = _value(dataset, keyword)
        return None if value is None else str(value).strip()

    return InstanceHeader(
        sop_class_uid=text("SOPClassUID") or "",
        sop_instance_uid=text("SOPInstanceUID") or "",
        study_instance_uid=text("StudyInstanceUID") or "",
        series_instance_uid=text("SeriesInstanceUID") or "",
        patient_id=text("PatientID"),
        modality=(text("Modality") or None),
    )


def validate_instance(
    parsed: ParsedInstance, *, context: ReceiveContext, rules: ValidationRules
) -> list[str]:
    """Every failed check's code, most fundamental first; an empty list means the instance is accepted."""
    dataset = parsed.dataset
    if all(_value(dataset, keyword) is None for keyword in _UID_KEYWORDS):
        # Not one identifying attribute: whatever was parsed is not a composite instance.
        return [Code.UNREADABLE]
    codes: list[str] = []
    if _is_truncated(parsed):
        codes.append(Code.TRUNCATED)

    header = read_header(dataset)
    if context.affected_sop_class_uid != context.context_sop_class_uid or (
        header.sop_class_uid and header.sop_class_uid != context.affected_sop_class_uid
    ):
        codes.append(Code.SOP_CLASS_MISMATCH)
    if header.sop_instance_uid and header.sop_instance_uid != context.affected_sop_instance_uid:
        codes.append(Code.SOP_INSTANCE_UID_MISMATCH)

    # Encapsulated pixel data is not read (stop_before_pixels), so its presence is inferred from Rows.
    encapsulated = UID(context.transfer_syntax_uid).is_encapsulated
    has_pixels = _PIXEL_DATA_TAG in dataset or (encapsulated and "Rows" in dataset)
    required = REQUIRED_ALWAYS + (REQUIRED_WITH_PIXELS if has_pixels else ())
    if any(_value(dataset, keyword) is None for keyword in required):
        codes.append(Code.TYPE1_MISSING)
    for keyword in _UID_KEYWORDS:
        uid = _value(dataset, keyword)
        if uid is not None and (len(str(uid)) > 64 or not _UID.match(str(uid))):
            codes.append(Code.UID_INVALID)
            break

    if (
        rules.modality_allowlist
        and header.modality
        and header.modality.upper() not in rules.modality_allowlist
    ):
        codes.append(Code.MODALITY_NOT_ALLOWED)

    if has_pixels:
        codes.extend(_pixel_codes(dataset, context=context, rules=rules))
    return codes


def _pixel_codes(dataset: Dataset, *, context: ReceiveContext, rules: ValidationRules) -> list[str]:
    codes: list[str] = []
    photometric = _value(dataset, "PhotometricInterpretation")
    if photometric is not None and str(photometric).strip().upper() not in KNOWN_PHOTOMETRIC_INTERPRETATIONS:
        codes.append(Code.PHOTOMETRIC_UNKNOWN)
    bits_allocated = _value(dataset, "BitsAllocated")
    bits_stored = _value(dataset, "BitsStored")
    if isinstance(bits_allocated, int) and isinstance(bits_stored, int) and bits_stored > bits_allocated:
        codes.append(Code.BITS_STORED_EXCEEDS_ALLOCATED)
    rows = _value(dataset, "Rows")
    columns = _value(dataset, "Columns")
    if (
        isinstance(rows, int)
        and isinstance(columns, int)
        and not (1 <= rows <= rules.max_rows and 1 <= columns <= rules.max_columns)
    ):
        codes.append(Code.DIMENSIONS_OUT_OF_BOUNDS)
    if not UID(context.transfer_syntax_uid).is_encapsulated and not codes and _PIXEL_DATA_TAG in dataset:
        actual = _native_pixel_length(dataset)
        if actual is not None and not _pixel_length_matches(dataset, actual):
            codes.append(Code.PIXEL_DATA_LENGTH_MISMATCH)
    return codes


def _pixel_length_matches(dataset: Dataset, actual: int) -> bool:
    """Native PixelData: Rows x Columns x Samples x Frames values of BitsAllocated bits, padded to even."""
    try:
        expected = get_expected_length(dataset, unit="bytes")
    except (AttributeError, ValueError, TypeError, KeyError):
        return False
    if not isinstance(expected, int):  # e.g. a non-numeric NumberOfFrames
        return False
    return actual in (expected, expected + (expected % 2))
