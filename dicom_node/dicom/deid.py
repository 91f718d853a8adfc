"""De-identification of one instance (DEID.md 4.2 to 4.6): a pure function from a data set to a new one.

The input is never changed; the output carries keyed pseudonyms only and records what was done (PS3.15
E.1.1, PS3.3 C.12.1.1.7); an instance we cannot vouch for is rejected with a stable reason code.
"""

from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.core.errors import DicomNodeError
from dicom_node.dicom.deid_allowlists import REGISTERED_UIDS
from dicom_node.dicom.deid_clean import PixelsNotCleaned, clean_pixels, write_cleaned
from dicom_node.dicom.deid_pixels import (
    NOT_AT_RISK,
    REASON_BURNED_IN,
    REASON_MALFORMED,
    pixel_bytes_risk,
    pixel_risk,
    ultrasound_regions_apply,
)
from dicom_node.dicom.deid_rules import Option, SafePrivate
from dicom_node.dicom.deid_table import BASE_EDITION, BASE_SOURCE, SOURCE_SHA256, TOPUP_EDITION
from dicom_node.dicom.deid_tokens import identifying_tokens, read_element
from dicom_node.dicom.deid_values import age_between, cap_age
from dicom_node.dicom.deid_walk import Walk, private_view

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydicom.sr.coding import Code

    from dicom_node.dicom.deid_keys import DeidKeys

CLAIMED_OPTIONS: Final = frozenset(
    {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_PATIENT_CHARACTERISTICS}
)
# The options this engine implements; any other is refused up front rather than silently not applied.
SUPPORTED_OPTIONS: Final = CLAIMED_OPTIONS
# CID 7050 codes of the options (PS3.16).
OPTION_CODES: Final[Mapping[Option, Code]] = MappingProxyType(
    {
        Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
            codes.cid7050.RetainLongitudinalTemporalInformationModifiedDatesOption
        ),
        Option.RETAIN_PATIENT_CHARACTERISTICS: codes.cid7050.RetainPatientCharacteristicsOption,
        Option.RETAIN_SAFE_PRIVATE: codes.cid7050.RetainSafePrivateOption,
    }
)
# Our Implementation Class UID (PS3.7 D.3.3.2): a 2.25 UID (PS3.5 B.2) derived from a fixed name.
IMPLEMENTATION_CLASS_UID: Final = (
    f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:dicom-node:implementation').int}"
)
# DEID.md 4.5: SR documents (PS3.4 B.5, the 88.x classes: SR, KOS, CAD, dose reports...). Table E.1-1 makes
# their Content Sequence D, which leaves no conformant document, and this engine does not claim Clean
# Structured Content (113104). So an SR is rejected whole with this code: the original stays in the PHI
# store, nothing half-cleaned reaches a PACS, and no free text of a report (TEXT items, observer names,
# local codes) can slip through a partial clean. A PACS admin sees one clear reason per SR.
REASON_STRUCTURED_CONTENT: Final = "deid.structured_content"
_SR_CLASS_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.88."
# The identity of an instance (PS3.3 C.12.1, C.7.2.1): without them there is nothing to pass on.
_REQUIRED_IDENTITY: Final = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
_AE_TITLE: Final = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
_ISSUER: Final = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,64}")


@dataclass(frozen=True, slots=True)
class DeidPolicy:
    """The switches of one de-identification: options in force and the node's own names."""

    options: frozenset[Option] = CLAIMED_OPTIONS
    default_issuer: str = "DICOM_NODE"
    node_ae_title: str = "DICOM_NODE"
    max_age_years: int = 90
    # DEID.md 4.2 rule 2: the private elements models declared safe (numbers only); none by default. A kept
    # element claims Retain Safe Private (113111) on the instance; an empty list claims nothing.
    safe_private: frozenset[SafePrivate] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "safe_private", frozenset(self.safe_private))
        if not all(isinstance(entry, SafePrivate) for entry in self.safe_private):
            raise ValueError("safe_private holds SafePrivate entries only")
        if len({entry.key for entry in self.safe_private}) != len(self.safe_private):
            raise ValueError("two safe_private entries for one (group, creator, offset)")
        unsupported = set(self.options) - SUPPORTED_OPTIONS
        if unsupported:
            raise ValueError(f"options not implemented: {sorted(option.value for option in unsupported)}")
        if _ISSUER.fullmatch(self.default_issuer) is None or not self.default_issuer.strip():
            raise ValueError("default_issuer must be 1 to 64 ASCII characters")
        if _AE_TITLE.fullmatch(self.node_ae_title) is None or not self.node_ae_title.strip():
            raise ValueError("node_ae_title must be 1 to 16 ASCII characters")
        if not 1 <= self.max_age_years <= 999:
            raise ValueError("max_age_years must be between 1 and 999")


