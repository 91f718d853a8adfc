"""The element walk of de-identification (DEID.md 4.2 rules 2-5, 7): each element of each item, default deny.

Builds new data sets from a private copy of the input; an element is either transformed into a value that the
rules vouch for, or left out. An exception while transforming an element removes it (fail closed).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Final, TypeVar

from pydicom.datadict import dictionary_is_retired, keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_node.dicom.deid_allowlists import (
    ALWAYS_REMOVED,
    BINARY_ALLOWLIST,
    CODE_MEANING,
    CODE_TEXT,
    CODE_VALUE,
    CODING_SCHEME_DESIGNATOR,
    DUMMIED_CODE_STRINGS,
    EMPTIED_TEXT,
    FIXED_IDENTITY,
    REGISTERED_UIDS,
    REMOVED_CODE_STRINGS,
    REQUIRED,
    RETAINED_CHARACTERISTICS,
    RETIRED_ALLOWLIST,
    TEXT_ALLOWLIST,
    TOP_LEVEL_ONLY,
    standard_code_meaning,
)
from dicom_node.dicom.deid_rules import Action, Option
from dicom_node.dicom.deid_table import PROFILE_TABLE
from dicom_node.dicom.deid_tokens import numbers_are_identifying, read_element, text_is_identifying
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
    from collections.abc import Callable

    from dicom_node.dicom.deid_keys import DeidKeys
    from dicom_node.dicom.deid_rules import PatternRow, ProfileRow

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

TEXT_VRS: Final = frozenset({"AE", "LO", "LT", "SH", "ST", "UT", "UC", "UR"})
BINARY_VRS: Final = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW"})
NUMERIC_VRS: Final = frozenset(
    {"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "US or SS", "US or OW", "US or SS or OW"}
)
# Sequences deeper than this are removed: no real IOD nests so deep, and the writer must not recurse forever.
MAX_DEPTH: Final = 32
_REPEATING_GROUP_MASK: Final = 0xFF00
_REPEATING_GROUPS: Final = frozenset({0x5000, 0x6000})
_PIXEL_GROUP: Final = 0x7FE0
_CHECKED_STRING_VRS: Final = frozenset({"CS", "AS", "DS", "IS", "TM"})


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

    def item(self, source: Dataset, depth: int) -> Dataset:
        """A cleaned copy of one data set or sequence item."""
        cleaned = Dataset()
        code = self._code_meaning(source)
        for tag in list(source.keys()):
            try:
                element = read_element(source, tag)
                new = self._element(element, depth, code)
            except Exception:
                self._removed(int(tag), "failed")
                if depth == 0 and int(tag) in REQUIRED:
                    self.malformed_required = True
                continue
            if new is None:
                continue
            if new.VR == "SQ":
                cleaned.add(new)  # pydicom passes the pixel representation down to the items
            else:
                # What Dataset.add does for a public element in a new data set, without the per-call checks.
                cleaned._dict[new.tag] = new
        return cleaned

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
        return standard_code_meaning(scheme, value)

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

    def _element(self, element: DataElement, depth: int, code_meaning: str | None) -> DataElement | None:
        tag = int(element.tag)
        group = tag >> 16
        # Rule 1 happens elsewhere: the file meta is rebuilt; command, meta and file-set groups in a body go
        # (file-set IDs are file names, and modalities name files after the patient).
        if group in (0x0000, 0x0002, 0x0004) or tag & 0xFFFF == 0:
            self.counts["X"] += 1
            return None
        if group & 1:
            self._private(element)
            return None
        if group & _REPEATING_GROUP_MASK in _REPEATING_GROUPS:
            self.counts["X"] += 1
            return None
        if tag in ALWAYS_REMOVED or (depth > 0 and (group == _PIXEL_GROUP or tag in TOP_LEVEL_ONLY)):
            self.counts["X"] += 1
            return None
        if depth == 0 and tag in FIXED_IDENTITY:
            return None
        if _row_for(tag) is not None:
            return self._apply(element, _action_for(tag, self.options), depth)
        return self._unlisted(element, depth, code_meaning)

    def _private(self, element: DataElement) -> None:
        """Rule 2 without a safe list: every private element goes; creators are noted for the report."""
        if 0x0010 <= element.tag.element <= 0x00FF and isinstance(element.value, str):
            self.private_creators.append(element.value.strip())
        self.counts["private_removed"] += 1

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
        ):
            # No module tables: Z satisfies Type 2 and leaks nothing (DEID.md 4.2 rule 3, "Z by default").
            action = Action.ZERO
        elif action is Action.REMOVE_OR_DUMMY:
            action = Action.REMOVE
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
        elif vr in BINARY_VRS and int(element.tag) not in BINARY_ALLOWLIST:
            self.counts["binary_removed"] += 1
            return None
        if (vr in TEXT_VRS or vr in _CHECKED_STRING_VRS) and text_is_identifying(element, self.tokens):
            self.counts["identifying_removed"] += 1
            return None
        if vr in NUMERIC_VRS and numbers_are_identifying(element, self.tokens):
            self.counts["identifying_removed"] += 1
            return None
        return element

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
                self.counts["text_removed"] += 1
                return None
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
def _action_for(tag: int, options: frozenset[Option]) -> Action:
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
