"""The element walk of de-identification (DEID.md 4.2 rules 2-5, 7): each element of each item, default deny.

Builds new data sets from a private copy of the input; an element is either transformed into a value that the
rules vouch for, or left out. An exception while transforming an element removes it (fail closed).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Final, TypeVar

from pydicom.datadict import dictionary_is_retired, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import AMBIGUOUS_VR, IS, DSdecimal, DSfloat

from dicom_node.dicom.deid_allowlists import (
    ALWAYS_REMOVED,
    BINARY_ALLOWLIST,
    CODE_MEANING,
    CODE_TEXT,
    CODE_VALUE,
    CODING_SCHEME_DESIGNATOR,
    COMPONENT_CODE_STRINGS,
    DUMMIED_CODE_STRINGS,
    EMPTIED_TEXT,
    FIXED_IDENTITY,
    IMAGE_TYPE_TERMS,
    REGISTERED_UIDS,
    REMOVED_CODE_STRINGS,
    REQUIRED,
    RETAINED_CHARACTERISTICS,
    RETIRED_ALLOWLIST,
    TEXT_ALLOWLIST,
    TOP_LEVEL_ONLY,
    attribute_type,
    shaped_code_meaning,
)
from dicom_node.dicom.deid_rules import Action, Option
from dicom_node.dicom.deid_table import PROFILE_TABLE
from dicom_node.dicom.deid_tokens import (
    MIN_PIXEL_TOKEN,
    bytes_contain,
    numbers_are_identifying,
    read_element,
    text_is_identifying,
    value_is_identifying,
)
from dicom_node.dicom.deid_values import (
    check_age,
    check_code_string,
    check_number_string,
    check_time,
    dummy_for_vr,
    shift_date,
    shift_datetime,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pydicom.tag import BaseTag

    from dicom_node.dicom.deid_keys import DeidKeys
    from dicom_node.dicom.deid_rules import PatternRow, ProfileRow, SafePrivate

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

TEXT_VRS: Final = frozenset({"AE", "LO", "LT", "SH", "ST", "UT", "UC", "UR"})
BINARY_VRS: Final = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW"})
NUMERIC_VRS: Final = frozenset(
    {"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "US or SS", "US or OW", "US or SS or OW"}
)
# Binary VRs (PS3.5 6.2) whose raw bytes are what writing their converted value gives, by value size; OB and
# OW must be of even length (pydicom pads an odd one when it encodes the value).
_RAW_VALUE_SIZES: Final = {
    "US": 2,
    "SS": 2,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "FD": 8,
    "SV": 8,
    "UV": 8,
    "AT": 4,
    "OB": 2,
    "OW": 2,
    "OF": 4,
    "OD": 8,
    "OL": 4,
    "OV": 8,
}
# Sequences deeper than this are removed: no real IOD nests so deep, and the writer must not recurse forever.
MAX_DEPTH: Final = 32
_REPEATING_GROUP_MASK: Final = 0xFF00
_REPEATING_GROUPS: Final = frozenset({0x5000, 0x6000})
_PIXEL_GROUP: Final = 0x7FE0
_CHECKED_STRING_VRS: Final = frozenset({"CS", "AS", "DS", "IS", "TM"})
CODING_SCHEME_VERSION: Final = 0x00080103
_SCHEME_VERSION: Final = re.compile(r"\d{1,8}(\.\d{1,4}){0,3}")
# Binary signal kept like pixel data (DEID.md 4.4): samples, not text, but searched for identifying strings.
WAVEFORM_DATA: Final = 0x54001010


@dataclass(slots=True)
class Walk:
    """One de-identification's state: what is known about the instance and what the walk has done so far."""

    options: frozenset[Option]
    keys: DeidKeys
    # None: dates are not shifted (no Retain Longitudinal option), so every date goes.
    shift_days: int | None
    # Identifying strings of this instance (casefolded); a kept value containing one is removed.
    tokens: frozenset[str]
    counts: Counter[str] = field(default_factory=Counter)
    uids: dict[str, str] = field(default_factory=dict)
    private_creators: list[str] = field(default_factory=list)
    # Set when an element the output cannot do without failed: the instance is rejected, not thinned out.
    malformed_required: bool = False
    # The instance's SOP Class UID: which IOD, so which attributes are Type 1 or 2 (deid_allowlists).
    sop_class: str = ""
    # Set when a kept binary signal (waveform samples) spells an identifying string: the instance is rejected.
    identifying_signal: bool = False
    # The policy's safe private elements by (group, creator, offset); empty: every private element goes.
    safe_private: Mapping[tuple[int, str, int], SafePrivate] = field(default_factory=dict)
    private_creators_kept: list[str] = field(default_factory=list)
    # The private blocks of the item being walked: creator element tag to creator, when a safe list exists.
    _blocks: dict[int, str] = field(default_factory=dict)
    # Whether an element of ambiguous VR ("US or SS", "OB or OW"...) was kept at any depth: pydicom's writer
    # must then correct it, so the output is not marked with its encoding (deid._mark_encoding).
    ambiguous: bool = False
    # Every sequence item the walk made (the body aside), for deid._mark_encoding.
    made: list[Dataset] = field(default_factory=list)
    # The output's byte order when it is written in explicit VR: kept binary elements read in explicit VR in
    # this byte order go out raw (_passes_raw); None: every element is converted.
    raw_little_endian: bool | None = None
    # The input data set's elements by tag (read only): where the raw form of a top-level element is found.
    raw_source: Mapping[BaseTag, object] = field(default_factory=dict)

    def item(self, source: Dataset, depth: int) -> Dataset:
        """A cleaned copy of one data set or sequence item."""
        cleaned = Dataset()
        code = self._code_meaning(source)
        outer_blocks = self._blocks
        self._blocks = self._private_blocks(source) if self.safe_private else {}
        kept_blocks: set[int] = set()
        # Kept text goes out raw only where its bytes cannot depend on the character set (ASCII in one that
        # encodes ASCII as itself) and the output is explicit VR, as for binary values (_passes_raw).
        text_raw = depth == 0 and self.raw_little_endian is not None and _ascii_charset(source)
        for tag in list(source.keys()):
            # The input's own element (never converted: the view is), for a top-level element kept raw.
            raw = self.raw_source.get(tag) if depth == 0 else None
            try:
                element = read_element(source, tag)
                new = self._element(element, depth, code)
                if (
                    new is not None
                    and raw is not None
                    and (
                        (new is element and self._passes_raw(raw))
                        or (text_raw and _same_text_bytes(raw, new))
                    )
                ):
                    new = raw  # type: ignore[assignment]
            except Exception:
                self._removed(int(tag), "failed")
                if depth == 0 and int(tag) in REQUIRED:
                    self.malformed_required = True
                new = self._typed_stand_in(int(tag))
            if new is None:
                continue
            if new.VR in AMBIGUOUS_VR:
                self.ambiguous = True
            if new.VR == "SQ":
                cleaned.add(new)  # pydicom passes the pixel representation down to the items
            else:
                # What Dataset.add does for a public element in a new data set, without the per-call checks.
                cleaned._dict[new.tag] = new
            if int(tag) >> 16 & 1:
                kept_blocks.add(_creator_tag(int(tag)))
        if self._blocks:
            self._creators(source, cleaned, kept_blocks)
        self._blocks = outer_blocks
        if depth:
            self.made.append(cleaned)
        return cleaned

    def _passes_raw(self, raw: object) -> bool:
        """Whether a kept, unchanged element goes to the output as the raw element it was read from.

        pydicom writes a raw element's bytes as they are (as the floor does), where a converted one is
        encoded again. Only binary values (numbers, tags, OB/OW...) never text, and only where writing the
        value again gives the same bytes: read in explicit VR with its VR named (no ambiguous VR to correct)
        in the output's byte order, a whole number of values long, public, not pixel data (which `dcmwrite`
        itself converts).
        """
        if self.raw_little_endian is None or not isinstance(raw, RawDataElement):
            return False
        size = _RAW_VALUE_SIZES.get(raw.VR) if raw.VR is not None else None
        return (
            size is not None
            and not raw.is_implicit_VR
            and raw.is_little_endian == self.raw_little_endian
            and raw.value is not None
            and raw.length == len(raw.value)
            and len(raw.value) % size == 0
            and not raw.tag >> 16 & 1
            and raw.tag >> 16 != _PIXEL_GROUP
        )

    def _private_blocks(self, source: Dataset) -> dict[int, str]:
        """Creator element tag to creator (trailing padding aside), for every private block of one item."""
        blocks: dict[int, str] = {}
        for tag in source._dict:
            if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
                try:
                    value = read_element(source, int(tag)).value
                except Exception:
                    continue
                if isinstance(value, str):
                    blocks[int(tag)] = value.rstrip(" \0")
        return blocks

    def _creators(self, source: Dataset, cleaned: Dataset, kept_blocks: set[int]) -> None:
        """Keep the creator element of each block an element was kept from (DEID.md 4.2 rule 2); note all."""
        for tag, creator in self._blocks.items():
            if tag in kept_blocks:
                element = read_element(source, tag)  # read once already: the value is the creator
                cleaned._dict[element.tag] = element
                self.private_creators_kept.append(creator.strip())
            else:
                self.private_creators.append(creator.strip())

    def remap_uid(self, value: str) -> str:
        """The pseudonym of one UID value; registered UIDs (SOP classes, transfer syntaxes) stay."""
        original = value.rstrip("\0 ")
        if not original or original in REGISTERED_UIDS:
            return original
        pseudo = self.uids.get(original)
        if pseudo is None:
            pseudo = self.keys.uid(original)
            self.uids[original] = pseudo
        return pseudo

    def _code_meaning(self, source: Dataset) -> str | None:
        """The dictionary meaning when this item is a coded entry from a standard scheme that we know."""
        if CODE_VALUE not in source._dict or CODING_SCHEME_DESIGNATOR not in source._dict:
            return None
        try:
            value = read_element(source, CODE_VALUE).value
            scheme = read_element(source, CODING_SCHEME_DESIGNATOR).value
        except Exception:
            return None
        if not isinstance(value, str) or not isinstance(scheme, str):
            return None
        meaning = shaped_code_meaning(scheme, value)
        if meaning == value.strip() and value_is_identifying(meaning, self.tokens):
            return None  # a code we only know by its shape must not be an ID of this instance (an MRN)
        return meaning

    def _removed(self, tag: int, reason: str) -> None:
        self.counts[reason] += 1
        if reason == "failed":
            # Tag, keyword and reason only: never a value.
            logger.warning(
                "deid removed an element it could not transform: tag %08X keyword %s",
                tag,
                keyword_for_tag(tag) or "-",
                extra={"event": "deid_element_failed", "reason": reason},
            )

    def _typed_stand_in(self, tag: int, reason: str | None = None) -> DataElement | None:
        """What replaces a value that must go (DEID.md 4.2 rule 3): a dummy for a Type 1 attribute of this
        IOD, an empty value for a Type 2 one, nothing (the element goes) for any other."""
        kind = attribute_type(tag, self.sop_class)
        if kind is None:
            if reason is not None:
                self.counts[reason] += 1
            return None
        vr = dictionary_VR(tag)
        if kind == 1:
            self.counts["D"] += 1
            return DataElement(tag, vr, dummy_for_vr(vr))
        self.counts["Z"] += 1
        return DataElement(tag, vr, empty_value_for_VR(vr))

    def _element(self, element: DataElement, depth: int, code_meaning: str | None) -> DataElement | None:
        tag = int(element.tag)
        group = tag >> 16
        # Rule 1 happens elsewhere: the file meta is rebuilt; command, meta and file-set groups in a body go
        # (file-set IDs are file names, and modalities name files after the patient).
        if group in (0x0000, 0x0002, 0x0004) or tag & 0xFFFF == 0:
            self.counts["X"] += 1
            return None
        if group & 1:
            return self._private(element)
        if group & _REPEATING_GROUP_MASK in _REPEATING_GROUPS:
            self.counts["X"] += 1
            return None
        if tag in ALWAYS_REMOVED or (depth > 0 and (group == _PIXEL_GROUP or tag in TOP_LEVEL_ONLY)):
            self.counts["X"] += 1
            return None
        if depth == 0 and tag in FIXED_IDENTITY:
            return None
        if _row_for(tag) is not None:
            return self._apply(element, action_for(tag, self.options), depth)
        return self._unlisted(element, depth, code_meaning)

    def _private(self, element: DataElement) -> DataElement | None:
        """Rule 2: a private element stays only when the safe list names its block's creator and offset and
        its value is numbers of a declared VR within the declared VM; creators are noted for the report."""
        tag = int(element.tag)
        low = tag & 0xFFFF
        if 0x0010 <= low <= 0x00FF:
            # A creator: kept with its block (see item); without a safe list, noted as removed here.
            if not self._blocks and isinstance(element.value, str):
                self.private_creators.append(element.value.strip())
            self.counts["private_removed"] += 1
            return None
        creator = self._blocks.get(_creator_tag(tag)) if low >= 0x1000 else None
        entry = self.safe_private.get((tag >> 16, creator, low & 0xFF)) if creator is not None else None
        if entry is None or element.VR not in entry.vrs or not self._safe_numbers(element, entry.max_vm):
            self.counts["private_removed"] += 1
            return None
        self.counts["private_kept"] += 1
        return element

    def _safe_numbers(self, element: DataElement, max_vm: int) -> bool:
        """Whether a private value is 1 to `max_vm` numbers of its VR, none spelling an identifying string."""
        value = element.value
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        if not 1 <= len(values) <= max_vm:
            return False
        vr = element.VR
        if vr in ("DS", "IS"):
            try:
                self._mapped(element, lambda text: check_number_string(text, vr))
            except ValueError:
                return False
            return all(str(item).strip() for item in values) and not text_is_identifying(element, self.tokens)
        if not all(isinstance(item, int | float) and not isinstance(item, bool) for item in values):
            return False
        return not numbers_are_identifying(element, self.tokens)

    def _apply(self, element: DataElement, action: Action, depth: int) -> DataElement | None:
        """Rule 3: one Table E.1-1 action on one element."""
        vr = element.VR
        if action is Action.CLEAN:
            cleaned = self._clean(element)
            if cleaned is not None:
                return cleaned
            # A clean we do not implement for this VR falls back to the row's Basic action.
            row = _row_for(int(element.tag))
            action = row.basic if row is not None else Action.REMOVE
        if action in (
            Action.REMOVE_OR_ZERO,
            Action.REMOVE_OR_ZERO_OR_DUMMY,
            Action.ZERO_OR_DUMMY,
            Action.REMOVE_OR_DUMMY,
        ):
            # Resolved against the attribute's Type in this IOD (our short list): D for Type 1; otherwise Z
            # satisfies Type 2 and leaks nothing (DEID.md 4.2 rule 3, "Z by default"), and X/D removes.
            if attribute_type(int(element.tag), self.sop_class) == 1:
                action = Action.DUMMY
            elif action is Action.REMOVE_OR_DUMMY:
                action = Action.REMOVE
            else:
                action = Action.ZERO
        if action is Action.REMOVE:
            self.counts["X"] += 1
            return None
        if action is Action.ZERO:
            self.counts["Z"] += 1
            return DataElement(element.tag, vr, empty_value_for_VR(vr))
        if action is Action.DUMMY:
            return self._dummy(element)
        if action is Action.UID:
            return self._uid(element)
        if action is Action.KEEP or action is Action.REMOVE_OR_ZERO_OR_REMAP:
            self.counts["K"] += 1
            if vr == "SQ":
                return self._sequence(element, depth)
            return self._checked(element)
        self.counts["X"] += 1
        return None

    def _clean(self, element: DataElement) -> DataElement | None:
        """C under Retain Longitudinal Modified Dates: dates shifted, times kept; None elsewhere."""
        vr = element.VR
        if vr in ("DA", "DT"):
            return self._dates(element)
        if vr == "TM":
            self.counts["C"] += 1
            return self._mapped(element, check_time)
        return None

    def _dummy(self, element: DataElement) -> DataElement | None:
        vr = element.VR
        self.counts["D"] += 1
        if vr == "SQ":
            # A non-empty sequence without content: one empty item (PS3.15 E.1.1, D for a sequence).
            return DataElement(element.tag, vr, Sequence([Dataset()]))
        if vr == "UI":
            return self._uid(element)
        if vr in ("DA", "DT") and self.shift_days is not None and element.value:
            try:
                return self._dates(element)
            except ValueError:
                pass
        return DataElement(element.tag, vr, dummy_for_vr(vr))

    def _uid(self, element: DataElement) -> DataElement:
        self.counts["U"] += 1
        return self._mapped(element, self.remap_uid)

    def _dates(self, element: DataElement) -> DataElement | None:
        days = self.shift_days
        if days is None:
            self.counts["X"] += 1
            return None
        shift = shift_date if element.VR == "DA" else shift_datetime
        self.counts["shift"] += 1
        return self._mapped(element, lambda value: shift(value, days) if value.strip() else "")

    def _mapped(self, element: DataElement, transform: Callable[[str], str]) -> DataElement:
        """The element with `transform` applied to each of its string values (raises: the element goes)."""
        value = element.value
        if value is None or value == "":
            return DataElement(element.tag, element.VR, empty_value_for_VR(element.VR))
        if isinstance(value, MultiValue | list | tuple):
            texts = [_as_text(item) for item in value]
            mapped = [transform(text) for text in texts]
            if mapped == texts and isinstance(value, MultiValue) and not element.is_undefined_length:
                # Nothing changed: the element is written exactly as a new one with these values would be.
                return element
            return DataElement(element.tag, element.VR, mapped)
        text = _as_text(value)
        single = transform(text)
        if single == text and isinstance(value, str) and not element.is_undefined_length:
            return element
        return DataElement(element.tag, element.VR, single)

    def _sequence(self, element: DataElement, depth: int) -> DataElement | None:
        if depth + 1 > MAX_DEPTH:
            self.counts["X"] += 1
            return None
        items = element.value if element.value is not None else []
        cleaned = Sequence([self.item(item, depth + 1) for item in items if isinstance(item, Dataset)])
        return DataElement(element.tag, "SQ", cleaned)

    def _checked(self, element: DataElement) -> DataElement | None:
        """A kept value, checked against its VR's form and the instance's identifying strings."""
        vr = element.VR
        if vr == "CS" and int(element.tag) in COMPONENT_CODE_STRINGS:
            return self._components(element)
        if vr == "CS":
            element = self._mapped(element, check_code_string)
        elif vr == "AS":
            element = self._mapped(element, check_age)
        elif vr in ("DS", "IS"):
            element = self._mapped(element, lambda value: check_number_string(value, vr))
        elif vr == "TM":
            element = self._mapped(element, check_time)
        elif vr in ("DA", "DT"):
            return self._dates(element)
        elif vr == "UI":
            return self._uid(element)
        elif vr == "PN":
            return DataElement(element.tag, vr, dummy_for_vr(vr))
        elif vr in BINARY_VRS and int(element.tag) == WAVEFORM_DATA:
            value = element.value
            if not isinstance(value, bytes | bytearray) or bytes_contain(
                bytes(value), self.tokens, MIN_PIXEL_TOKEN
            ):
                self.identifying_signal = True
                self.counts["identifying_removed"] += 1
                return None
            return element
        elif vr in BINARY_VRS and int(element.tag) not in BINARY_ALLOWLIST:
            self.counts["binary_removed"] += 1
            return None
        if (vr in TEXT_VRS or vr in _CHECKED_STRING_VRS) and text_is_identifying(element, self.tokens):
            return self._typed_stand_in(int(element.tag), "identifying_removed")
        if vr in NUMERIC_VRS and numbers_are_identifying(element, self.tokens):
            self.counts["identifying_removed"] += 1
            return None
        return element

    def _components(self, element: DataElement) -> DataElement:
        """A list of defined terms (Image Type), value by value: a defined term stays; any other value stays
        only when it is a clean code string holding no identifying string, else that value is emptied."""
        value = element.value
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        cleaned: list[str] = []
        for item in values:
            text = _as_text(item).strip() if item is not None else ""
            if text and text not in IMAGE_TYPE_TERMS:
                try:
                    text = check_code_string(text)
                except ValueError:
                    text = ""
                if value_is_identifying(text, self.tokens):
                    text = ""
                if not text:
                    self.counts["identifying_removed"] += 1
            cleaned.append(text)
        if cleaned == [_as_text(item).strip() if item is not None else "" for item in values] and (
            not element.is_undefined_length
        ):
            return element
        return DataElement(element.tag, element.VR, cleaned if len(cleaned) != 1 else cleaned[0])

    def _unlisted(self, element: DataElement, depth: int, code_meaning: str | None) -> DataElement | None:
        """Rules 4 and 5: a standard attribute the table does not name, judged by its VR and our lists."""
        tag = int(element.tag)
        known, retired = _dictionary_entry(tag)
        if not known:
            self.counts["unknown_removed"] += 1
            return None
        if retired and tag not in RETIRED_ALLOWLIST:
            self.counts["retired_removed"] += 1
            return None
        vr = element.VR
        if vr == "SQ":
            return self._sequence(element, depth)
        if tag in CODE_TEXT:
            return self._code_text(element, code_meaning)
        if vr in TEXT_VRS:
            if tag in EMPTIED_TEXT:
                self.counts["Z"] += 1
                return DataElement(element.tag, vr, empty_value_for_VR(vr))
            if tag not in TEXT_ALLOWLIST:
                return self._typed_stand_in(tag, "text_removed")
            return self._checked(element)
        if vr == "PN" or tag in DUMMIED_CODE_STRINGS:
            self.counts["D"] += 1
            return DataElement(element.tag, vr, dummy_for_vr(vr))
        if tag in REMOVED_CODE_STRINGS:
            self.counts["X"] += 1
            return None
        return self._checked(element)

    def _code_text(self, element: DataElement, code_meaning: str | None) -> DataElement | None:
        """A coded entry keeps value and scheme only when it is a standard code we know; meaning is ours."""
        tag = int(element.tag)
        if code_meaning is not None and tag == CODING_SCHEME_VERSION:
            # Type 1C for schemes with versions (SCPECG "1.3"); digits and dots only, nothing to hide text in.
            value = element.value
            if (
                isinstance(value, str)
                and _SCHEME_VERSION.fullmatch(value.strip()) is not None
                and not value_is_identifying(value, self.tokens)
            ):
                return element
        if code_meaning is None or tag not in (CODE_VALUE, CODING_SCHEME_DESIGNATOR, CODE_MEANING):
            self.counts["code_text_removed"] += 1
            return None
        if tag == CODE_MEANING:
            self.counts["C"] += 1
            return DataElement(element.tag, element.VR, code_meaning)
        return element