class DeidRejected(DicomNodeError):
    """The instance cannot be de-identified and was not passed on."""

    code = "deid.rejected"

    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code


@dataclass(frozen=True, slots=True)
class Pseudonym:
    """One mapping made, for the PHI-side pseudonym map."""

    kind: str
    pseudo: str
    original: str


@dataclass(frozen=True, slots=True)
class DeidReport:
    """What was done to one instance; holds no value from the data set except filtered creator names."""

    actions: Mapping[str, int]
    private_creators_removed: tuple[str, ...]
    pixel_decision: str
    options_applied: tuple[Option, ...]
    # Creators of the blocks a safe-listed element was kept from (DEID.md 4.6), through the same filter.
    private_creators_kept: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeidResult:
    """The de-identified copy, every pseudonym made for it, and the report."""

    dataset: Dataset
    pseudonyms: tuple[Pseudonym, ...]
    report: DeidReport


@dataclass(frozen=True, slots=True)
class _Identity:
    """The original identity values the fixed-value step needs, read once from the copy."""

    issuer: str
    patient_id: str
    accession: str | None
    study_id: str | None
    birth_date: str | None
    age: str | None
    study_date: str | None


def deidentify_dataset(ds: Dataset, policy: DeidPolicy, keys: DeidKeys) -> DeidResult:
    """A de-identified copy of `ds`; raises DeidRejected when it cannot be made safe."""
    # Reading pydicom elements converts them in place, so even the checks run on a private view.
    work = private_view(ds)
    if _already_deidentified(work):
        raise DeidRejected("deid.already_deidentified")
    sop_class = _required_identity(work)
    if sop_class.startswith(_SR_CLASS_PREFIX):
        raise DeidRejected(REASON_STRUCTURED_CONTENT)
    decision = pixel_risk(work)
    # DEID.md 4.4: an at-risk instance is cleaned only by the ultrasound regions method; all else is rejected.
    ultrasound = decision == REASON_BURNED_IN and ultrasound_regions_apply(work)
    if decision != NOT_AT_RISK and not ultrasound:
        raise DeidRejected(decision)
    tokens = identifying_tokens(work)
    # On the original bytes, before any cleaning: an identity spelled in them rejects whatever is cleaned.
    decision = pixel_bytes_risk(work, tokens)
    if decision != NOT_AT_RISK:
        raise DeidRejected(decision)
    try:
        cleaned = clean_pixels(work, _transfer_syntax(work), tokens, ultrasound=ultrasound)
    except PixelsNotCleaned as exc:
        raise DeidRejected(exc.code) from exc
    if cleaned is not None:
        decision = cleaned.decision
    identity = _identity(work, policy)
    options = tuple(option for option in Option if option in policy.options)
    shift_days = (
        keys.date_shift_days(identity.issuer, identity.patient_id)
        if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in policy.options
        else None
    )
    walk = Walk(
        options=policy.options,
        keys=keys,
        shift_days=shift_days,
        tokens=tokens,
        sop_class=sop_class,
        safe_private=_safe_private_index(policy.safe_private),
        raw_source=ds._dict,
        raw_little_endian=_explicit_byte_order(
            (cleaned.transfer_syntax if cleaned is not None else None) or _transfer_syntax(work)
        ),
    )
    body = walk.item(work, 0)
    if walk.malformed_required:
        raise DeidRejected(REASON_MALFORMED)
    if walk.identifying_signal:
        # Waveform samples spelling an identity: rejected like pixel data that does (DEID.md 4.4).
        raise DeidRejected(REASON_BURNED_IN)
    if walk.private_creators_kept:
        kept = {*options, Option.RETAIN_SAFE_PRIVATE}
        options = tuple(option for option in Option if option in kept)
    if cleaned is not None:
        write_cleaned(body, cleaned)
    pseudonyms = _write_identity(body, identity, policy, keys, walk)
    meta = _file_meta(
        work, body, policy, walk, transfer_syntax=cleaned.transfer_syntax if cleaned is not None else None
    )
    syntax = UID(meta.TransferSyntaxUID)
    encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
    _record(body, options, keys, walk, pixels_cleaned=cleaned is not None, encoding=encoding)
    body.file_meta = meta
    if not walk.ambiguous:
        _mark_encoding(body, walk.made, encoding)
    for original, pseudo in walk.uids.items():
        pseudonyms.append(Pseudonym(kind="uid", pseudo=pseudo, original=original))
    report = DeidReport(
        actions=MappingProxyType(dict(sorted(walk.counts.items()))),
        private_creators_removed=_reportable_creators(walk.private_creators, walk.tokens),
        pixel_decision=decision,
        options_applied=options,
        private_creators_kept=_reportable_creators(walk.private_creators_kept, walk.tokens),
    )
    return DeidResult(dataset=body, pseudonyms=_unique(pseudonyms), report=report)


