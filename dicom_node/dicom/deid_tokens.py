"""The identifying strings of one instance, and the cross-match that keeps copies of them out of kept values.

Default deny removes free text; what stays (allowlisted text, code strings, numbers) is checked against the
names, IDs and birth date found anywhere in the input, so an identifier in a kept value still goes.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Final

from pydicom.multival import MultiValue

from dicom_node.dicom.deid_allowlists import IDENTIFYING_SOURCES, REGISTERED_UIDS

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

MIN_TOKEN: Final = 4
# Shorter tokens would match random pixel bytes now and then; names and IDs are rarely shorter.
MIN_PIXEL_TOKEN: Final = 6
_SPLIT: Final = re.compile(r"[\^=\s,.\-/]+")
_DIGIT_RUN: Final = re.compile(r"\d{5,}")
_BIRTH_DATE: Final = 0x00100030
_MAX_DEPTH: Final = 32
_STRUCT_FORMAT: Final = {
    "US": "H",
    "SS": "h",
    "UL": "I",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "SV": "q",
    "UV": "Q",
}


def _values(element: DataElement) -> list[object]:
    value = element.value
    if value is None:
        return []
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _add(tokens: set[str], text: str) -> None:
    text = text.strip().casefold()
    for token in {text, *_SPLIT.split(text), *_DIGIT_RUN.findall(text)}:
        if len(token) >= MIN_TOKEN:
            tokens.add(token)


def _add_date(tokens: set[str], text: str) -> None:
    """An original full date as the engine finds it in numbers and text: YYYYMMDD and YYYY-MM-DD."""
    date = text.strip()[:8]
    if len(date) == 8 and date.isdigit():
        tokens.add(date)
        tokens.add(f"{date[:4]}-{date[4:6]}-{date[6:]}")


def identifying_tokens(ds: Dataset) -> frozenset[str]:
    """Casefolded names (every PN at any depth), IDs, the birth date, and every original full date and
    unregistered UID (values the engine changes, so that no unchanged copy of them survives elsewhere)."""
    tokens: set[str] = set()
    _collect(ds, tokens, 0)
    return frozenset(tokens)


def _collect(ds: Dataset, tokens: set[str], depth: int) -> None:
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
            if element.VR == "SQ":
                if depth < _MAX_DEPTH:
                    for item in element.value or []:
                        _collect(item, tokens, depth + 1)
                continue
            if element.VR == "PN" or int(tag) in IDENTIFYING_SOURCES or int(tag) == _BIRTH_DATE:
                for value in _values(element):
                    if not isinstance(value, bytes | bytearray):
                        _add(tokens, str(value))
            elif element.VR in ("DA", "DT"):
                # Shifted in place, so an unshifted copy elsewhere would give the patient's offset away.
                for value in _values(element):
                    _add_date(tokens, str(value))
            elif element.VR == "UI":
                # Remapped in place; a copy in kept text would link the output to the original study.
                for value in _values(element):
                    uid = str(value).rstrip("\0 ")
                    if len(uid) >= MIN_TOKEN and uid not in REGISTERED_UIDS:
                        tokens.add(uid.casefold())
        except Exception:
            # An undecodable element gives no tokens; the engine removes the element itself.
            continue


def text_is_identifying(element: DataElement, tokens: frozenset[str]) -> bool:
    """Whether any string value of `element` contains one of `tokens`."""
    return any(
        token in str(value).casefold() for value in _values(element) if value != "" for token in tokens
    )


def numbers_are_identifying(element: DataElement, tokens: frozenset[str]) -> bool:
    """Whether the encoded bytes of a binary number element spell one of `tokens` (text hidden in an FD)."""
    code = _STRUCT_FORMAT.get(element.VR)
    values = _values(element)
    if code is None or not values:
        return False
    encoded = b"".join(struct.pack("<" + code, value) for value in values)
    return bytes_contain(encoded, tokens, MIN_TOKEN)


def bytes_contain(data: bytes, tokens: frozenset[str], minimum: int) -> bool:
    """Whether `data` holds the ASCII form of a token in any letter case."""
    needles = sorted(token for token in tokens if len(token) >= minimum and token.isascii())
    # A token containing another one is found whenever the shorter one is: search the shortest only.
    needles = [token for token in needles if not any(other != token and other in token for other in needles)]
    if not needles:
        return False
    # Tokens are casefolded; one lower-case copy costs less than an upper- and a lower-case search each.
    lowered = data.lower()
    return any(token.encode("ascii") in lowered for token in needles)