# Per-tag answers that depend on nothing but the tag (and the policy's options): looked up once per process.
@lru_cache(maxsize=8192)
def _row_for(tag: int) -> ProfileRow | PatternRow | None:
    return PROFILE_TABLE.row_for(tag)


@lru_cache(maxsize=8192)
def action_for(tag: int, options: frozenset[Option]) -> Action:
    """The row's action with the policy's options in force, the first changing option winning."""
    row = _row_for(tag)
    if row is None:
        raise KeyError(tag)
    changes = row.options
    for option in Option:
        if option not in options or option not in changes:
            continue
        if option is Option.RETAIN_PATIENT_CHARACTERISTICS and tag not in RETAINED_CHARACTERISTICS:
            continue
        return changes[option]
    return row.basic


@lru_cache(maxsize=8192)
def _dictionary_entry(tag: int) -> tuple[bool, bool]:
    """Whether pydicom's dictionary knows `tag`, and whether it marks it retired."""
    if not keyword_for_tag(tag):
        return False, False
    return True, bool(dictionary_is_retired(tag))


def _creator_tag(tag: int) -> int:
    """The tag of the creator element that reserves the block of private element `tag` (PS3.5 7.8.1)."""
    return (tag & 0xFFFF0000) | (tag >> 8 & 0xFF)