@cache
def _safe_private_index(entries: frozenset[SafePrivate]) -> Mapping[tuple[int, str, int], SafePrivate]:
    return MappingProxyType({entry.key: entry for entry in entries})


def _already_deidentified(ds: Dataset) -> bool:
    """Our own output coming back (DEID.md 4.3 idempotence): never de-identified twice."""
    try:
        removed = ds.get("PatientIdentityRemoved")
        method = ds.get("DeidentificationMethod")
    except Exception:
        return False
    if str(removed or "").strip().upper() != "YES" or not method:
        return False
    first = method if isinstance(method, str) else next(iter(method), "")
    return str(first).strip().startswith("dicom-node")


def _required_identity(ds: Dataset) -> str:
    """The SOP Class UID, once SOP Class, SOP Instance and Study Instance UID are all present and readable;
    an instance without them (a file pydicom read no elements from) is rejected, never passed on empty."""
    for keyword in _REQUIRED_IDENTITY:
        if not _string(ds, keyword):
            raise DeidRejected(REASON_MALFORMED)
    return (_string(ds, "SOPClassUID") or "").rstrip("\0 ")


def _string(ds: Dataset, keyword: str) -> str | None:
    """One string value of a top-level element, None when absent; raises DeidRejected when unreadable."""
    tag = _keyword_tag(keyword)
    if tag not in ds._dict:
        return None
    try:
        value = read_element(ds, tag).value
    except Exception as exc:
        raise DeidRejected(REASON_MALFORMED) from exc
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray) or not isinstance(value, str):
        raise DeidRejected(REASON_MALFORMED)
    return value.strip()


@cache
def _keyword_tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


# The key of an instance without a Patient ID: its study, so unidentified patients never share one
# pseudonym and date offset. The separator cannot occur in a PatientID (LO excludes control characters).
_NO_PATIENT_ID: Final = "\x1estudy:"


def _identity(ds: Dataset, policy: DeidPolicy) -> _Identity:
    issuer = _string(ds, "IssuerOfPatientID") or policy.default_issuer
    patient_id = _string(ds, "PatientID") or _NO_PATIENT_ID + (_string(ds, "StudyInstanceUID") or "")
    return _Identity(
        issuer=issuer,
        patient_id=patient_id,
        accession=_string(ds, "AccessionNumber"),
        study_id=_string(ds, "StudyID"),
        birth_date=_optional_string(ds, "PatientBirthDate"),
        age=_optional_string(ds, "PatientAge"),
        study_date=_optional_string(ds, "StudyDate"),
    )


def _optional_string(ds: Dataset, keyword: str) -> str | None:
    """Like _string, but an unreadable value only loses what would be derived from it."""
    try:
        return _string(ds, keyword)
    except DeidRejected:
        return None


