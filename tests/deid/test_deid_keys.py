"""The de-identification secret file and the keyed pseudonyms (DEID.md 4.3)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import config
from pydicom.valuerep import validate_value

from dicom_node.dicom.deid_keys import SECRET_BYTES, DeidKeys, DeidSecretInvalid, load_or_create_secret

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
KEYS = DeidKeys.from_secret(SECRET)
UID_TEXT = st.from_regex(r"[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){1,8}", fullmatch=True)
ANY_TEXT = st.text(max_size=64)


@given(UID_TEXT)
def test_a_uid_pseudonym_is_a_valid_2_25_uid_of_at_most_64_characters(original: str) -> None:
    pseudo = KEYS.uid(original)
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", pseudo)
    assert len(pseudo) <= 44
    value = int(pseudo.removeprefix("2.25."))
    assert value < 2**128
    octets = value.to_bytes(16, "big")
    assert octets[6] >> 4 == 8, "RFC 9562 version 8"
    assert octets[8] >> 6 == 0b10, "RFC 9562 variant"


@given(UID_TEXT)
def test_a_uid_pseudonym_is_the_same_every_time_and_ignores_padding(original: str) -> None:
    again = DeidKeys.from_secret(SECRET)
    assert KEYS.uid(original) == again.uid(original) == KEYS.uid(original + "\0") == KEYS.uid(original + " ")


@given(UID_TEXT)
def test_another_secret_gives_another_uid(original: str) -> None:
    assert DeidKeys.from_secret(OTHER_SECRET).uid(original) != KEYS.uid(original)


def test_two_uids_get_two_pseudonyms() -> None:
    assert KEYS.uid("1.2.3.4") != KEYS.uid("1.2.3.5")


@given(ANY_TEXT, ANY_TEXT)
def test_patient_pseudonyms_are_p_and_15_base32_characters(issuer: str, patient_id: str) -> None:
    pseudo = KEYS.patient_pseudonym(issuer, patient_id)
    assert re.fullmatch(r"P[A-Z2-7]{15}", pseudo)
    assert pseudo == DeidKeys.from_secret(SECRET).patient_pseudonym(issuer, patient_id)


def test_one_local_id_under_two_issuers_gives_two_patients() -> None:
    assert KEYS.patient_pseudonym("HOSP_A", "4711") != KEYS.patient_pseudonym("HOSP_B", "4711")
    # The separator keeps ("AB", "C") apart from ("A", "BC").
    assert KEYS.patient_pseudonym("AB", "C") != KEYS.patient_pseudonym("A", "BC")


def test_another_secret_gives_another_patient_pseudonym() -> None:
    other = DeidKeys.from_secret(OTHER_SECRET)
    assert other.patient_pseudonym("H", "4711") != KEYS.patient_pseudonym("H", "4711")
    assert other.key_id != KEYS.key_id


@given(ANY_TEXT, ANY_TEXT)
def test_accession_and_study_id_pseudonyms_fit_sh(issuer: str, value: str) -> None:
    accession = KEYS.accession(issuer, value)
    study_id = KEYS.study_id(issuer, value)
    assert re.fullmatch(r"[A-Z2-7]{16}", accession)
    assert re.fullmatch(r"[A-Z2-7]{8}", study_id)
    validate_value("SH", accession, config.RAISE)
    validate_value("SH", study_id, config.RAISE)
    assert study_id != accession[:8], "study IDs are labelled apart from accession numbers"


@given(ANY_TEXT, ANY_TEXT)
def test_date_shifts_are_negative_whole_days_within_the_bounds(issuer: str, patient_id: str) -> None:
    days = KEYS.date_shift_days(issuer, patient_id)
    assert -3650 <= days <= -365
    assert days == DeidKeys.from_secret(SECRET).date_shift_days(issuer, patient_id)
    narrow = KEYS.date_shift_days(issuer, patient_id, minimum=10, maximum=20)
    assert -20 <= narrow <= -10


def test_date_shifts_differ_between_patients() -> None:
    shifts = {KEYS.date_shift_days("H", f"patient-{number}") for number in range(50)}
    assert len(shifts) > 40


def test_date_shift_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        KEYS.date_shift_days("H", "1", minimum=20, maximum=10)


def test_key_id_is_the_start_of_the_secrets_sha256_and_the_repr_hides_the_keys() -> None:
    assert re.fullmatch(r"[0-9a-f]{8}", KEYS.key_id)
    assert repr(KEYS) == f"DeidKeys(key_id={KEYS.key_id!r})"


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(DeidSecretInvalid):
        DeidKeys.from_secret(b"short")


def test_the_secret_file_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "deid.secret"
    secret = load_or_create_secret(path)
    assert len(secret) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == secret
    assert load_or_create_secret(path) == secret
    assert [entry.name for entry in path.parent.iterdir()] == ["deid.secret"], "no temporary file left behind"


def test_two_nodes_get_two_secrets(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_secret_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "deid.secret"
    path.write_bytes(b"x" * size)
    path.chmod(0o600)
    with pytest.raises(DeidSecretInvalid) as raised:
        load_or_create_secret(path)
    assert isinstance(raised.value, ValueError)
    assert raised.value.code == "deid.secret_invalid"
    assert path.read_bytes() == b"x" * size, "a refused file is left for the operator"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "deid.secret"
    path.write_bytes(b"x" * SECRET_BYTES)
    path.chmod(mode)
    with pytest.raises(DeidSecretInvalid):
        load_or_create_secret(path)


def test_a_secret_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * SECRET_BYTES)
    target.chmod(0o600)
    link = tmp_path / "deid.secret"
    os.symlink(target, link)
    with pytest.raises(DeidSecretInvalid):
        load_or_create_secret(link)