def private_view(ds: Dataset) -> Dataset:
    """A copy of `ds` to read from without changing it, at a fraction of a deep copy's cost.

    Reading a pydicom element converts it and stores the result in its data set, so nothing may be read
    from the caller's data set itself. The view has its own containers at every depth (element dicts,
    sequences, items, multi-values, converted elements) and shares only what cannot change: raw elements,
    which it converts into its own dicts when read, and immutable values (PixelData bytes are never copied).
    """
    view = _shallow(ds)
    # Caches and back references of the original; a view starts without them.
    view.__dict__["_private_blocks"] = {}
    view.__dict__["_pixel_array"] = None
    view.__dict__["_pixel_id"] = {}
    if "_pixel_array_opts" in ds.__dict__:
        view.__dict__["_pixel_array_opts"] = dict(ds.__dict__["_pixel_array_opts"])
    charset = ds.__dict__.get("_read_charset")
    if isinstance(charset, list):
        view.__dict__["_read_charset"] = list(charset)
    meta = ds.__dict__.get("file_meta")
    if isinstance(meta, Dataset):
        view.__dict__["file_meta"] = private_view(meta)
    view.__dict__["_dict"] = {
        tag: _private_element(element) if isinstance(element, DataElement) else element
        for tag, element in ds._dict.items()
    }
    return view


