"""De-identification of one instance (DEID.md 4.2 to 4.6): a pure function from a data set to a new one.

The input is never changed; the output carries keyed pseudonyms only and records what was done (PS3.15
E.1.1, PS3.3 C.12.1.1.7); an instance we cannot vouch for is rejected with a stable reason code.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
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
from dicom_node.dicom.deid_tokens import identifying_tokens
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
    _record(body, options, keys, walk, pixels_cleaned=cleaned is not None)
    body.file_meta = _file_meta(
        work, body, policy, walk, transfer_syntax=cleaned.transfer_syntax if cleaned is not None else None
    )
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
    if keyword not in ds:
        return None
    try:
        value = ds[keyword].value
    except Exception as exc:
        raise DeidRejected(REASON_MALFORMED) from exc
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray) or not isinstance(value, str):
        raise DeidRejected(REASON_MALFORMED)
    return value.strip()


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
    _put(body, 0x00100021, "LO", policy.default_issuer)  # IssuerOfPatientID
    _put(body, 0x00100030, "DA", "")  # PatientBirthDate
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


def _record(
    body: Dataset, options: tuple[Option, ...], keys: DeidKeys, walk: Walk, *, pixels_cleaned: bool = False
) -> None:
    """PS3.15 E.1.1 and DEID.md 4.6: what was done, on the instance itself."""
    _put(body, 0x00120062, "CS", "YES")  # PatientIdentityRemoved
    _put(body, 0x00120063, "LO", _method(options, keys.key_id, pixels_cleaned))  # DeidentificationMethod
    body.DeidentificationMethodCodeSequence = Sequence(
        [_code_item(codes.cid7050.BasicApplicationConfidentialityProfile)]
        + [_code_item(code) for code in _option_codes(options, pixels_cleaned=pixels_cleaned)]
    )
    if pixels_cleaned:
        # PS3.3 C.7.6.1.1.4: cleaned pixels carry no burned-in text; a new element, the input's is untouched.
        body["BurnedInAnnotation"] = DataElement("BurnedInAnnotation", "CS", "NO")
    shifted = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options
    # LongitudinalTemporalInformationModified
    _put(body, 0x00280303, "CS", "MODIFIED" if shifted else "REMOVED")
    equipment = Dataset()
    _put(equipment, 0x00080070, "LO", "dicom-node")  # Manufacturer
    _put(equipment, 0x00181020, "LO", _version())  # SoftwareVersions
    equipment.PurposeOfReferenceCodeSequence = Sequence([_code_item(codes.DCM.DeIdentifyingEquipment)])
    contributed_at = _contribution_datetime(body) if shifted else None
    if contributed_at is not None:
        equipment.ContributionDateTime = contributed_at
    existing = list(body.ContributingEquipmentSequence) if "ContributingEquipmentSequence" in body else []
    body.ContributingEquipmentSequence = Sequence([*existing, equipment])


def _contribution_datetime(body: Dataset) -> str | None:
    """The shifted study date and time: a stable stand-in for "now" that keeps the output deterministic."""
    study_date = str(body.get("StudyDate") or "").strip()
    if re.fullmatch(r"\d{8}", study_date) is None:
        return None
    study_time = str(body.get("StudyTime") or "").strip()
    if re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", study_time) is None:
        study_time = ""
    return study_date + study_time


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "").rstrip("\0 ")


def _file_meta(
    original: Dataset, body: Dataset, policy: DeidPolicy, walk: Walk, *, transfer_syntax: str | None = None
) -> FileMetaDataset:
    """DEID.md 4.2 rule 1: a new File Meta Information group, named after the node, not the sender.

    `transfer_syntax`: the body's own when cleaning decoded its pixel data (written uncompressed).
    """
    source = getattr(original, "file_meta", None)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    # The body's UIDs are already remapped (unless registered); the sender's meta values still need it.
    sop_class = str(body.get("SOPClassUID") or "")
    if not sop_class and source is not None and "MediaStorageSOPClassUID" in source:
        sop_class = walk.remap_uid(str(source.MediaStorageSOPClassUID))
    if sop_class:
        meta.MediaStorageSOPClassUID = UID(sop_class)
    sop_instance = str(body.get("SOPInstanceUID") or "")
    if not sop_instance and source is not None and "MediaStorageSOPInstanceUID" in source:
        sop_instance = walk.remap_uid(str(source.MediaStorageSOPInstanceUID))
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    if transfer_syntax is None:
        transfer_syntax = str(getattr(source, "TransferSyntaxUID", "") or "").rstrip("\0 ")
    if not transfer_syntax:
        if _looks_encapsulated(body):
            raise DeidRejected(REASON_MALFORMED)
        transfer_syntax = str(ExplicitVRLittleEndian)
    elif transfer_syntax not in REGISTERED_UIDS:
        # A private transfer syntax: we cannot tell what the pixel bytes hold.
        raise DeidRejected(REASON_MALFORMED)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = f"DICOM_NODE_{_version()}"[:16]
    meta.SourceApplicationEntityTitle = policy.node_ae_title
    for keyword in ("SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle"):
        if source is not None and keyword in source:
            setattr(meta, keyword, policy.node_ae_title)
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
