"""The one settings object: defaults < TOML file < environment (DICOM_NODE_*) < CLI flags.

Validators here are pure: they refuse unsafe combinations, and the composition root does the I/O.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_node.core.errors import SettingsInvalid

ENV_PREFIX = "DICOM_NODE_"
CONFIG_ENV = "DICOM_NODE_CONFIG"

# PS3.5 6.2: AE titles are up to 16 characters of the default repertoire, no backslash or control chars.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives again with different bytes."""

    KEEP = "keep"
    REPLACE = "replace"


def parse_ae_title(value: str) -> str:
    """An AE title with its padding removed, or ValueError."""
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters without a backslash")
    return value.strip()


def _default_processes() -> int:
    return max(1, os.cpu_count() or 1)


def _split_list(value: Any) -> Any:
    """Accept `A,B` from the environment as well as a TOML list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every knob of the node. Field names are lower_snake; env names are DICOM_NODE_ + upper."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    toml_file: ClassVar[Path | None] = None

    data_dir: Path = Path("./var")
    database_url: str | None = None
    ae_title: str = "DICOM_NODE"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    api_session_seconds: float = Field(default=1800.0, ge=60, le=86400)
    api_lockout_attempts: int = Field(default=5, ge=1, le=100)
    api_lockout_seconds: float = Field(default=900.0, ge=1)
    api_rate_per_minute: int = Field(default=600, ge=1)
    api_client_rate_per_minute: int = Field(default=1200, ge=1)
    # `scp` and `worker` roles serve /metrics here (serve and api: on API_PORT); 0 turns it off.
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    study_idle_seconds: float = Field(default=10.0, gt=0)
    allowed_calling_aes: CommaList = Field(default_factory=list)
    modality_allowlist: CommaList = Field(default_factory=list)
    deid_secret: SecretStr | None = None
    inference_providers: str = "auto"
    # Job worker processes `serve` runs (0: none here; run `dicom-node worker` elsewhere).
    workers: int = Field(default=1, ge=0, le=64)
    job_poll_seconds: float = Field(default=1.0, gt=0)
    job_lease_seconds: float = Field(default=300.0, ge=5)
    job_max_attempts: int = Field(default=5, ge=1, le=100)
    scp_processes: int = Field(default_factory=_default_processes, ge=1, le=64)
    max_associations: int = Field(default=32, ge=1, le=1024)
    max_pdu_size: int = Field(default=0, ge=0)
    max_rows: int = Field(default=65535, ge=1, le=65535)
    max_columns: int = Field(default=65535, ge=1, le=65535)
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    dimse_timeout_seconds: float = Field(default=30.0, gt=0)
    completion_poll_seconds: float = Field(default=1.0, gt=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)

    @field_validator("allowed_calling_aes", "modality_allowlist", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return parse_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _calling_aes(cls, value: list[str]) -> list[str]:
        return [parse_ae_title(title) for title in value]

    @field_validator("modality_allowlist")
    @classmethod
    def _modalities(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level is one of DEBUG, INFO, WARNING, ERROR")
        return level

    @model_validator(mode="after")
    def _refuse_unsafe_combinations(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_ca_file needs tls_cert_file and tls_key_file")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside DATA_DIR."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dicom-node.db').resolve()}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; the only way to make one.

    Unknown DICOM_NODE_* environment variables are refused, because pydantic-settings would ignore
    a typo silently and the node would start with a default the admin did not mean.
    """
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | {CONFIG_ENV}
    unknown = sorted(name for name in os.environ if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        raise SettingsInvalid(detail=f"unknown environment variables: {', '.join(unknown)}")
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is not None and not config_file.is_file():
        raise SettingsInvalid(detail=f"config file not found: {config_file}")
    cls: type[Settings] = (
        type("FileSettings", (Settings,), {"toml_file": config_file}) if config_file else Settings
    )
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise SettingsInvalid(detail=_describe_validation_error(exc)) from exc


def _describe_validation_error(exc: ValueError) -> str:
    """Name the fields at fault without echoing the values (a secret could be one)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors()]
        return "; ".join(parts)
    return "invalid settings"
