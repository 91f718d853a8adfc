"""JSON log lines with correlation ids, and the filter that keeps PHI out of them.

The first line of defence is that no code logs a dataset value; this module is the second: extras
not on the allow-list are dropped, UID-shaped strings are redacted from messages, and exception
text (pydicom's messages quote values) is replaced by the exception's type.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
assoc_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("assoc_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

ALLOWED_EXTRAS = frozenset(
    {
        "event",
        "instance_ref",
        "study_ref",
        "rejection_ref",
        "calling_ae",
        "called_ae",
        "peer",
        "sop_class",
        "transfer_syntax",
        "status",
        "error_code",
        "duration_ms",
        "bytes",
        "model",
        "attempt",
        "outcome",
        "processes",
        "port",
        "host",
        "ae_title",
        "count",
        "pid",
        "reason",
        "job_kind",
        "deidentified",
        "withheld",
        "unchanged",
    }
)
# Standard UIDs (SOP classes, transfer syntaxes) are not PHI and help operators; anything else that
# looks like a UID (three or more numeric components, as in 2.25.<uuid>) may embed an MRN or a date,
# so it is redacted. IPv4 addresses (four components of at most 255) are kept for operators.
_UID_LIKE = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9.])")
_STANDARD_UID_PREFIX = "1.2.840.10008."
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(len(part) <= 3 and int(part) <= 255 for part in parts)


def _redact_uids(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        value = match.group(0)
        return value if value.startswith(_STANDARD_UID_PREFIX) or _is_ipv4(value) else "<uid>"

    return _UID_LIKE.sub(replace, text)


def new_correlation_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@contextmanager
def bound(var: contextvars.ContextVar[str | None], value: str) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, msg, ids, then allow-listed extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
            "msg": record.getMessage(),
            "correlation_id": correlation_id.get(),
            "assoc_id": assoc_id.get(),
            "job_id": job_id.get(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key in _RECORD_FIELDS or key == "event":
                continue
            if key in ALLOWED_EXTRAS:
                payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc_type"] = record.exc_info[0].__name__
            cause = record.exc_info[1].__cause__ if record.exc_info[1] is not None else None
            if cause is not None:
                payload["exc_cause_type"] = type(cause).__name__
        # Redact the whole line, so a UID nested in a list or dict extra is caught too.
        return _redact_uids(json.dumps(payload, default=str, ensure_ascii=False))


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Configure the root logger once per process; pynetdicom stays at WARNING (its DEBUG prints UIDs)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
