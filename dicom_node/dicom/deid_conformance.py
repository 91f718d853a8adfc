"""PS3.2 Table N.11-6, "De-identified Elements and Actions", generated from the engine's own table.

The conformance statement a hospital's privacy office asks for: for every row of PS3.15 Table E.1-1, the
action the node takes with the options it claims in force, and where the engine is stricter than the row
(everything the table does not name is removed unless kept on purpose). Generated, so it cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from dicom_node.dicom.deid import CLAIMED_OPTIONS, OPTION_CODES
from dicom_node.dicom.deid_rules import Option
from dicom_node.dicom.deid_table import BASE_EDITION, PATTERN_ROWS, PROFILE_ROWS, TOPUP_EDITION
from dicom_node.dicom.deid_walk import action_for

_HOW = {
    "X": "removed",
    "Z": "emptied",
    "D": "replaced by a dummy value",
    "K": "kept",
    "C": "cleaned (dates shifted by the patient's keyed offset; text removed)",
    "U": "replaced by a keyed 2.25 UID, consistently within and across instances",
    "Z/D": "emptied, or a dummy where the attribute is Type 1",
    "X/Z": "removed, or emptied where the attribute is Type 2",
    "X/D": "removed, or a dummy where the attribute is Type 1",
    "X/Z/D": "removed, emptied (Type 2) or a dummy (Type 1)",
    "X/Z/U*": "kept and walked; UIDs inside remapped",
}


# Rule 6 of DEID.md 4.2: identity values the engine writes after the walk, whatever the row says.
FIXED: Final = {
    0x00100010: "replaced: ANON^ + the keyed patient pseudonym",
    0x00100020: "replaced: the keyed patient pseudonym (P + 15 base32 characters)",
    0x00100021: "replaced: the node's issuer",
    0x00100030: "emptied",
    0x00080050: "replaced: a keyed 16-character pseudonym (empty stays empty)",
    0x00200010: "replaced: a keyed 8-character pseudonym (empty stays empty)",
    0x00101010: "kept, capped at 90 years (computed from the original dates when absent)",
}


def conformance_lines() -> Iterator[str]:
    """The table as Markdown, one line per row, in tag order."""
    options = ", ".join(
        f"{OPTION_CODES[o].meaning} ({OPTION_CODES[o].value})" for o in Option if o in CLAIMED_OPTIONS
    )
    yield "# De-identified Elements and Actions (PS3.2 Table N.11-6)"
    yield ""
    yield f"PS3.15 Table E.1-1 editions {BASE_EDITION} + {TOPUP_EDITION}; Basic Application Level"
    yield f"Confidentiality Profile (113100) with {options}."
    yield "Elements no row names are removed unless the engine keeps them on purpose (structure, pixel"
    yield "description, equipment); private elements are removed unless safe-listed. Consistent across"
    yield "studies, re-sends, restarts and workers under one key."
    yield ""
    yield "| Tag | Attribute | Basic Profile | dicom-node |"
    yield "|---|---|---|---|"
    for row in sorted(PROFILE_ROWS, key=lambda r: r.tag):
        action = action_for(row.tag, CLAIMED_OPTIONS).value
        tag = f"({row.tag >> 16:04X},{row.tag & 0xFFFF:04X})"
        how = FIXED.get(row.tag) or f"{action}: {_HOW[action]}"
        yield f"| {tag} | {row.name} | {row.basic.value} | {how} |"
    for pattern in PATTERN_ROWS:
        basic = pattern.basic.value
        yield f"| {pattern.pattern} | {pattern.name} | {basic} | {basic}: {_HOW[basic]} |"
