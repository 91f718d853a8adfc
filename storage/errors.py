"""Storage's branch of the exception tree; foreign errors are mapped into it where they enter."""

from __future__ import annotations


class StorageError(Exception):
    """The storage layer failed."""

    code = "storage.error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip().splitlines()[0])


class DatabaseUnavailable(StorageError):
    """The database could not complete the transaction."""

    code = "storage.database_unavailable"


class BlobStoreFailed(StorageError):
    """The blob store could not durably write the object."""

    code = "storage.blob_write_failed"


class BlobNotFound(StorageError):
    """The blob store holds no object with that key."""

    code = "storage.blob_not_found"
