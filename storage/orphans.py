"""Which blobs rows refer to: the rest of the store are orphans of a crash between rename and commit."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import DuplicateReceipt, Instance


def referenced_store_keys(session: Session, keys: Collection[str]) -> set[str]:
    """The subset of `keys` that an instance or a duplicate receipt refers to."""
    if not keys:
        return set()
    by_instance = session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys)))
    by_receipt = session.scalars(
        select(DuplicateReceipt.retained_blob_key).where(DuplicateReceipt.retained_blob_key.in_(keys))
    )
    return {key for key in [*by_instance, *by_receipt] if key is not None}
