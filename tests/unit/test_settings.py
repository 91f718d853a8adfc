"""Settings: defaults, precedence, refusals, the example file, and the AE title parser."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dicom_node.core.errors import SettingsInvalid
from dicom_node.core.settings import DuplicatePolicy, Settings, load_settings, parse_ae_title

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "dicom-node.example.toml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DICOM_NODE_* from the shell, and a scratch working directory for relative defaults."""
    for name in list(os.environ):
        if name.startswith("DICOM_NODE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_with_zero_configuration(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path("./var")
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'var' / 'dicom-node.db').resolve()}"
    assert settings.ae_title == "DICOM_NODE"
    assert settings.dicom_port == 11112
    assert settings.allowed_calling_aes == []
    assert settings.modality_allowlist == []
    assert settings.duplicate_policy is DuplicatePolicy.KEEP
    assert settings.tls_cert_file is None
    assert settings.log_level == "INFO"
    assert settings.scp_processes >= 1


def test_an_explicit_database_url_wins_over_the_sqlite_default() -> None:
    url = "postgresql+psycopg2://u@127.0.0.1:5432/db"
    assert load_settings(database_url=url).resolved_database_url == url


def test_precedence_init_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        tmp_path,
        'ae_title = "FROM_FILE"\ndicom_port = 1001\napi_port = 2001\nmax_rows = 3001\n',
    )
    monkeypatch.setenv("DICOM_NODE_AE_TITLE", "FROM_ENV")
    monkeypatch.setenv("DICOM_NODE_DICOM_PORT", "1002")
    settings = load_settings(config, ae_title="FROM_INIT")
    assert settings.ae_title == "FROM_INIT"  # init > env > file
    assert settings.dicom_port == 1002  # env > file
    assert settings.api_port == 2001  # file > default
    assert settings.max_rows == 3001
    assert settings.max_columns == 65535  # default