def _write_identity(
    body: Dataset, identity: _Identity, policy: DeidPolicy, keys: DeidKeys, walk: Walk
) -> list[Pseudonym]:
    """DEID.md 4.2 rule 6: the fixed identity values, all ASCII, all keyed."""
    pseudonyms: list[Pseudonym] = []
    pid = keys.patient_pseudonym(identity.issuer, identity.patient_id)
    original = "" if identity.patient_id.startswith(_NO_PATIENT_ID) else identity.patient_id
    pseudonyms.append(Pseudonym(kind="patient_id", pseudo=pid, original=original))
    _put(body, 0x00100010, "PN", f"ANON^{pid}")  # PatientName
    _put(body, 0x00100020, "LO", pid)  # PatientID
    _put_fixed(body, 0x00100021, "LO", policy.default_issuer)  # IssuerOfPatientID
    _put_fixed(body, 0x00100030, "DA", "")  # PatientBirthDate
    walk.counts["D"] += 2
    walk.counts["Z"] += 1
    for tag, kind, value, pseudonym_of in (
        (0x00080050, "accession", identity.accession, keys.accession),  # AccessionNumber
        (0x00200010, "study_id", identity.study_id, keys.study_id),  # StudyID
    ):
        if value is None:
            continue  # absent in the input: stays absent
        pseudo = pseudonym_of(identity.issuer, value) if value else ""
        if pseudo:
            pseudonyms.append(Pseudonym(kind=kind, pseudo=pseudo, original=value))
        _put(body, tag, "SH", pseudo)
    if Option.RETAIN_PATIENT_CHARACTERISTICS in policy.options:
        age = _age(identity, policy.max_age_years)
        if age is not None:
            _put(body, 0x00101010, "AS", age)  # PatientAge
            walk.counts["K"] += 1
    return pseudonyms


def _age(identity: _Identity, max_years: int) -> str | None:
    """Patient's Age kept and capped, or computed from the original dates before the birth date goes."""
    try:
        if identity.age:
            return cap_age(identity.age, max_years)
        if identity.birth_date and identity.study_date:
            return age_between(identity.birth_date, identity.study_date, max_years)
    except ValueError:
        return None
    return None


@cache
def _version() -> str:
    try:
        return metadata.version("dicom-node")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def method_description(
    options: tuple[Option, ...], keys: DeidKeys, *, pixels_cleaned: bool = False
) -> list[str]:
    """De-identification Method as LO values (each at most 64 characters): engine, table, options, key."""
    return _method(options, keys.key_id, pixels_cleaned)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    _put(item, 0x00080100, "SH", code.value)
    _put(item, 0x00080102, "SH", code.scheme_designator)
    _put(item, 0x00080104, "LO", code.meaning)
    return item


def _put(ds: Dataset, tag: int, vr: str, value: object) -> None:
    """`ds.<keyword> = value` for a public, non-sequence element, by tag: no keyword lookup, no checks."""
    element = DataElement(tag, vr, value)
    ds._dict[element.tag] = element


def _put_fixed(ds: Dataset, tag: int, vr: str, value: str | bytes) -> None:
    """`_put` for a value the engine writes into every instance (a constant, a policy's name): a new element
    copied from one made once, which holds the same immutable value (str, UID, bytes or None)."""
    template = _fixed_element(tag, vr, type(value), value)
    if template is None:
        _put(ds, tag, vr, value)
        return
    element = DataElement.__new__(DataElement)
    element.__dict__.update(template.__dict__)
    ds._dict[element.tag] = element


@lru_cache(maxsize=64)
def _fixed_element(tag: int, vr: str, kind: type, value: str | bytes) -> DataElement | None:
    """The element `_put` makes, when its value is immutable (None: not, as a DA under pydicom's
    `datetime_conversion`); `kind` keys the cache apart for equal values of different types."""
    element = DataElement(tag, vr, value)
    if element.value is not None and not isinstance(element.value, str | bytes):
        return None
    return element


@cache
def _method_values(options: tuple[Option, ...], key_id: str, pixels_cleaned: bool) -> tuple[str, ...]:
    """De-identification Method for one policy, key and pixel outcome: built once, copied per instance."""
    table_hash = SOURCE_SHA256[BASE_SOURCE][:12]
    option_codes = (
        ",".join(code.value for code in _option_codes(options, pixels_cleaned=pixels_cleaned)) or "none"
    )
    return (
        f"dicom-node {_version()}",
        f"PS3.15 Annex E (table {BASE_EDITION}+{TOPUP_EDITION}, sha256:{table_hash})",
        f"options: {option_codes}",
        f"key:{key_id}",
    )


