"""Value-level transforms for de-identification: date shifting, VR-typed dummies, age capping, format checks.

Every function either returns a safe value or raises ValueError; none returns the input unchecked, so the
engine can remove an element whose value it cannot vouch for (fail closed).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Final

_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
# PS3.5 6.2: the part of a DT after the date (hours, minutes, seconds, fraction, UTC offset), all optional.
_DT_REST = re.compile(r"(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?|\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?")
_AGE = re.compile(r"(\d{3})([DWMY])")
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{0,16}")
_INTEGER_STRING = re.compile(r"[+-]?\d{1,12}")
_DECIMAL_STRING = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DAYS_PER_UNIT: Final = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}

# Dummies for action D (PS3.15 E.1.1: non-empty, VR-conformant); ASCII only, whatever the character set.
DUMMY_TEXT: Final = "ANON"
_DUMMY_BY_VR: Final[dict[str, object]] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": "ANON",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "UT": DUMMY_TEXT,
    "UC": DUMMY_TEXT,
    "UR": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "DS": "0",
    "IS": "0",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "UL": 0,
    "US": 0,
    "SV": 0,
    "UV": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
    "AT": 0,
}


def dummy_for_vr(vr: str) -> object:
    """A non-empty placeholder that fits `vr`; raises ValueError for a VR without one (the element goes)."""
    if vr not in _DUMMY_BY_VR:
        raise ValueError("no dummy for this VR")
    return _DUMMY_BY_VR[vr]


def shift_date(value: str, days: int) -> str:
    """A DA value moved by `days`; ValueError for anything but a full YYYYMMDD."""
    text = value.strip()
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError("not a full date")
    year, month, day = (int(part) for part in match.groups())
    shifted = date(year, month, day) + timedelta(days=days)
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


def shift_datetime(value: str, days: int) -> str:
    """A DT value with its date part moved by `days`, time and UTC offset kept; needs a full date."""
    text = value.strip()
    if _DT_REST.fullmatch(text[8:]) is None:
        raise ValueError("not a date-time")
    return shift_date(text[:8], days) + text[8:]


def check_time(value: str) -> str:
    """A TM value unchanged when it is one; ValueError otherwise."""
    text = value.strip()
    if text and _TIME.fullmatch(text) is None:
        raise ValueError("not a time")
    return text


def check_code_string(value: str) -> str:
    """A CS value unchanged when it uses only CS characters; free text smuggled into a CS is refused."""
    if _CODE_STRING.fullmatch(value.strip()) is None:
        raise ValueError("not a code string")
    return value.strip()


def check_age(value: str) -> str:
    """An AS value unchanged when it is one."""
    text = value.strip()
    if text and _AGE.fullmatch(text) is None:
        raise ValueError("not an age")
    return text


def check_number_string(value: str, vr: str) -> str:
    """A DS or IS value unchanged when it is a number."""
    text = value.strip()
    pattern = _INTEGER_STRING if vr == "IS" else _DECIMAL_STRING
    if text and pattern.fullmatch(text) is None:
        raise ValueError("not a number")
    return text


def cap_age(value: str, max_years: int) -> str:
    """An AS value no older than `max_years` (PS3.15 E.3.5 note: ages over 89 identify)."""
    match = _AGE.fullmatch(value.strip())
    if match is None:
        raise ValueError("not an age")
    number, unit = int(match.group(1)), match.group(2)
    if number * _DAYS_PER_UNIT[unit] >= (max_years + 1) * 365.25 or (unit == "Y" and number > max_years):
        return f"{max_years:03d}Y"
    return f"{number:03d}{unit}"


def age_between(birth: str, on: str, max_years: int) -> str:
    """The AS age on date `on` of someone born on `birth` (both YYYYMMDD), capped at `max_years`."""
    born = _parse_date(birth)
    then = _parse_date(on)
    if then < born:
        raise ValueError("birth after the study")
    years = then.year - born.year - ((then.month, then.day) < (born.month, born.day))
    if years >= 1:
        return f"{min(years, max_years):03d}Y"
    days = (then - born).days
    if days >= 31:
        return f"{min(days * 12 // 365, 11):03d}M"
    return f"{days:03d}D"


def _parse_date(value: str) -> date:
    match = _DATE.fullmatch(value.strip())
    if match is None:
        raise ValueError("not a full date")
    year, month, day = (int(part) for part in match.groups())
    return date(year, month, day)
