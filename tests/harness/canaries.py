"""Planted PHI canaries and a scanner that hunts them in a data set (DEID.md 6).

Two channels, because each catches what the other misses: the raw encoded bytes (as ASCII, UTF-8, Latin-1
and ISO 2022 IR 87), where a value pydicom would not decode still shows, and every decoded value at every
depth, which names the tag path of a leak. Matching ignores case: an upper-cased name has not been removed.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from pydicom.charset import convert_encodings
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite, write_data_element
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

# Shorter ASCII needles match by chance in pixel data and pseudonyms; CJK names are often two characters.
MIN_ASCII_NEEDLE = 3
MIN_OTHER_NEEDLE = 2
MRN_DIGIT_RUN = re.compile(r"\d{5,}")
# DEID.md 6 names the first three; the dotted form is a malformed DA seen in the wild (case 30).
DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%m/%d/%Y", "%Y.%m.%d")
BYTE_ENCODINGS = ("ascii", "utf-8", "latin-1", "iso2022_jp")
ISO2022_ASCII_RETURN = b"\x1b(B"
MAX_REPORTED_HITS = 40


@dataclass(frozen=True, slots=True)
class Needle:
    """One string to hunt for, derived from a planted canary."""

    text: str
    canary: str
    form: str

    def patterns(self) -> tuple[tuple[str, bytes], ...]:
        """The needle as lower-cased bytes in each encoding that can carry it, de-duplicated."""
        found: dict[bytes, str] = {}
        for encoding in BYTE_ENCODINGS:
            try:
                encoded = self.text.encode(encoding)
            except UnicodeEncodeError:
                continue
            forms = [encoded]
            if encoding == "iso2022_jp" and not self.text.isascii():
                # In a PN the return to ASCII comes after the whole component group, not after this needle;
                # a long enough run of JIS bytes also counts without its escape sequence.
                stripped = encoded.removesuffix(ISO2022_ASCII_RETURN)
                forms = [stripped]
                bare = stripped[3:] if stripped.startswith(b"\x1b$") else stripped
                if len(bare) >= 6:
                    forms.append(bare)
            for form in forms:
                found.setdefault(form.lower(), encoding)
        return tuple((encoding, pattern) for pattern, encoding in found.items())


@dataclass(frozen=True, slots=True)
class Hit:
    """Where a needle was found: a tag path (decoded values) or a byte offset and its top-level element."""

    needle: Needle
    where: str
    context: str

    def __str__(self) -> str:
        origin = f"{self.needle.form} of {self.needle.canary!r}"
        return f"{self.needle.text!r} ({origin}) at {self.where}: {self.context}"


@dataclass(frozen=True, slots=True)
class Canaries:
    """What a test planted: person names (PN syntax), MRNs, dates (YYYYMMDD) and other identifying text."""

    names: tuple[str, ...] = ()
    mrns: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()

    def __add__(self, other: Canaries) -> Canaries:
        return Canaries(
            names=self.names + other.names,
            mrns=self.mrns + other.mrns,
            dates=self.dates + other.dates,
            texts=self.texts + other.texts,
        )

    def needles(self) -> tuple[Needle, ...]:
        """The needles of DEID.md 6: name components, reversed names, initials + MRN, digit runs, dates."""
        needles: dict[str, Needle] = {}

        def add(text: str, canary: str, form: str) -> None:
            text = text.strip()
            minimum = MIN_ASCII_NEEDLE if text.isascii() else MIN_OTHER_NEEDLE
            if len(text) >= minimum:
                needles.setdefault(text.casefold(), Needle(text, canary, form))

        for name in self.names:
            for group in name.split("="):
                components = [part.strip() for part in group.split("^")]
                for component in components:
                    add(component, name, "name component")
                family, given = [*components, "", ""][:2]
                if family and given:
                    add(f"{given} {family}", name, "reversed name")
                    for mrn in self.mrns:
                        add(f"{given[0]}{family[0]}{mrn}", name, "initials + MRN")
                        add(f"{family[0]}{given[0]}{mrn}", name, "initials + MRN")
        for mrn in self.mrns:
            add(mrn, mrn, "MRN")
            for run in MRN_DIGIT_RUN.findall(mrn):
                add(run, mrn, "MRN digit run")
        for planted in self.dates:
            for text in date_forms(planted):
                add(text, planted, "date")
        for text in self.texts:
            add(text, text, "text")
        return tuple(needles.values())

    def planted(self) -> tuple[tuple[str, tuple[Needle, ...]], ...]:
        """Each planted value with the needles any one of which proves it is present in an input."""
        checks: list[tuple[str, tuple[Needle, ...]]] = []
        for name in self.names:
            for group in name.split("="):
                for component in group.split("^"):
                    if component.strip():
                        checks.append((component, Canaries(texts=(component,)).needles()))
        for mrn in self.mrns:
            checks.append((mrn, Canaries(texts=(mrn,)).needles()))
        for planted in self.dates:
            checks.append((planted, tuple(Needle(text, planted, "date") for text in date_forms(planted))))
        for text in self.texts:
            checks.append((text, Canaries(texts=(text,)).needles()))
        return tuple(checks)


def date_forms(planted: str) -> tuple[str, ...]:
    """A YYYYMMDD date in every format a person or a system may have written it."""
    parsed = datetime.strptime(planted, "%Y%m%d")
    return tuple(dict.fromkeys(parsed.strftime(form) for form in DATE_FORMATS))


def encode_dataset(ds: Dataset) -> bytes:
    """The data set as a file would hold it, in the transfer syntax its file meta names.

    Writes a copy: pydicom decodes raw elements in place while writing, and an element it cannot decode (a
    malformed input, on purpose) goes out as UN with its bytes as stored, so the bytes channel still sees it.
    """
    buffer = io.BytesIO()
    dcmwrite(buffer, _writable_copy(ds), enforce_file_format=False)
    return buffer.getvalue()


def un_element(tag: int, value: bytes) -> DataElement:
    """An element with VR UN even for a tag pydicom knows (its constructor restores the dictionary VR)."""
    element = DataElement(tag, "OB", value)
    element.VR = "UN"
    return element


def _writable_copy(ds: Dataset) -> Dataset:
    copied = copy.deepcopy(ds)
    _undecodable_as_un(copied)
    return copied


def _undecodable_as_un(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        stored = ds.get_item(tag)
        try:
            element = ds[tag]
        except Exception:  # kept as the bytes it arrived with
            raw = stored.value if isinstance(stored, RawDataElement) else None
            ds[tag] = un_element(tag, bytes(raw or b""))
            continue
        if element.VR == "SQ":
            for item in element.value:
                _undecodable_as_un(item)


def scan_bytes(data: bytes, needles: Iterable[Needle], *, where: str = "bytes") -> list[Hit]:
    """Every occurrence of every needle in `data`, in every encoding, ignoring ASCII case."""
    lowered = data.lower()
    hits: list[Hit] = []
    for needle in needles:
        seen: set[int] = set()
        for encoding, pattern in needle.patterns():
            start = lowered.find(pattern)
            while start >= 0:
                if start not in seen:
                    seen.add(start)
                    context = data[max(0, start - 16) : start + len(pattern) + 16]
                    hits.append(Hit(needle, f"{where}[{start}] as {encoding}", repr(context)))
                start = lowered.find(pattern, start + 1)
    return hits


def scan_text(text: str, needles: Iterable[Needle], *, where: str) -> list[Hit]:
    """Every needle found in one decoded string, ignoring case."""
    folded = text.casefold()
    return [Hit(needle, where, repr(text)) for needle in needles if needle.text.casefold() in folded]


def scan_values(ds: Dataset, needles: Iterable[Needle]) -> list[Hit]:
    """Every needle in every decoded value of the data set and its file meta, at every sequence depth."""
    needle_list = tuple(needles)
    hits: list[Hit] = []
    for path, value in _all_values(ds):
        if isinstance(value, bytes):
            hits.extend(scan_bytes(value, needle_list, where=path))
        else:
            hits.extend(scan_text(value, needle_list, where=path))
    return hits


def _all_values(ds: Dataset) -> list[tuple[str, str | bytes]]:
    """The preamble, the file meta and the body, walked in a copy (decoding replaces raw elements)."""
    ds = copy.deepcopy(ds)
    values: list[tuple[str, str | bytes]] = []
    preamble = getattr(ds, "preamble", None)
    if preamble:
        values.append(("preamble", bytes(preamble)))
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        values.extend(walk_values(file_meta, "file_meta."))
    values.extend(walk_values(ds, ""))
    return values


def scan_dataset(ds: Dataset, canaries: Canaries) -> list[Hit]:
    """Hits in the encoded bytes (with the top-level element each falls in) and in the decoded values."""
    needles = canaries.needles()
    data = encode_dataset(ds)
    byte_hits = scan_bytes(data, needles)
    if byte_hits:
        locate = _byte_locator(ds, data)
        byte_hits = [Hit(hit.needle, f"{hit.where} in {locate(hit.where)}", hit.context) for hit in byte_hits]
    return byte_hits + scan_values(ds, needles)


def assert_no_canaries(ds: Dataset, canaries: Canaries, *, label: str = "output") -> None:
    """Fail with every hit, readable, when any derived needle survives anywhere in `ds`."""
    hits = scan_dataset(ds, canaries)
    assert not hits, _format_hits(label, hits)


def missing_canaries(ds: Dataset, canaries: Canaries) -> list[str]:
    """The planted values that one of the two channels cannot find in `ds` (an input must have none)."""
    data = encode_dataset(ds)
    values = _all_values(ds)
    missing: list[str] = []
    for planted, needles in canaries.planted():
        if not scan_bytes(data, needles):
            missing.append(f"{planted!r} not in the encoded bytes")
        in_values = any(
            scan_bytes(value, needles) if isinstance(value, bytes) else scan_text(value, needles, where=path)
            for path, value in values
        )
        if not in_values:
            missing.append(f"{planted!r} not in any decoded value")
    return missing


def assert_planted(ds: Dataset, canaries: Canaries) -> None:
    """Fail unless both channels find every planted canary: a blind scan proves nothing."""
    missing = missing_canaries(ds, canaries)
    assert not missing, "canaries not planted or not visible to the scanner: " + "; ".join(missing)


def walk_values(ds: Dataset, prefix: str) -> Iterator[tuple[str, str | bytes]]:
    """(tag path, value) for every leaf value at every depth: raw bytes as stored, then the decoded values."""
    for tag in sorted(ds.keys()):
        stored = ds.get_item(tag)
        path = prefix + _label(int(tag))
        if isinstance(stored, RawDataElement) and stored.value is not None:
            yield f"{path} (raw)", bytes(stored.value)
        try:
            element = ds[tag]
        except Exception:  # an undecodable element still had its raw bytes scanned above
            continue
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from walk_values(item, f"{path}[{index}].")
            continue
        for value in _leaf_values(element.value):
            yield path, value


def _leaf_values(value: object) -> Iterator[str | bytes]:
    if value is None:
        return
    if isinstance(value, bytes | bytearray):
        yield bytes(value)
    elif isinstance(value, PersonName):
        yield str(value)
    elif isinstance(value, MultiValue | list | tuple):
        for each in value:
            yield from _leaf_values(each)
    else:
        yield str(value)


def _label(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{text} {keyword}" if keyword else text


def _byte_locator(ds: Dataset, data: bytes) -> _Locator:
    """Maps a byte offset of the encoded file to the top-level element holding it."""
    spans: list[tuple[int, int, str]] = []
    try:
        syntax = ds.file_meta.TransferSyntaxUID
        ds = correct_ambiguous_vr(_writable_copy(ds), syntax.is_little_endian)
        fp = DicomBytesIO()
        fp.is_little_endian = syntax.is_little_endian
        fp.is_implicit_VR = syntax.is_implicit_VR
        encodings = convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
        positions: list[tuple[int, int, str]] = []
        for tag in sorted(ds.keys()):
            stored = ds.get_item(tag)
            start = fp.tell()
            element = stored if isinstance(stored, RawDataElement | DataElement) else ds[tag]
            write_data_element(fp, element, encodings)
            positions.append((start, fp.tell(), _label(int(tag))))
        body_start = len(data) - fp.tell()
        if body_start >= 0 and not syntax.is_deflated:
            spans = [(body_start + start, body_start + end, label) for start, end, label in positions]
    except Exception:  # locating is a courtesy for the failure message; the hit stands either way
        spans = []
    return _Locator(tuple(spans), has_preamble=data[128:132] == b"DICM")


@dataclass(frozen=True, slots=True)
class _Locator:
    spans: tuple[tuple[int, int, str], ...]
    has_preamble: bool

    def __call__(self, where: str) -> str:
        match = re.search(r"\[(\d+)\]", where)
        if match is None:
            return "?"
        offset = int(match.group(1))
        if self.has_preamble and offset < 128:
            return "the preamble"
        for start, end, label in self.spans:
            if start <= offset < end:
                return label
        if self.spans and offset < self.spans[0][0]:
            return "the file meta"
        return "an unlocated element"


def _format_hits(label: str, hits: list[Hit]) -> str:
    lines = [f"{len(hits)} canary hit(s) in the {label}:"]
    lines.extend(f"  {hit}" for hit in hits[:MAX_REPORTED_HITS])
    if len(hits) > MAX_REPORTED_HITS:
        lines.append(f"  … and {len(hits) - MAX_REPORTED_HITS} more")
    return "\n".join(lines)