# Python codecs (pydicom's names for Specific Character Set values) that encode ASCII text as ASCII bytes.
_ASCII_CODECS: Final = frozenset({"iso8859", "latin_1", "UTF8", "utf_8"})
# Text VRs whose writer (pydicom.filewriter.writers) puts a str value out as its characters, values joined
# by a backslash, padded to even length: with a NUL for UI, a space for the others.
_STRING_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
_CHARSET_TEXT_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT"})
_NUMBER_STRING_VRS: Final = frozenset({"DS", "IS"})
_RAW_TEXT_VRS: Final = _STRING_VRS | _CHARSET_TEXT_VRS | _NUMBER_STRING_VRS


def _ascii_charset(source: Dataset) -> bool:
    """Whether the data set's text is encoded with a character set that writes ASCII text as ASCII."""
    try:
        charset = source._character_set
    except Exception:
        return False
    codecs = [charset] if isinstance(charset, str) else list(charset)
    return all(codec in _ASCII_CODECS for codec in codecs)


def _same_text_bytes(raw: object, new: DataElement | RawDataElement) -> bool:
    """Whether pydicom writes the kept text element `new` as exactly the bytes of the input's `raw`.

    Then the output holds the raw element, which the writer copies as it is (as the floor does), instead of
    encoding the value again. Only for a public, top-level element read in explicit VR with its own length,
    of the same tag and VR, whose value is ASCII text written the way `_text_bytes` spells out.
    """
    if not isinstance(raw, RawDataElement) or not isinstance(new, DataElement):
        return False
    vr = raw.VR
    if vr not in _RAW_TEXT_VRS or vr != new.VR:
        return False
    value = raw.value
    if (
        raw.is_implicit_VR
        or not isinstance(value, bytes)
        or raw.length != len(value)
        or new.is_undefined_length
        or raw.tag >> 16 & 1
        or not value.isascii()
    ):
        return False
    encoded = _text_bytes(new, vr)
    return encoded is not None and encoded == value