def _method(options: tuple[Option, ...], key_id: str, pixels_cleaned: bool) -> list[str]:
    return list(_method_values(options, key_id, pixels_cleaned))


def _option_codes(options: tuple[Option, ...], *, pixels_cleaned: bool) -> list[Code]:
    """The CID 7050 codes of what this instance had applied: the policy's options, then Clean Pixel Data."""
    applied = [OPTION_CODES[option] for option in options]
    if pixels_cleaned:
        applied.append(codes.cid7050.CleanPixelDataOption)
    return applied


_METHOD_CODES: Final = 0x00120064  # DeidentificationMethodCodeSequence
_CONTRIBUTING_EQUIPMENT: Final = 0x0018A001  # ContributingEquipmentSequence
_SPECIFIC_CHARACTER_SET: Final = 0x00080005


def _record(
    body: Dataset,
    options: tuple[Option, ...],
    keys: DeidKeys,
    walk: Walk,
    *,
    pixels_cleaned: bool = False,
    encoding: tuple[bool, bool] | None = None,
) -> None:
    """PS3.15 E.1.1 and DEID.md 4.6: what was done, on the instance itself.

    `encoding` (implicit VR, little endian): the output's; the two sequences we add are then put in encoded
    form, as pydicom would write them in that encoding (see _encoded_sequence), which is built once per
    policy and study instead of once per instance.
    """
    _put_fixed(body, 0x00120062, "CS", "YES")  # PatientIdentityRemoved
    _put(body, 0x00120063, "LO", _method(options, keys.key_id, pixels_cleaned))  # DeidentificationMethod
    charset = _charset_key(body) if encoding is not None else None
    method_codes = (
        _encoded_sequence(_METHOD_CODES, ("method", options, pixels_cleaned), encoding, charset)
        if encoding is not None and charset is not None
        else None
    )
    if method_codes is not None:
        body._dict[method_codes.tag] = method_codes
    else:
        body.DeidentificationMethodCodeSequence = _method_code_items(options, pixels_cleaned)
    if pixels_cleaned:
        # PS3.3 C.7.6.1.1.4: cleaned pixels carry no burned-in text; a new element, the input's is untouched.
        body["BurnedInAnnotation"] = DataElement("BurnedInAnnotation", "CS", "NO")
    shifted = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options
    # LongitudinalTemporalInformationModified
    _put_fixed(body, 0x00280303, "CS", "MODIFIED" if shifted else "REMOVED")
    contributed_at = _contribution_datetime(body) if shifted else None
    if "ContributingEquipmentSequence" in body:
        existing = list(body.ContributingEquipmentSequence)
        body.ContributingEquipmentSequence = Sequence([*existing, _equipment_item(contributed_at)])
        return
    equipment = (
        _encoded_sequence(_CONTRIBUTING_EQUIPMENT, ("equipment", contributed_at), encoding, charset)
        if encoding is not None and charset is not None
        else None
    )
    if equipment is not None:
        body._dict[equipment.tag] = equipment
    else:
        body.ContributingEquipmentSequence = _equipment_sequence(("equipment", contributed_at))


def _method_code_items(options: tuple[Option, ...], pixels_cleaned: bool) -> Sequence:
    return Sequence(
        [_code_item(codes.cid7050.BasicApplicationConfidentialityProfile)]
        + [_code_item(code) for code in _option_codes(options, pixels_cleaned=pixels_cleaned)]
    )


def _equipment_item(contributed_at: str | None) -> Dataset:
    equipment = Dataset()
    _put(equipment, 0x00080070, "LO", "dicom-node")  # Manufacturer
    _put(equipment, 0x00181020, "LO", _version())  # SoftwareVersions
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code_item(codes.DCM.DeIdentifyingEquipment)])
    if contributed_at is not None:
        equipment.ContributionDateTime = contributed_at
    return equipment


def _equipment_sequence(what: tuple[object, ...]) -> Sequence:
    return Sequence([_equipment_item(what[1])])  # type: ignore[arg-type]


def _charset_key(body: Dataset) -> tuple[str, ...] | None:
    """The Specific Character Set value the writer encodes the body's text with, as a cache key; None when
    it is not plain strings (then the sequences are built as data sets, as before)."""
    element = body._dict.get(_SPECIFIC_CHARACTER_SET)  # type: ignore[call-overload]
    if element is None:
        return ()
    if not isinstance(element, DataElement):
        return None
    value = element.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if not all(isinstance(item, str) for item in values):
        return None
    return tuple(values)


