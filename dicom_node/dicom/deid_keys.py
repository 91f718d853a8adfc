"""The de-identification secret and the keyed pseudonyms derived from it (DEID.md 4.3).

One secret, one subkey per purpose: the same secret gives the same UIDs, patient pseudonyms and date offsets
in every process and after every restart, and nothing here can be inverted without the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from dicom_node.core.errors import DicomNodeError

if TYPE_CHECKING:
    from pathlib import Path

SECRET_BYTES: Final = 32
_FIELD_SEPARATOR: Final = "\x1f"
# RFC 9562 5.8: version 8 (custom) in the high nibble of octet 6, variant 0b10 in the top bits of octet 8.
_UUID_VERSION_OCTET: Final = 6
_UUID_VARIANT_OCTET: Final = 8


class DeidSecretInvalid(DicomNodeError, ValueError):
    """The de-identification secret is missing, of the wrong size or readable by others."""

    code = "deid.secret_invalid"


def load_or_create_secret(path: Path) -> bytes:
    """The secret at `path`, created (mode 0600, atomically) on first use; refuses a weak or exposed one."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(SECRET_BYTES)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, secret)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        # link() refuses an existing name, so two processes starting together agree on the first secret.
        os.link(temporary, path)
    except FileExistsError:
        return _read_secret(path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return secret


def _read_secret(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # A symlink (ELOOP) or an unreadable file: never follow it to a secret someone else controls.
        raise DeidSecretInvalid() from exc
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise DeidSecretInvalid()
        if status.st_mode & 0o077:
            raise DeidSecretInvalid("The de-identification secret is readable by group or others.")
        data = os.read(descriptor, SECRET_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(data) != SECRET_BYTES:
        raise DeidSecretInvalid("The de-identification secret has the wrong size.")
    return data


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _hmac(key: bytes, message: str | bytes) -> bytes:
    data = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(key, data, hashlib.sha256).digest()


def _base32(digest: bytes, length: int) -> str:
    return base64.b32encode(digest).decode("ascii")[:length]


@dataclass(frozen=True, slots=True)
class DeidKeys:
    """The subkeys of one secret; repr shows only the key id, so a logged object leaks nothing."""

    key_id: str
    uid_key: bytes = field(repr=False)
    patient_key: bytes = field(repr=False)
    accession_key: bytes = field(repr=False)
    date_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> DeidKeys:
        """Derive one subkey per purpose, HMAC(secret, "dicom-node/<purpose>/v1")."""
        if not isinstance(secret, bytes) or len(secret) < SECRET_BYTES:
            raise DeidSecretInvalid("The de-identification secret is shorter than 32 bytes.")
        return cls(
            key_id=hashlib.sha256(secret).hexdigest()[:8],
            uid_key=_hmac(secret, b"dicom-node/uid/v1"),
            patient_key=_hmac(secret, b"dicom-node/pid/v1"),
            accession_key=_hmac(secret, b"dicom-node/acc/v1"),
            date_key=_hmac(secret, b"dicom-node/date/v1"),
        )

    def uid(self, original: str) -> str:
        """A 2.25 UID (at most 44 characters) from the keyed hash of `original` without its padding."""
        octets = bytearray(_hmac(self.uid_key, original.rstrip("\0 "))[:16])
        octets[_UUID_VERSION_OCTET] = (octets[_UUID_VERSION_OCTET] & 0x0F) | 0x80
        octets[_UUID_VARIANT_OCTET] = (octets[_UUID_VARIANT_OCTET] & 0x3F) | 0x80
        return f"2.25.{int.from_bytes(octets, 'big')}"

    def patient_pseudonym(self, issuer: str, patient_id: str) -> str:
        """ "P" and 15 base32 characters: one pseudonym per (issuer, patient ID)."""
        return "P" + _base32(_hmac(self.patient_key, issuer + _FIELD_SEPARATOR + patient_id), 15)

    def accession(self, issuer: str, accession: str) -> str:
        """A 16-character keyed pseudonym for an accession number (fits SH)."""
        return _base32(_hmac(self.accession_key, issuer + _FIELD_SEPARATOR + accession), 16)

    def study_id(self, issuer: str, study_id: str) -> str:
        """An 8-character keyed pseudonym for a Study ID, labelled apart from accession numbers."""
        message = "study_id" + _FIELD_SEPARATOR + issuer + _FIELD_SEPARATOR + study_id
        return _base32(_hmac(self.accession_key, message), 8)

    def date_shift_days(
        self, issuer: str, patient_id: str, *, minimum: int = 365, maximum: int = 3650
    ) -> int:
        """Whole days (negative, in [-maximum, -minimum]) every date of this patient moves by."""
        if minimum < 0 or maximum < minimum:
            raise ValueError("date shift bounds must satisfy 0 <= minimum <= maximum")
        digest = _hmac(self.date_key, issuer + _FIELD_SEPARATOR + patient_id)
        return -(minimum + int.from_bytes(digest, "big") % (maximum - minimum + 1))
