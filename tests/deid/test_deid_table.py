"""The committed Table E.1-1 rule table: a fresh generation from the pinned sources, with DEID.md's counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dicom_node.dicom import deid_table
from dicom_node.dicom.deid_rules import Action, Option, PatternRow, ProfileRow, ProfileTable
from dicom_node.dicom.deid_table import BASE_EDITION, PATTERN_ROWS, PROFILE_ROWS, PROFILE_TABLE, TOPUP_EDITION

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "scripts" / "generate_deid_table.py"
COMMITTED = REPO_ROOT / "dicom_node" / "dicom" / "deid_table.py"
SOURCES = REPO_ROOT.parent / "shared" / "data" / "deid"
HAVE_SOURCES = SOURCES.is_dir()

# Copied from ../shared/data/deid/README.md, not from the generator, so a new pin takes two reviewed edits.
PINNED_SHA256 = {
    deid_table.BASE_SOURCE: "a99a35d1278e2bace8d90ff791b11aea2d45f1e3e1230388eb5224c9dbcd29e6",
    deid_table.TOPUP_SOURCE: "55a99e4cb776fc42437589356b86d6da75d23e2d0c31ad85c85d31a92f77184c",
}

BASE_ROWS: list[ProfileRow | PatternRow] = [
    *(row for row in PROFILE_ROWS if row.edition == BASE_EDITION),
    *(row for row in PATTERN_ROWS if row.edition == BASE_EDITION),
]
TOPUP_ROWS = [row for row in PROFILE_ROWS if row.edition == TOPUP_EDITION]


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def row(tag: int) -> ProfileRow:
    found = PROFILE_TABLE.row_for(tag)
    assert isinstance(found, ProfileRow), f"no exact row for {tag:08X}"
    return found


def test_committed_table_is_a_fresh_generation_from_the_pinned_sources(tmp_path: Path) -> None:
    assert dict(deid_table.SOURCE_SHA256) == PINNED_SHA256
    if not HAVE_SOURCES:
        # Outside developer machines and CI the sources are absent: the recorded pins and counts stand in.
        assert (len(BASE_ROWS), len(TOPUP_ROWS)) == (621, 35)
        return
    output = tmp_path / "deid_table.py"
    generated = run_generator("--output", str(output))
    assert generated.returncode == 0, generated.stderr
    assert output.read_bytes() == COMMITTED.read_bytes()


def test_check_accepts_the_committed_table() -> None:
    result = run_generator("--check")
    # Without the sources the generator cannot verify anything, so it must refuse rather than pass.
    assert result.returncode == (0 if HAVE_SOURCES else 2), result.stderr


def test_check_reports_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "deid_table.py"
    stale.write_text(COMMITTED.read_text(encoding="utf-8").replace("Action.ZERO,", "Action.KEEP,", 1))
    result = run_generator("--check", "--output", str(stale))
    assert result.returncode == (1 if HAVE_SOURCES else 2), result.stderr


def _tampered_copy(tmp_path: Path, tampered: str) -> Path:
    """Both sources copied into tmp_path, one edited the way a careless re-extraction would leak a name."""
    source = tmp_path / "deid"
    source.mkdir()
    for filename in PINNED_SHA256:
        if filename != tampered and HAVE_SOURCES:
            shutil.copyfile(SOURCES / filename, source / filename)
            continue
        rows: list[dict[str, str]] = [{"tag": "(0010,0010)", "name": "Patient's Name", "basicProfile": "K"}]
        if HAVE_SOURCES:
            data = json.loads((SOURCES / filename).read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data["rows"]
            for raw in rows:
                if raw["name"] in ("Patient's Name", "Name to Use"):
                    raw["basicProfile"] = "K"
        else:
            data = rows if filename == deid_table.BASE_SOURCE else {"rows": rows}
        (source / filename).write_text(json.dumps(data, indent=4), encoding="utf-8")
    return source


@pytest.mark.parametrize("tampered", sorted(PINNED_SHA256))
def test_generator_refuses_a_tampered_source(tmp_path: Path, tampered: str) -> None:
    output = tmp_path / "deid_table.py"
    result = run_generator("--source", str(_tampered_copy(tmp_path, tampered)), "--output", str(output))
    assert result.returncode == 2
    assert tampered in result.stderr and "sha256" in result.stderr
    assert not output.exists()


def test_generator_refuses_a_missing_source_folder(tmp_path: Path) -> None:
    output = tmp_path / "deid_table.py"
    result = run_generator("--source", str(tmp_path / "absent"), "--output", str(output))
    assert result.returncode == 2
    assert not output.exists()


def test_base_rows_have_the_action_counts_of_deid_md_1_1() -> None:
    assert Counter(row.basic.value for row in BASE_ROWS) == {
        "X": 384,
        "D": 92,
        "U": 54,
        "Z": 42,
        "X/D": 22,
        "X/Z": 11,
        "X/Z/D": 8,
        "Z/D": 6,
        "X/Z/U*": 2,
    }
    assert len(BASE_ROWS) == 621
    assert sorted(pattern.pattern for pattern in PATTERN_ROWS) == [
        "(50XX,XXXX)",
        "(60XX,3000)",
        "(60XX,4000)",
        "(GGGG,EEEE) WHERE GGGG IS ODD",
    ]
    assert {pattern.basic for pattern in PATTERN_ROWS} == {Action.REMOVE}


def test_2026c_adds_35_rows_with_basic_actions_only() -> None:
    assert len(TOPUP_ROWS) == 35
    assert len(PROFILE_ROWS) == 617 + 35  # DEID.md 1.1: 617 plain-tag rows in 2024e, 652 in 2026c
    assert all(not row.options and row.in_std_comp_iod is None for row in TOPUP_ROWS)
    assert row(0x00100012).name == "Name to Use"


@pytest.mark.parametrize(
    ("option", "counts"),
    [
        (Option.RETAIN_SAFE_PRIVATE, {Action.CLEAN: 1}),
        (Option.RETAIN_UIDS, {Action.KEEP: 59}),
        (Option.RETAIN_DEVICE_IDENTITY, {Action.KEEP: 46, Action.CLEAN: 11}),
        (Option.RETAIN_INSTITUTION_IDENTITY, {Action.KEEP: 10}),
        (Option.RETAIN_PATIENT_CHARACTERISTICS, {Action.KEEP: 9, Action.CLEAN: 4}),
        (Option.RETAIN_LONGITUDINAL_FULL_DATES, {Action.KEEP: 165}),
        (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, {Action.CLEAN: 165}),
        (Option.CLEAN_DESCRIPTORS, {Action.CLEAN: 125}),
        (Option.CLEAN_STRUCTURED_CONTENT, {Action.CLEAN: 3}),
        (Option.CLEAN_GRAPHICS, {Action.CLEAN: 4}),
    ],
)
def test_option_columns_have_the_counts_of_deid_md_1_3(option: Option, counts: dict[Action, int]) -> None:
    assert Counter(row.options[option] for row in BASE_ROWS if option in row.options) == counts


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        (0x00100010, Action.ZERO),  # Patient's Name
        (0x00100030, Action.ZERO),  # Patient's Birth Date
        (0x00080018, Action.UID),  # SOP Instance UID
        (0x00081140, Action.REMOVE_OR_ZERO_OR_REMAP),  # Referenced Image Sequence
        (0x00082112, Action.REMOVE_OR_ZERO_OR_REMAP),  # Source Image Sequence
    ],
)
def test_spot_checked_rows_have_the_standards_basic_action(tag: int, action: Action) -> None:
    assert PROFILE_TABLE.basic_action(tag) is action


def test_study_date_is_cleaned_under_retain_longitudinal_modified_dates() -> None:
    study_date = row(0x00080020)
    assert study_date.options[Option.RETAIN_LONGITUDINAL_MODIFIED_DATES] is Action.CLEAN
    assert study_date.action_under(Option.RETAIN_LONGITUDINAL_MODIFIED_DATES) is Action.CLEAN
    assert study_date.action_under(Option.RETAIN_UIDS) is Action.ZERO


@pytest.mark.parametrize(
    ("tag", "pattern"),
    [
        (0x60003000, "(60XX,3000)"),
        (0x601E3000, "(60XX,3000)"),
        (0x60024000, "(60XX,4000)"),
        (0x00090010, "(GGGG,EEEE) WHERE GGGG IS ODD"),
        (0x60013000, "(GGGG,EEEE) WHERE GGGG IS ODD"),  # an odd group is private, not an overlay
        (0x50000010, "(50XX,XXXX)"),
        (0x501E3000, "(50XX,XXXX)"),
    ],
)
def test_pattern_rows_match_their_family(tag: int, pattern: str) -> None:
    matched = PROFILE_TABLE.row_for(tag)
    assert isinstance(matched, PatternRow)
    assert matched.pattern == pattern
    assert PROFILE_TABLE.pattern_action(tag) is Action.REMOVE
    assert [row.pattern for row in PATTERN_ROWS if row.matches(tag)] == [pattern]


def test_patterns_leave_the_rest_of_their_groups_alone() -> None:
    assert PROFILE_TABLE.row_for(0x60000010) is None  # Overlay Rows: not in Table E.1-1
    assert PROFILE_TABLE.pattern_action(0x00100010) is None


def test_an_exact_row_wins_over_a_pattern() -> None:
    kept = ProfileRow(
        tag=0x00090010, name="test", basic=Action.KEEP, options={}, in_std_comp_iod=None, edition="test"
    )
    table = ProfileTable(rows=(kept,), patterns=PATTERN_ROWS)
    assert table.basic_action(0x00090010) is Action.KEEP
    assert table.pattern_action(0x00090010) is Action.REMOVE


def test_rows_are_sorted_unique_and_their_names_normalised() -> None:
    tags = [row.tag for row in PROFILE_ROWS]
    assert tags == sorted(set(tags))
    names = [row.name for row in (*PROFILE_ROWS, *PATTERN_ROWS)]
    assert all(name == " ".join(name.split()) and "(see Note" not in name for name in names)
    assert row(0x00880200).name == "Icon Image Sequence"


def test_a_table_refuses_two_rows_for_one_tag() -> None:
    with pytest.raises(ValueError, match="two rows"):
        ProfileTable(rows=(PROFILE_ROWS[0], PROFILE_ROWS[0]), patterns=())
