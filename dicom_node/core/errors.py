"""The node's exception tree. Storage errors live in `storage.errors` and join it here.

    DicomNodeError
    ├── SettingsInvalid                  settings.invalid
    ├── InstanceRejected                 instance.*   (one subclass per validation code family)
    ├── PeerNotFound                     peer.not_found
    └── PeerAlreadyExists                peer.already_exists
    storage.errors.StorageError
    ├── DatabaseUnavailable              storage.database_unavailable
    └── BlobStoreFailed                  storage.blob_write_failed

Every concrete class has a class-level `code` and a docstring that is its default message. Messages
are ours and never interpolate dataset values: context travels as attributes holding internal ids.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """The node could not complete the request."""

    code = "node.error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.code).strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0])


class SettingsInvalid(DicomNodeError):
    """The settings are invalid."""

    code = "settings.invalid"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(f"The settings are invalid: {detail}" if detail else None)


class InstanceRejected(DicomNodeError):
    """The instance failed validation and was not stored."""

    code = "instance.rejected"

    def __init__(self, codes: tuple[str, ...], *, rejection_ref: str | None = None) -> None:
        super().__init__()
        self.codes = codes
        self.rejection_ref = rejection_ref


class PeerNotFound(DicomNodeError):
    """No remote AE with that title is configured."""

    code = "peer.not_found"


class PeerAlreadyExists(DicomNodeError):
    """A remote AE with that title is already configured."""

    code = "peer.already_exists"
