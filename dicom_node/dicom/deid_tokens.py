"""The identifying strings of one instance, and the cross-match that keeps copies of them out of kept values.

Default deny removes free text; what stays (allowlisted text, code strings, numbers) is checked against the
names, IDs and birth date found anywhere in the input, so an identifier in a kept value still goes.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import TYPE_CHECKING, Final, cast

import numpy as np
from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.valuerep import AMBIGUOUS_VR
from pydicom.values import convert_value

from dicom_node.dicom.deid_allowlists import IDENTIFYING_SOURCES, REGISTERED_UIDS

if TYPE_CHECKING:
    from collections.abc import MutableSequence

    from numpy.typing import NDArray
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

MIN_TOKEN: Final = 4
# Shorter tokens would match random pixel bytes now and then; names and IDs are rarely shorter.
MIN_PIXEL_TOKEN: Final = 6
_SPLIT: Final = re.compile(r"[\^=\s,.\-/]+")
_DIGIT_RUN: Final = re.compile(r"\d{5,}")
_BIRTH_DATE: Final = 0x00100030
_BIRTH_DATES: Final = frozenset({_BIRTH_DATE})  # by hash: a BaseTag compared with == costs a call
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
            element = read_element(ds, tag)
            vr = element.VR
            if vr == "SQ":
                if depth < _MAX_DEPTH:
                    for item in element.value or []:
                        _collect(item, tokens, depth + 1)
                continue
            if vr == "PN" or tag in IDENTIFYING_SOURCES or tag in _BIRTH_DATES:
                for value in _values(element):
                    if not isinstance(value, bytes | bytearray):
                        _add(tokens, str(value))
            elif vr in ("DA", "DT"):
                # Shifted in place, so an unshifted copy elsewhere would give the patient's offset away.
                for value in _values(element):
                    _add_date(tokens, str(value))
            elif vr == "UI":
                # Remapped in place; a copy in kept text would link the output to the original study.
                for value in _values(element):
                    uid = str(value).rstrip("\0 ")
                    if len(uid) >= MIN_TOKEN and uid not in REGISTERED_UIDS:
                        tokens.add(uid.casefold())
        except Exception:
            # An undecodable element gives no tokens; the engine removes the element itself.
            continue


def read_element(ds: Dataset, tag: int) -> DataElement:
    """`ds[tag]`, without pydicom's per-call overhead when the element is converted already."""
    # BaseTag is an int that hashes as one, so a plain int finds its element too.
    element = ds._dict[cast("BaseTag", tag)]  # a raw element goes through ds[tag], which converts it into ds
    if isinstance(element, DataElement):
        return element
    if (
        element.value is not None
        and element.VR is not None
        and element.VR not in _SLOW_CONVERSION_VRS
        and not element.tag >> 16 & 1
        and element.tag not in _SLOW_CONVERSION_TAGS
    ):
        # What ds[tag] does for such an element, without its repeated look-ups: convert with the data set's
        # character set, store it in the data set (nothing else of __setitem__ applies: not private, not
        # pixel data), no sequence to pass the pixel representation to and no ambiguous VR to correct.
        converted = _convert(element, ds.original_character_set or ds._character_set, ds)
        if converted.VR not in _SLOW_CONVERSION_VRS:
            ds._dict[element.tag] = converted
            return converted
    return ds[tag]


def _convert(raw: RawDataElement, encoding: str | MutableSequence[str], ds: Dataset) -> DataElement:
    """`convert_raw_data_element(raw, encoding=encoding, ds=ds)` for an element read in explicit VR.

    With pydicom's own hooks in place and no element callback, that function names the element's VR as read
    (not UN: no dictionary look-up), converts the value with `convert_value`, fixes nothing (not a LUT
    descriptor) and makes the DataElement below; this does the same without the hooks' indirection. Any
    other case, and any failure (pydicom's own handling of it applies), goes through pydicom.
    """
    vr = raw.VR
    if (
        vr is not None
        and vr != "UN"
        and config.data_element_callback is None
        and not hooks.raw_element_kwargs
        and hooks.raw_element_vr is _DEFAULT_VR_HOOK
        and hooks.raw_element_value is _DEFAULT_VALUE_HOOK
        and raw.tag not in _LUT_DESCRIPTORS
    ):
        try:
            value = convert_value(vr, raw, encoding)
        except Exception:
            pass
        else:
            return DataElement(
                raw.tag, vr, value, raw.value_tell, raw.length == 0xFFFFFFFF, already_converted=True
            )
    return convert_raw_data_element(raw, encoding=encoding, ds=ds)


_DEFAULT_VR_HOOK: Final = hooks.raw_element_vr
# A set, not pydicom's tuple: membership by hash, without a comparison per entry.
_LUT_DESCRIPTORS: Final = frozenset(_LUT_DESCRIPTOR_TAGS)
_DEFAULT_VALUE_HOOK: Final = hooks.raw_element_value


# Elements ds[tag] does more for than convert and store: sequences, ambiguous VRs (which conversion can also
# produce, as can UN with a known VR), the character set itself (converted with the default one), pixel data
# (whose change resets the data set's pixel caches).
_SLOW_CONVERSION_VRS: Final = frozenset({"SQ", "UN", *AMBIGUOUS_VR})
_SLOW_CONVERSION_TAGS: Final = frozenset({0x00080005, 0x7FE00008, 0x7FE00009, 0x7FE00010})