@lru_cache(maxsize=256)
def _encoded_sequence(
    tag: int, what: tuple[object, ...], encoding: tuple[bool, bool], charset: tuple[str, ...]
) -> RawDataElement | None:
    """One of the sequences _record adds, encoded by pydicom's own writer exactly as `dcmwrite` would write
    it in the body (same encoding, same character set), kept as a raw element: the same bytes are written,
    and reading it from the data set decodes it like any element read from a file.

    Only valid where the body is written in `encoding`; pydicom converts a raw element whenever a data set is
    written in another encoding than its original one, which _mark_encoding sets to this one. None on any
    error: the caller builds the data sets instead.
    """
    try:
        if what[0] == "method":
            items = _method_code_items(cast("tuple[Option, ...]", what[1]), bool(what[2]))
        else:
            items = _equipment_sequence(what)
        element = DataElement(tag, "SQ", items)
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = encoding
        if not charset:
            encodings: str | list[str] = "iso8859"  # pydicom's default_encoding, as write_dataset uses it
        else:
            encodings = charset[0] if len(charset) == 1 else list(charset)
        write_data_element(fp, element, encodings)
        encoded = fp.getvalue()
    except Exception:
        return None
    header = 8 if encoding[0] else 12  # tag, (VR, reserved,) 4-byte length
    value = encoded[header:]
    if int.from_bytes(encoded[header - 4 : header], "little" if encoding[1] else "big") != len(value):
        return None
    return RawDataElement(Tag(tag), "SQ", len(value), value, 0, encoding[0], encoding[1])


def _mark_encoding(body: Dataset, items: list[Dataset], encoding: tuple[bool, bool]) -> None:
    """Record the output's encoding as the data sets' original one, as pydicom does for a data set it read.

    pydicom's writer then writes elements as they are, without a pass of ambiguous VR correction over every
    data set and item, and writes the raw elements _record put in as their bytes. Only called when the walk
    met no element of ambiguous VR, so the correction pass has nothing to do (the bytes are the same); a data
    set written in another encoding is still converted element by element.
    """
    for dataset in (body, *items):
        dataset.set_original_encoding(encoding[0], encoding[1], dataset._character_set)


def _contribution_datetime(body: Dataset) -> str | None:
    """The shifted study date and time: a stable stand-in for "now" that keeps the output deterministic."""
    study_date = str(body.get("StudyDate") or "").strip()
    if re.fullmatch(r"\d{8}", study_date) is None:
        return None
    study_time = str(body.get("StudyTime") or "").strip()
    if re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", study_time) is None:
        study_time = ""
    return study_date + study_time


def _explicit_byte_order(transfer_syntax: str) -> bool | None:
    """True (little endian) or False (big endian) when the output is written in explicit VR in the transfer
    syntax `transfer_syntax`, as _file_meta will name it; None when it is implicit VR, private or unknown."""
    if not transfer_syntax or transfer_syntax not in REGISTERED_UIDS:
        return None
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_implicit_VR:
        return None
    return bool(syntax.is_little_endian)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "").rstrip("\0 ")


