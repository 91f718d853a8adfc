"""The ORM tables. PHI lives only in `original_*` columns and in the pseudonym map (`pseudonyms`).

Rows are addressed by internal ids (`ins_…`, `std_…`) that embed nothing from the data, so an id can
appear in a log line, a metric exemplar or an error message without leaking a UID.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id(prefix: str) -> str:
    """An internal id: a short prefix naming the kind, then 32 random hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; naive UTC in the column, identical on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


class StudyStatus(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class DuplicateOutcome(StrEnum):
    IDENTICAL = "identical"
    KEPT_EXISTING = "kept_existing"
    REPLACED = "replaced"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


class EventKind(StrEnum):
    STUDY_COMPLETE = "study_complete"
    STUDY_REOPENED = "study_reopened"
    STUDY_DEIDENTIFIED = "study_deidentified"


class JobKind(StrEnum):
    DEIDENTIFY = "deidentify"


class DeidOutcome(StrEnum):
    DEIDENTIFIED = "deidentified"
    # Not passed on (burned-in text, encapsulated document, unreadable...): kept from inference.
    WITHHELD = "withheld"


class Role(StrEnum):
    """Admin API roles, ordered: each one may do everything the ones before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class TokenKind(StrEnum):
    SESSION = "session"  # from a login; short-lived; revoked by logout
    MACHINE = "machine"  # from `dicom-node token create`; lives until revoked


class Base(DeclarativeBase):
    pass


def _enum(enum_cls: type[StrEnum]) -> String:
    return String(max(len(member.value) for member in enum_cls))


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_status_last_received_at", "status", "last_received_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    original_study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    original_patient_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(_enum(StudyStatus))
    # Incremented each time the study completes; a late instance re-opens it for the next one.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Set by de-identification: what non-PHI views (API lists, logs' peers) show instead of the originals.
    pseudonym_patient_id: Mapped[str | None] = mapped_column(String(64))
    pseudonym_study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    modalities: Mapped[str | None] = mapped_column(String(64))
    deidentified_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Series(Base):
    __tablename__ = "series"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    original_series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[str] = mapped_column(ForeignKey("series.id"), index=True)
    original_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(80))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    association_ref: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Rejection(Base):
    __tablename__ = "rejections"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    association_ref: Mapped[str | None] = mapped_column(String(40))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    called_ae_title: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    # Comma-separated stable error codes, e.g. "instance.type1_missing,instance.uid_invalid".
    codes: Mapped[str] = mapped_column(Text)
    quarantine_key: Mapped[str | None] = mapped_column(String(80))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))


class ValidationResult(Base):
    __tablename__ = "validation_results"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), index=True)
    rejection_id: Mapped[str | None] = mapped_column(ForeignKey("rejections.id"), index=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    codes: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DuplicateReceipt(Base):
    """A SOP Instance UID received again: never silent, whatever the policy did."""

    __tablename__ = "duplicate_receipts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    association_ref: Mapped[str | None] = mapped_column(String(40))
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    policy: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(_enum(DuplicateOutcome))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # kept_existing: the new bytes; replaced: the superseded blob. Both stay in the store; none deleted.
    retained_blob_key: Mapped[str | None] = mapped_column(String(80))


class Peer(Base):
    __tablename__ = "peers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    push_results: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Event(Base):
    """The pipeline's outbox: append-only, consumed in id order by the later stages."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # Wide enough for kinds later stages add without a migration per kind.
    kind: Mapped[str] = mapped_column(String(32), index=True)
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Job(Base):
    """A durable unit of work for the pipeline stages (de-identify, infer, deliver)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_run_at", "status", "run_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(_enum(JobStatus))
    study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id"), index=True)
    # The study generation the job was made for: a late instance re-opens the study for the next one.
    generation: Mapped[int | None] = mapped_column(Integer)
    # Which worker holds the lease; a worker whose lease expired cannot finish the job any more.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    run_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error_code: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PseudonymEntry(Base):
    """The pseudonym map (PHI): original value ↔ keyed pseudonym, per key, for re-identification."""

    __tablename__ = "pseudonyms"
    __table_args__ = (
        UniqueConstraint("key_id", "kind", "original", name="uq_pseudonyms_key_kind_original"),
        Index("ix_pseudonyms_kind_pseudonym", "kind", "pseudonym"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16))
    # patient_id | accession | study_id | uid
    kind: Mapped[str] = mapped_column(String(16))
    original: Mapped[str] = mapped_column(String(255))
    pseudonym: Mapped[str] = mapped_column(String(64))
    first_study_id: Mapped[str | None] = mapped_column(ForeignKey("studies.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeidInstance(Base):
    """One instance's de-identification (DEID.md 4.6 "deid_report"): outcome, copy and report, no PHI.

    The pseudonymous UIDs are not PHI; they tie the copy to the map for re-identification.
    """

    __tablename__ = "deid_instances"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), unique=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    # The original's sha256: a replaced original is de-identified again, an unchanged one is not.
    source_sha256: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(_enum(DeidOutcome))
    reason_code: Mapped[str | None] = mapped_column(String(80))
    blob_key: Mapped[str | None] = mapped_column(String(80))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    pixel_decision: Mapped[str | None] = mapped_column(String(40))
    # JSON: counts per action code, private creators removed (filtered names).
    report: Mapped[str] = mapped_column(Text, default="{}")
    key_id: Mapped[str] = mapped_column(String(16))
    policy_hash: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditEvent(Base):
    """The tamper-evident audit trail: each row's hash covers its fields and the previous row's hash."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    object_ref: Mapped[str | None] = mapped_column(String(80))
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    # JSON of counts and codes only: never a value from a data set.
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class User(Base):
    """An admin API user: argon2 password hash, role, and the lockout counter."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(_enum(Role))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ApiToken(Base):
    """A bearer token, stored as the SHA-256 of its value (tokens are 256 random bits: no salt needed)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(_enum(TokenKind))
    name: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(_enum(Role))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
