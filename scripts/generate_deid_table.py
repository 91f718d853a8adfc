"""Generate `dicom_node/dicom/deid_table.py` from the pinned machine-readable copies of PS3.15 Table E.1-1.

The sources stay in `../shared/data/deid/` (see its README) and are never copied into the project. Both must
match the sha256 pinned here, or nothing is written: the rule table is only as trustworthy as the bytes it
came from. Exit status: 0 written (or, with --check, up to date), 1 --check found the committed table out of
date, 2 a source was refused (missing, hash mismatch, or a row this script does not understand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.dicom.deid_rules import Action, Option, PatternRow, ProfileRow, ProfileTable

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "deid"
DEFAULT_OUTPUT = REPO_ROOT / "dicom_node" / "dicom" / "deid_table.py"
LINE_LENGTH = 110  # pyproject.toml [tool.ruff]; the output is written already formatted


@dataclass(frozen=True, slots=True)
class Pin:
    """One source file as reviewed: its bytes (sha256), what it is, and under which licence we use it."""

    filename: str
    sha256: str
    edition: str
    origin: tuple[str, ...]
    licence: str


BASE = Pin(
    filename="confidentiality_profile_attributes.json",
    sha256="a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6",
    edition="2024e",
    origin=(
        "innolitics/dicom-standard, standard/confidentiality_profile_attributes.json",
        "at commit 7f4749d09ed3ef2fa70637d376d423a4b13523cd",
    ),
    licence="MIT",
)
TOPUP = Pin(
    filename="annex_e_2026c_topup.json",
    sha256="55a99e4cb776fc42437589356b86d6da75d23e2d0c31ad85c85d31a92f77184c",
    edition="2026c",
    origin=(
        "dicom-anonymizer 2.1.0 (PyPI), dicom_anonymization_databases/dicomfields_2026c.py:",
        "the rows the base lacks, Basic Profile column only",
    ),
    licence="BSD-3-Clause",
)

# innolitics column keys, in the standard's column order.
OPTION_COLUMNS: Mapping[str, Option] = {
    "rtnSafePrivOpt": Option.RETAIN_SAFE_PRIVATE,
    "rtnUIDsOpt": Option.RETAIN_UIDS,
    "rtnDevIdOpt": Option.RETAIN_DEVICE_IDENTITY,
    "rtnInstIdOpt": Option.RETAIN_INSTITUTION_IDENTITY,
    "rtnPatCharsOpt": Option.RETAIN_PATIENT_CHARACTERISTICS,
    "rtnLongFullDatesOpt": Option.RETAIN_LONGITUDINAL_FULL_DATES,
    "rtnLongModifDatesOpt": Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    "cleanDescOpt": Option.CLEAN_DESCRIPTORS,
    "cleanStructContOpt": Option.CLEAN_STRUCTURED_CONTENT,
    "cleanGraphOpt": Option.CLEAN_GRAPHICS,
}
BASE_KEYS = frozenset({"tag", "name", "basicProfile", "stdCompIOD", "id", *OPTION_COLUMNS})
TOPUP_KEYS = frozenset({"tag", "name", "basicProfile"})

# The standard's pattern rows as (mask, value). Curve and overlay repeating groups are the even groups 50xx
# and 60xx (PS3.5 7.6); odd groups are private (PS3.5 7.8), so the four patterns never overlap and their
# order cannot matter.
PATTERNS: Mapping[str, tuple[int, int]] = {
    "(GGGG,EEEE) WHERE GGGG IS ODD": (0x00010000, 0x00010000),
    "(50XX,XXXX)": (0xFF010000, 0x50000000),
    "(60XX,3000)": (0xFF01FFFF, 0x60003000),
    "(60XX,4000)": (0xFF01FFFF, 0x60004000),
}
_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
_NOTE = re.compile(r"\(see Note[^)]*\)")


class SourceRefused(Exception):
    """A source file is missing, differs from its pin, or holds a row this script does not understand."""


def read_pinned(source: Path, pin: Pin) -> object:
    """The parsed JSON of `pin`'s file, after checking its bytes against the pinned sha256."""
    path = source / pin.filename
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceRefused(f"{path}: cannot read ({type(exc).__name__})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != pin.sha256:
        raise SourceRefused(f"{path}: sha256 {digest}, pinned {pin.sha256}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise SourceRefused(f"{path}: not JSON") from exc


def normalise_name(name: str) -> str:
    """The attribute name without the table's "(see Note …)" references and with single spaces."""
    return " ".join(_NOTE.sub(" ", name).split())


def parse_action(value: object, where: str) -> Action:
    """An action code, refusing any the engine has no member for."""
    if not isinstance(value, str):
        raise SourceRefused(f"{where}: action is not a string")
    try:
        return Action(value)
    except ValueError as exc:
        raise SourceRefused(f"{where}: unknown action {value!r}") from exc


def parse_row(raw: object, *, pin: Pin, keys: frozenset[str], index: int) -> ProfileRow | PatternRow:
    """One source row in our format; unknown keys are refused so that a new column cannot vanish silently."""
    where = f"{pin.filename} row {index}"
    if not isinstance(raw, dict):
        raise SourceRefused(f"{where}: not an object")
    unknown = set(raw) - keys
    if unknown:
        raise SourceRefused(f"{where}: unknown keys {sorted(unknown)}")
    tag_text, name = raw.get("tag"), raw.get("name")
    if not isinstance(tag_text, str) or not isinstance(name, str):
        raise SourceRefused(f"{where}: tag and name must be strings")
    basic = parse_action(raw.get("basicProfile"), where)
    options = {
        option: parse_action(raw[key], f"{where} {key}")
        for key, option in OPTION_COLUMNS.items()
        if key in raw
    }
    in_std = raw.get("stdCompIOD")
    if in_std not in ("Y", "N", None):
        raise SourceRefused(f"{where}: stdCompIOD {in_std!r}")
    in_std_comp_iod = None if in_std is None else in_std == "Y"
    name = normalise_name(name)
    if tag_text in PATTERNS:
        mask, value = PATTERNS[tag_text]
        return PatternRow(
            pattern=tag_text,
            mask=mask,
            value=value,
            name=name,
            basic=basic,
            options=options,
            in_std_comp_iod=in_std_comp_iod,
            edition=pin.edition,
        )
    match = _TAG.fullmatch(tag_text)
    if match is None:
        raise SourceRefused(f"{where}: tag {tag_text!r} is neither (GGGG,EEEE) nor a known pattern")
    return ProfileRow(
        tag=int(match[1] + match[2], 16),
        name=name,
        basic=basic,
        options=options,
        in_std_comp_iod=in_std_comp_iod,
        edition=pin.edition,
    )


def load_table(source: Path) -> ProfileTable:
    """Both pinned sources as one table; the top-up may only add tags, never restate one."""
    parsed_sources: list[object] = []
    problems: list[str] = []
    for pin in (BASE, TOPUP):
        try:
            parsed_sources.append(read_pinned(source, pin))
        except SourceRefused as exc:
            problems.append(str(exc))
    if problems:
        # Name every file that fails its pin, not only the first, so one rerun shows the whole damage.
        raise SourceRefused("; ".join(problems))
    base, topup = parsed_sources
    if not isinstance(base, list):
        raise SourceRefused(f"{BASE.filename}: not a list of rows")
    if not isinstance(topup, dict) or not isinstance(topup.get("rows"), list):
        raise SourceRefused(f"{TOPUP.filename}: no list of rows")
    parsed = [parse_row(raw, pin=BASE, keys=BASE_KEYS, index=i) for i, raw in enumerate(base)]
    parsed += [parse_row(raw, pin=TOPUP, keys=TOPUP_KEYS, index=i) for i, raw in enumerate(topup["rows"])]
    rows = sorted((row for row in parsed if isinstance(row, ProfileRow)), key=lambda row: row.tag)
    patterns = sorted((row for row in parsed if isinstance(row, PatternRow)), key=lambda row: row.value)
    if len({row.pattern for row in patterns}) != len(patterns):
        raise SourceRefused("a pattern row appears twice")
    try:
        return ProfileTable(rows=tuple(rows), patterns=tuple(patterns))
    except ValueError as exc:
        raise SourceRefused(str(exc)) from exc


def literal(text: str) -> str:
    """A string literal as ruff format writes it (double quotes unless that needs more escapes)."""
    if not text.isascii() or not text.isprintable():
        raise SourceRefused(f"name {text!r} is not printable ASCII")
    text = text.replace("\\", "\\\\")
    if '"' in text and "'" not in text:
        return f"'{text}'"
    return '"' + text.replace('"', '\\"') + '"'


def render_options(options: Mapping[Option, Action], indent: str) -> list[str]:
    """The options argument: one line if it fits, else one entry a line, as ruff format would."""
    entries = [f"Option.{option.name}: Action.{action.name}" for option, action in sorted_options(options)]
    one_line = f"{indent}options={{{', '.join(entries)}}},"
    if len(one_line) <= LINE_LENGTH:
        return [one_line]
    return [f"{indent}options={{", *(f"{indent}    {entry}," for entry in entries), f"{indent}}},"]


def sorted_options(options: Mapping[Option, Action]) -> list[tuple[Option, Action]]:
    """A row's options in the standard's column order, so the output never depends on dict order."""
    return [(option, options[option]) for option in Option if option in options]


def render_row(row: ProfileRow | PatternRow) -> list[str]:
    """One row as an exploded constructor call; the magic trailing comma keeps ruff format from joining it."""
    indent = " " * 8
    if isinstance(row, ProfileRow):
        head = ["    ProfileRow(", f"{indent}tag=0x{row.tag:08X},"]
    else:
        head = [
            "    PatternRow(",
            f"{indent}pattern={literal(row.pattern)},",
            f"{indent}mask=0x{row.mask:08X},",
            f"{indent}value=0x{row.value:08X},",
        ]
    edition = {BASE.edition: "BASE_EDITION", TOPUP.edition: "TOPUP_EDITION"}[row.edition]
    return [
        *head,
        f"{indent}name={literal(row.name)},",
        f"{indent}basic=Action.{row.basic.name},",
        *render_options(row.options, indent),
        f"{indent}in_std_comp_iod={row.in_std_comp_iod},",
        f"{indent}edition={edition},",
        "    ),",
    ]


def render_pin(pin: Pin) -> list[str]:
    """The header lines that say where one source came from."""
    return [
        f"#   {pin.filename} (edition {pin.edition}, {pin.licence})",
        *(f"#     {line}" for line in pin.origin),
        f"#     sha256 {pin.sha256}",
    ]


def render_tuple(name: str, kind: str, rows: Iterable[ProfileRow | PatternRow]) -> list[str]:
    """A module-level tuple constant of rows."""
    body = [line for row in rows for line in render_row(row)]
    return [f"{name}: Final[tuple[{kind}, ...]] = (", *body, ")"]


def render(table: ProfileTable) -> str:
    """The whole generated module, deterministic for a given pair of sources."""
    lines = [
        "# GENERATED by scripts/generate_deid_table.py from PS3.15 Table E.1-1; do not edit, rerun it.",
        "# Local additions go into a reviewed overrides file, never here. Sources, in ../shared/data/deid/:",
        *render_pin(BASE),
        *render_pin(TOPUP),
        "# NEMA holds the copyright of the standard's table.",
        '"""PS3.15 Table E.1-1 as the de-identification rule table: the 2024e rows plus those 2026c adds."""',
        "",
        "from __future__ import annotations",
        "",
        "from types import MappingProxyType",
        "from typing import TYPE_CHECKING, Final",
        "",
        "from dicom_node.dicom.deid_rules import Action, Option, PatternRow, ProfileRow, ProfileTable",
        "",
        "if TYPE_CHECKING:",
        "    from collections.abc import Mapping",
        "",
        f"BASE_SOURCE: Final = {literal(BASE.filename)}",
        f"BASE_EDITION: Final = {literal(BASE.edition)}",
        f"TOPUP_SOURCE: Final = {literal(TOPUP.filename)}",
        f"TOPUP_EDITION: Final = {literal(TOPUP.edition)}",
        "SOURCE_SHA256: Final[Mapping[str, str]] = MappingProxyType(",
        "    {",
        f"        BASE_SOURCE: {literal(BASE.sha256)},",
        f"        TOPUP_SOURCE: {literal(TOPUP.sha256)},",
        "    }",
        ")",
        "",
        *render_tuple("PROFILE_ROWS", "ProfileRow", table.rows),
        "",
        *render_tuple("PATTERN_ROWS", "PatternRow", table.patterns),
        "",
        "PROFILE_TABLE: Final = ProfileTable(rows=PROFILE_ROWS, patterns=PATTERN_ROWS)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, or with --check compare, and return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with both source files")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the generated module")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if --output is stale")
    args = parser.parse_args(argv)
    output: Path = args.output
    try:
        text = render(load_table(args.source))
    except SourceRefused as exc:
        sys.stderr.write(f"refused: {exc}\n")
        return 2
    if args.check:
        current = output.read_text(encoding="utf-8") if output.is_file() else None
        if current != text:
            sys.stderr.write(f"{output} is out of date: run scripts/generate_deid_table.py\n")
            return 1
        return 0
    output.write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