class _FileMeta(FileMetaDataset):
    """Our File Meta Information: a FileMetaDataset whose deep copy is cheap.

    `pydicom.dcmwrite` deep-copies the file meta of every data set it writes (so as not to change it); ours
    holds nothing but immutable values (str, UID, bytes), so a copy with new element objects sharing those
    values is as deep as it needs to be, at a fraction of `copy.deepcopy`'s cost. The copy is a plain
    FileMetaDataset, so this class never spreads beyond our own output.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> FileMetaDataset:
        copied = FileMetaDataset()
        for tag, element in self._dict.items():
            if not isinstance(element, DataElement) or not isinstance(element.value, str | bytes):
                return _deepcopy_meta(self, memo)
            twin = DataElement.__new__(DataElement)
            twin.__dict__.update(element.__dict__)
            copied._dict[tag] = twin
        return copied


def _deepcopy_meta(meta: FileMetaDataset, memo: dict[int, object]) -> FileMetaDataset:
    """`copy.deepcopy` of a file meta as a plain FileMetaDataset (the fallback for a value that is not
    immutable, which our file meta never holds)."""
    plain = FileMetaDataset()
    plain._dict.update(meta._dict)
    return copy.deepcopy(plain, memo)


def _file_meta(
    original: Dataset, body: Dataset, policy: DeidPolicy, walk: Walk, *, transfer_syntax: str | None = None
) -> FileMetaDataset:
    """DEID.md 4.2 rule 1: a new File Meta Information group, named after the node, not the sender.

    `transfer_syntax`: the body's own when cleaning decoded its pixel data (written uncompressed).
    """
    source = getattr(original, "file_meta", None)
    meta = _FileMeta()
    _put_fixed(meta, 0x00020001, "OB", b"\x00\x01")  # FileMetaInformationVersion
    # The body's UIDs are already remapped (unless registered); the sender's meta values still need it.
    sop_class = str(body.get("SOPClassUID") or "")
    if not sop_class and source is not None and "MediaStorageSOPClassUID" in source:
        sop_class = walk.remap_uid(str(source.MediaStorageSOPClassUID))
    if sop_class:
        _put(meta, 0x00020002, "UI", UID(sop_class))  # MediaStorageSOPClassUID
    sop_instance = str(body.get("SOPInstanceUID") or "")
    if not sop_instance and source is not None and "MediaStorageSOPInstanceUID" in source:
        sop_instance = walk.remap_uid(str(source.MediaStorageSOPInstanceUID))
    if sop_instance:
        _put(meta, 0x00020003, "UI", UID(sop_instance))  # MediaStorageSOPInstanceUID
    if transfer_syntax is None:
        transfer_syntax = str(getattr(source, "TransferSyntaxUID", "") or "").rstrip("\0 ")
    if not transfer_syntax:
        if _looks_encapsulated(body):
            raise DeidRejected(REASON_MALFORMED)
        transfer_syntax = str(ExplicitVRLittleEndian)
    elif transfer_syntax not in REGISTERED_UIDS:
        # A private transfer syntax: we cannot tell what the pixel bytes hold.
        raise DeidRejected(REASON_MALFORMED)
    _put_fixed(meta, 0x00020010, "UI", UID(transfer_syntax))  # TransferSyntaxUID
    _put_fixed(meta, 0x00020012, "UI", UID(IMPLEMENTATION_CLASS_UID))  # ImplementationClassUID
    _put_fixed(meta, 0x00020013, "SH", f"DICOM_NODE_{_version()}"[:16])  # ImplementationVersionName
    _put_fixed(meta, 0x00020016, "AE", policy.node_ae_title)  # SourceApplicationEntityTitle
    for keyword, tag in (
        ("SendingApplicationEntityTitle", 0x00020017),
        ("ReceivingApplicationEntityTitle", 0x00020018),
    ):
        if source is not None and keyword in source:
            _put_fixed(meta, tag, "AE", policy.node_ae_title)
    return meta


def _looks_encapsulated(body: Dataset) -> bool:
    element = body.get((0x7FE0, 0x0010))
    value = getattr(element, "value", None)
    return isinstance(value, bytes) and value[:4] == b"\xfe\xff\x00\xe0"


_CREATOR: Final = re.compile(r"[A-Za-z][A-Za-z0-9 _.\-]{0,63}")


def _reportable_creators(creators: list[str], tokens: frozenset[str]) -> tuple[str, ...]:
    """Private creator names for the report, through a filter: vendor-like names only, nothing identifying."""
    reported: list[str] = []
    for creator in creators:
        folded = creator.casefold()
        safe = (
            _CREATOR.fullmatch(creator) is not None
            and re.search(r"\d{5,}", creator) is None
            and not any(token in folded for token in tokens)
        )
        name = creator if safe else "<redacted>"
        if name not in reported:
            reported.append(name)
    return tuple(reported)


def _unique(pseudonyms: list[Pseudonym]) -> tuple[Pseudonym, ...]:
    seen: set[Pseudonym] = set()
    unique: list[Pseudonym] = []
    for pseudonym in pseudonyms:
        if pseudonym not in seen:
            seen.add(pseudonym)
            unique.append(pseudonym)
    return tuple(unique)