def text_is_identifying(element: DataElement, tokens: frozenset[str]) -> bool:
    """Whether any string value of `element` contains one of `tokens`."""
    return any(value != "" and value_is_identifying(str(value), tokens) for value in _values(element))


def value_is_identifying(value: str, tokens: frozenset[str]) -> bool:
    """Whether one string value contains one of `tokens`."""
    text = value.casefold()
    size = len(text)
    for token in _by_length_order(tokens):
        if len(token) > size:
            break  # the rest are longer still: none fits in this value
        if token in text:
            return True
    return False


@lru_cache(maxsize=64)
def _by_length_order(tokens: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(tokens, key=_by_length))


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
    needles = _needles(tokens, minimum)
    if not needles:
        return False
    if len(data) >= _LARGE and minimum >= 3:
        if _no_text_in_high_bytes(data, needles):
            return False
        found = _pair_search(data, needles)
        if found is not None:
            return found
    # Tokens are casefolded; one lower-case copy costs less than an upper- and a lower-case search each.
    lowered = data.lower()
    return any(needle in lowered for needle in needles)


# From this size on (pixel data), one vectorised pass over byte pairs replaces a search per token.
_LARGE: Final = 1 << 14
# More candidate positions than this (text-like pixel values) and the plain search is the faster one.
_MAX_CANDIDATES: Final = 1 << 12


@lru_cache(maxsize=64)
def _needles(tokens: frozenset[str], minimum: int) -> tuple[bytes, ...]:
    """The ASCII tokens of at least `minimum` characters, leaving out any that contains another one (a
    token containing another is found whenever the shorter one is, so searching the shorter one suffices)."""
    kept: list[str] = []
    for token in sorted(
        (token for token in tokens if len(token) >= minimum and token.isascii()), key=_by_length
    ):
        if not any(other in token for other in kept):
            kept.append(token)
    return tuple(sorted(token.encode("ascii") for token in kept))


def _by_length(token: str) -> tuple[int, str]:
    return len(token), token


def _no_text_in_high_bytes(data: bytes, needles: tuple[bytes, ...]) -> bool:
    """Whether no needle can occur in `data` because every byte at an odd offset is below every byte of
    every needle, in either letter case (one vectorised maximum, no table).

    A needle of two or more bytes has one byte at an odd offset wherever it starts, and that byte is the high
    byte of a little-endian pair: with all pairs below (lowest needle byte) << 8, none can match. This is what
    12-bit CT and MR pixel data look like, so most pixel data is ruled out without a search.
    """
    lowest = _lowest_byte(needles)
    count = len(data) // 2
    if count == 0 or lowest == 0:
        return False
    return int(np.frombuffer(data, dtype="<u2", count=count).max()) < lowest << 8


@lru_cache(maxsize=64)
def _lowest_byte(needles: tuple[bytes, ...]) -> int:
    """The lowest byte value any needle can take in the data, upper-case forms included (0 if a needle is
    shorter than two bytes: then nothing is ruled out)."""
    if any(len(needle) < 2 for needle in needles):
        return 0
    joined = b"".join(needles)
    # bytes.upper maps a to z onto A to Z and nothing else: the same forms as _cases.
    return min(min(joined), min(joined.upper()))


@lru_cache(maxsize=8)
def _pair_table(needles: tuple[bytes, ...]) -> tuple[NDArray[np.bool_], dict[int, list[tuple[int, bytes]]]]:
    """Which little-endian byte pairs can open a match, and the (offset, needle) each one opens.

    A needle at an even offset of the data starts with its pair at 0, at an odd offset with its pair at 1;
    either way that pair lies on an even offset. Upper-case forms are listed too: the data is not lowered.
    """
    table = np.zeros(1 << 16, dtype=np.bool_)
    starts: dict[int, list[tuple[int, bytes]]] = {}
    for needle in needles:
        for offset in (0, 1):
            for first in _cases(needle[offset]):
                for second in _cases(needle[offset + 1]):
                    pair = first | second << 8
                    table[pair] = True
                    starts.setdefault(pair, []).append((offset, needle))
    table.flags.writeable = False
    return table, starts


def _cases(byte: int) -> tuple[int, ...]:
    """The bytes that `bytes.lower` turns into `byte`."""
    return (byte, byte - 0x20) if 0x61 <= byte <= 0x7A else (byte,)


def _pair_search(data: bytes, needles: tuple[bytes, ...]) -> bool | None:
    """`bytes_contain` for data of any size, every needle at least 3 bytes; None when too many positions
    look like text for this way to pay off."""
    table, starts = _pair_table(needles)
    pairs = np.frombuffer(data, dtype="<u2", count=len(data) // 2)
    hits = np.flatnonzero(table.take(pairs))
    if len(hits) > _MAX_CANDIDATES:
        return None
    for index, pair in zip(hits.tolist(), pairs[hits].tolist(), strict=True):
        for offset, needle in starts[pair]:
            start = 2 * index - offset
            if start >= 0 and data[start : start + len(needle)].lower() == needle:
                return True
    return False