def _text_bytes(element: DataElement, vr: str) -> bytes | None:
    """What pydicom's writer gives for the value of `element` (VR `vr`) when it is ASCII text; None when
    unsure (any other value type, non-ASCII text): the element is then written as pydicom encodes it."""
    value = element.value
    numeric = vr in _NUMBER_STRING_VRS
    if value is None:
        return b""
    if isinstance(value, MultiValue | list | tuple):
        texts: list[str] = []
        for item in value:
            text = _item_text(item, numeric=numeric)
            if text is None:
                return None
            texts.append(text)
        joined = "\\".join(texts)
    else:
        single = _item_text(value, numeric=numeric)
        if single is None:
            return None
        joined = single
    if not joined.isascii():
        return None
    if len(joined) % 2:
        joined += "\0" if vr == "UI" else " "
    return joined.encode("ascii")


def _item_text(item: object, *, numeric: bool) -> str | None:
    """One value as pydicom's writer spells it: a DS or IS by its original string, a text value as itself."""
    if numeric:
        original = getattr(item, "original_string", None)
        if original is not None:
            return original if isinstance(original, str) else None
        return str(item) if isinstance(item, IS | DSfloat | DSdecimal | str) else None
    return item if isinstance(item, str) else None


def _private_element(element: DataElement) -> DataElement:
    """A copy of an already converted element with its own mutable parts."""
    copied = _shallow(element)
    value = element.__dict__.get("_value")
    if isinstance(value, Sequence):
        items = _shallow(value)
        items.__dict__["_list"] = [
            private_view(item) if isinstance(item, Dataset) else item for item in value
        ]
        copied.__dict__["_value"] = items
    elif isinstance(value, MultiValue):
        values = _shallow(value)
        values.__dict__["_list"] = list(value)
        copied.__dict__["_value"] = values
    elif isinstance(value, list | bytearray):
        copied.__dict__["_value"] = value.copy()
    return copied


def _shallow(source: _T) -> _T:
    """A new object of the same class sharing every attribute of `source` (no __init__, no __setattr__)."""
    copied = type(source).__new__(type(source))
    copied.__dict__.update(source.__dict__)
    return copied


def _as_text(value: object) -> str:
    """A value's DICOM string form; bytes (text pydicom could not decode) are refused."""
    if isinstance(value, bytes | bytearray):
        raise ValueError("undecoded text")
    return str(value)
