"""The shape of the de-identification rule table (PS3.15 Annex E, Table E.1-1) and its lookups.

Hand-written; the rows themselves are generated into `deid_table.py`. Rows are immutable, and a table refuses
two rows for one tag, so "first match wins" never depends on the order rows were written in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


class Action(StrEnum):
    """Action codes of PS3.15 Table E.1-1; compound codes depend on the attribute's Type in the IOD."""

    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"
    ZERO_OR_DUMMY = "Z/D"
    REMOVE_OR_ZERO = "X/Z"
    REMOVE_OR_DUMMY = "X/D"
    REMOVE_OR_ZERO_OR_DUMMY = "X/Z/D"
    # Only Referenced Image Sequence (0008,1140) and Source Image Sequence (0008,2112).
    REMOVE_OR_ZERO_OR_REMAP = "X/Z/U*"


class Option(StrEnum):
    """The ten option columns of Table E.1-1, in the standard's order; comments give the CID 7050 code."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"  # 113111
    RETAIN_UIDS = "retain_uids"  # 113110
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"  # 113109
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"  # 113112
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"  # 113108
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"  # 113106
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"  # 113107
    CLEAN_DESCRIPTORS = "clean_descriptors"  # 113105
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"  # 113104
    CLEAN_GRAPHICS = "clean_graphics"  # 113103


@dataclass(frozen=True, slots=True)
class _Row:
    """What every row of Table E.1-1 says, whether it names one tag or a pattern of tags."""

    name: str
    basic: Action
    # Only the options that change this row; an option not listed leaves the Basic action in force.
    options: Mapping[Option, Action] = field(hash=False)
    # The table's "In Std. Comp. IOD" column; None where the source does not give it (2026c top-up rows).
    in_std_comp_iod: bool | None
    # Edition of the source the row came from; rows added by a later edition carry no option columns.
    edition: str

    def __post_init__(self) -> None:
        # A read-only copy, so no caller can change the rules for everyone else at run time.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def action_under(self, option: Option) -> Action:
        """This row's action while `option` is in force."""
        return self.options.get(option, self.basic)


@dataclass(frozen=True, slots=True)
class ProfileRow(_Row):
    """A row for one standard attribute, `tag` as (group << 16) | element."""

    tag: int

    def __post_init__(self) -> None:
        _Row.__post_init__(self)
        if not 0 <= self.tag <= 0xFFFFFFFF:
            raise ValueError(f"tag out of range: {self.tag:#x}")


@dataclass(frozen=True, slots=True)
class PatternRow(_Row):
    """A row for a family of tags, as the standard writes it (`pattern`), matched as tag & mask == value."""

    pattern: str
    mask: int
    value: int

    def __post_init__(self) -> None:
        _Row.__post_init__(self)
        if self.value & ~self.mask:
            raise ValueError(f"pattern {self.pattern}: value has bits outside its mask")

    def matches(self, tag: int) -> bool:
        """Whether `tag` belongs to this row's family."""
        return tag & self.mask == self.value


@dataclass(frozen=True, slots=True)
class ProfileTable:
    """Table E.1-1 as rows by tag plus pattern rows; a row for an exact tag wins over any pattern."""

    rows: tuple[ProfileRow, ...]
    patterns: tuple[PatternRow, ...]
    _by_tag: Mapping[int, ProfileRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_tag: dict[int, ProfileRow] = {}
        for row in self.rows:
            if row.tag in by_tag:
                raise ValueError(f"two rows for tag {row.tag:08X}")
            by_tag[row.tag] = row
        object.__setattr__(self, "_by_tag", MappingProxyType(by_tag))

    def row_for(self, tag: int) -> ProfileRow | PatternRow | None:
        """The row that governs `tag`: its exact row, else the first pattern that matches, else None."""
        row = self._by_tag.get(tag)
        if row is not None:
            return row
        return self._pattern_for(tag)

    def basic_action(self, tag: int) -> Action | None:
        """The Basic Profile action for `tag`; None where the table has no row (DEID.md 4.2 steps 4, 5)."""
        row = self.row_for(tag)
        return None if row is None else row.basic

    def pattern_action(self, tag: int) -> Action | None:
        """The Basic Profile action of the pattern row matching `tag`, ignoring exact rows."""
        row = self._pattern_for(tag)
        return None if row is None else row.basic

    def _pattern_for(self, tag: int) -> PatternRow | None:
        for pattern in self.patterns:
            if pattern.matches(tag):
                return pattern
        return None


# DEID.md 4.2 rule 2: the VRs a safe-listed private element may have: numbers only, never text, dates or UIDs.
SAFE_PRIVATE_VRS: frozenset[str] = frozenset({"DS", "FD", "FL", "IS", "SL", "SS", "UL", "US"})


@dataclass(frozen=True, slots=True)
class SafePrivate:
    """One private element a model declares safe: its block's creator (as stored, padding aside), the group,
    the element's offset in the block (0x00 to 0xFF), the VRs its value may have and its largest VM.

    Blocks are matched by creator, never by absolute tag: a creator reserved at (0019,0011) owns 0019,11xx.
    """

    group: int
    creator: str
    offset: int
    vrs: frozenset[str]
    max_vm: int = 1

    def __post_init__(self) -> None:
        if not (0x0009 <= self.group <= 0xFFFF and self.group & 1):
            raise ValueError("a safe private element needs an odd group above 0x0007")
        if not self.creator.strip() or len(self.creator) > 64 or self.creator != self.creator.strip():
            raise ValueError("a private creator is 1 to 64 characters without surrounding spaces")
        if not 0x00 <= self.offset <= 0xFF:
            raise ValueError("the element offset in a private block is 0x00 to 0xFF")
        if not self.vrs or not set(self.vrs) <= SAFE_PRIVATE_VRS:
            raise ValueError(f"safe private VRs must be some of {sorted(SAFE_PRIVATE_VRS)}")
        if not 1 <= self.max_vm <= 1024:
            raise ValueError("max_vm must be between 1 and 1024")
        object.__setattr__(self, "vrs", frozenset(self.vrs))

    @property
    def key(self) -> tuple[int, str, int]:
        return self.group, self.creator, self.offset