def test_none_overrides_are_not_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI flags that were not given arrive as None and must not hide the environment."""
    monkeypatch.setenv("DICOM_NODE_AE_TITLE", "FROM_ENV")
    assert load_settings(None, ae_title=None).ae_title == "FROM_ENV"


def test_the_config_file_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(tmp_path, 'ae_title = "VIA_ENV_FILE"\n')
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(config))
    assert load_settings().ae_title == "VIA_ENV_FILE"


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsInvalid):
        load_settings(tmp_path / "nope.toml")


def test_an_unknown_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_AE_TITEL", "TYPO")
    with pytest.raises(SettingsInvalid) as raised:
        load_settings()
    assert "DICOM_NODE_AE_TITEL" in str(raised.value)


def test_a_typo_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'ae_titel = "TYPO"\n')
    with pytest.raises(SettingsInvalid):
        load_settings(config)


def test_an_unknown_init_keyword_is_refused() -> None:
    with pytest.raises(SettingsInvalid):
        load_settings(ae_titel="TYPO")


@pytest.mark.parametrize(
    "title",
    ["", "   ", "A" * 17, "BACK\\SLASH", "TAB\tTITLE", "NUL\x00", "DEL\x7f", "ÉCHO", "NEWLINE\n"],
)
def test_an_invalid_ae_title_is_refused(title: str) -> None:
    with pytest.raises(SettingsInvalid):
        load_settings(ae_title=title)


def test_an_invalid_calling_ae_in_the_allowlist_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_ALLOWED_CALLING_AES", "GOOD,BAD\\ONE")
    with pytest.raises(SettingsInvalid):
        load_settings()


def test_comma_separated_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_ALLOWED_CALLING_AES", " STORESCU, MODALITY_1 ,,PACS ")
    monkeypatch.setenv("DICOM_NODE_MODALITY_ALLOWLIST", "ct,mr")
    settings = load_settings()
    assert settings.allowed_calling_aes == ["STORESCU", "MODALITY_1", "PACS"]
    assert settings.modality_allowlist == ["CT", "MR"]


def test_lists_from_the_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'allowed_calling_aes = ["A", "B"]\nmodality_allowlist = ["ct"]\n')
    settings = load_settings(config)
    assert settings.allowed_calling_aes == ["A", "B"]
    assert settings.modality_allowlist == ["CT"]


def test_tls_key_without_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsInvalid):
        load_settings(tls_key_file=tmp_path / "node.key")
    with pytest.raises(SettingsInvalid):
        load_settings(tls_cert_file=tmp_path / "node.crt")
    with pytest.raises(SettingsInvalid):
        load_settings(tls_ca_file=tmp_path / "ca.crt")
    both = load_settings(tls_cert_file=tmp_path / "node.crt", tls_key_file=tmp_path / "node.key")
    assert both.tls_key_file == tmp_path / "node.key"


@pytest.mark.parametrize(
    "overrides",
    [
        {"dicom_port": 70000},
        {"dicom_port": -1},
        {"study_idle_seconds": 0},
        {"workers": -1},
        {"workers": 65},
        {"max_rows": 0},
        {"duplicate_policy": "delete"},
        {"log_level": "verbose"},
    ],
)
def test_out_of_range_values_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(SettingsInvalid):
        load_settings(**overrides)


def test_the_error_names_the_field_but_not_a_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_DEID_SECRET", "s3cr3t-value")
    with pytest.raises(SettingsInvalid) as raised:
        load_settings(dicom_port="s3cr3t-value")
    assert "dicom_port" in str(raised.value)
    assert "s3cr3t-value" not in str(raised.value)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.ae_title = "OTHER"  # type: ignore[misc]


# --- the example file cannot drift ---------------------------------------------------------------

_KEY_LINE = re.compile(r"^#?\s*([a-z_][a-z0-9_]*)\s*=", re.MULTILINE)


def _documented_keys() -> set[str]:
    """Every key the example shows, set or commented out (`# key = value`)."""
    return set(_KEY_LINE.findall(EXAMPLE.read_text()))


def test_the_example_file_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.ae_title == "DICOM_NODE"


def test_every_key_in_the_example_is_a_settings_field() -> None:
    assert _documented_keys() - set(Settings.model_fields) == set()


def test_every_settings_field_appears_in_the_example() -> None:
    assert set(Settings.model_fields) - _documented_keys() == set()


def test_the_values_shown_in_the_example_are_the_defaults() -> None:
    """The file says "the values shown are the defaults"; hold it to that."""
    shown = tomllib.loads(EXAMPLE.read_text())
    defaults = load_settings()
    for key, value in shown.items():
        default = getattr(defaults, key)
        if isinstance(default, Path):
            assert Path(value) == default, key
        else:
            assert value == default, key


# --- parse_ae_title ------------------------------------------------------------------------------

_AE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
valid_titles = st.text(_AE_CHARS, min_size=1, max_size=16).filter(lambda t: t.strip() != "")


@given(valid_titles)
def test_a_valid_ae_title_round_trips_stripped(title: str) -> None:
    parsed = parse_ae_title(title)
    assert parsed == title.strip()
    assert parse_ae_title(parsed) == parsed


_control = st.one_of(st.characters(max_codepoint=0x1F), st.just("\x7f"))


@given(valid_titles, st.one_of(st.just("\\"), _control), st.integers(min_value=0, max_value=16))
@example("ABC", "\n", 16)  # `$` in a regex also matches before a final newline
def test_a_backslash_or_control_character_anywhere_is_refused(title: str, bad: str, where: int) -> None:
    where = min(where, len(title))
    candidate = (title[:where] + bad + title[where:])[:16]
    if bad not in candidate:
        candidate = candidate[:-1] + bad
    with pytest.raises(ValueError):
        parse_ae_title(candidate)


@given(st.text(_AE_CHARS, min_size=17, max_size=40))
def test_more_than_sixteen_characters_is_refused(title: str) -> None:
    with pytest.raises(ValueError):
        parse_ae_title(title)


@given(st.text(st.characters(min_codepoint=0x80), min_size=1, max_size=8))
def test_non_ascii_is_refused(title: str) -> None:
    with pytest.raises(ValueError):
        parse_ae_title(title)


@given(st.text())
@example("NODE\n")
def test_the_parser_returns_a_title_or_raises_value_error(text: str) -> None:
    try:
        parsed = parse_ae_title(text)
    except ValueError:
        return
    assert all(0x20 <= ord(c) <= 0x7E and c != "\\" for c in text), "accepted input must be valid"
    assert 1 <= len(parsed) <= 16
    assert "\\" not in parsed
    assert all(0x20 <= ord(c) <= 0x7E for c in parsed)
