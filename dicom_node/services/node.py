"""The node's dependencies, built once by the composition root and handed to every adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from dicom_node.core.clock import Clock
    from dicom_node.core.settings import DuplicatePolicy
    from dicom_node.dicom.validation import ValidationRules
    from storage.blobs import FileBlobStore


@dataclass(frozen=True, slots=True)
class IngestPolicy:
    rules: ValidationRules
    duplicate_policy: DuplicatePolicy


@dataclass(frozen=True, slots=True)
class Node:
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: FileBlobStore
    clock: Clock
    ingest: IngestPolicy
    study_idle_seconds: float
    job_max_attempts: int = 5
