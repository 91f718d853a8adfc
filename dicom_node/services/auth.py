"""Authentication for the admin API: users with argon2 hashes, login tokens, machine tokens, lockout.

Tokens are 256 random bits shown once and stored as their SHA-256, so a database dump holds no usable
token. A login for an unknown user still runs one argon2 verification, so timing does not tell which
user names exist. Every login, logout, lockout and token creation is audited; failures name the user
only by the internal id (never the typed name, which could be anything, a patient's name included).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.core import metrics
from dicom_node.core.errors import DicomNodeError
from storage import accounts, audit
from storage.accounts import TokenOwner
from storage.models import Role, TokenKind

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "dn_"
_USERNAME: Final = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ROLE_ORDER: Final = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
MIN_PASSWORD_LENGTH: Final = 12
# A token's last use is recorded at most this often, so most authenticated requests write nothing.
LAST_USED_RESOLUTION: Final = timedelta(minutes=5)


class AuthenticationFailed(DicomNodeError):
    """The user name or password is wrong, or the token is not valid."""

    code = "auth.failed"


class AccountLocked(DicomNodeError):
    """Too many failed logins: the account is locked for a while."""

    code = "auth.locked"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__()
        self.retry_after_seconds = retry_after_seconds


class UserInvalid(DicomNodeError):
    """The user name must be 1-64 letters, digits or _.@- and the password at least 12 characters."""

    code = "auth.user_invalid"


class UserAlreadyExists(DicomNodeError):
    """A user with that name already exists."""

    code = "auth.user_exists"


class LastAdmin(DicomNodeError):
    """The change would leave no enabled admin user and no live admin machine token."""

    code = "auth.last_admin"


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    session_seconds: float = 1800.0
    lockout_attempts: int = 5
    lockout_seconds: float = 900.0


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token value, shown once to its owner."""

    token: str
    token_id: str
    role: str
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the owner of a valid token."""

    token_id: str
    kind: str
    role: str
    name: str
    user_id: str | None

    @property
    def actor(self) -> str:
        """How the audit trail names the caller: an internal id, never a typed name."""
        return self.user_id or self.token_id

    def may(self, required: Role) -> bool:
        return _ROLE_ORDER.index(Role(self.role)) >= _ROLE_ORDER.index(required)


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    return _hasher().hash(secrets.token_hex(16))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_new_password(password: str) -> str:
    """The argon2id hash of an acceptable new password (UserInvalid when too short)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserInvalid()
    return _hasher().hash(password)


def add_user(
    node: Node,
    *,
    username: str,
    password: str,
    role: Role,
    actor: str = "cli",
    client_address: str | None = None,
) -> str:
    if _USERNAME.fullmatch(username) is None:
        raise UserInvalid()
    password_hash = hash_new_password(password)
    now = node.clock.now()
    with node.sessions.begin() as session:
        if accounts.user_by_name(session, username) is not None:
            raise UserAlreadyExists()
        user_id = accounts.add_user(
            session, username=username, password_hash=password_hash, role=role.value, now=now
        )
        audit.append(
            session,
            actor=actor,
            action="user_create",
            outcome="success",
            object_ref=user_id,
            client_address=client_address,
            now=now,
            detail={"role": role.value},
        )
    return user_id


def login(
    node: Node, policy: AuthPolicy, *, username: str, password: str, client_address: str | None = None
) -> IssuedToken:
    """A session token for a correct password; counts failures and locks the account after too many."""
    now = node.clock.now()
    # A failure is raised only after the transaction commits, so its counter, lock and audit event stay.
    with node.sessions.begin() as session:
        user = accounts.user_by_name(session, username, for_update=True)
        if user is None or user.disabled:
            _verify(_dummy_hash(), password)
            _audit_login(session, None, "failure", now, client_address, reason="auth.failed")
            metrics.AUTH_ATTEMPTS.labels(result="failure").inc()
            failure: DicomNodeError = AuthenticationFailed()
        elif user.locked_until is not None and user.locked_until > now:
            _audit_login(session, user.id, "failure", now, client_address, reason="auth.locked")
            metrics.AUTH_ATTEMPTS.labels(result="locked").inc()
            failure = AccountLocked(max(1, int((user.locked_until - now).total_seconds())))
        elif not _verify(user.password_hash, password):
            user.failed_logins += 1
            reason = "auth.failed"
            if user.failed_logins >= policy.lockout_attempts:
                user.locked_until = now + timedelta(seconds=policy.lockout_seconds)
                user.failed_logins = 0
                reason = "auth.locked"
            _audit_login(session, user.id, "failure", now, client_address, reason=reason)
            metrics.AUTH_ATTEMPTS.labels(result="failure").inc()
            failure = AuthenticationFailed()
        else:
            user.failed_logins = 0
            user.locked_until = None
            user.last_login_at = now
            token = _new_token()
            expires_at = now + timedelta(seconds=policy.session_seconds)
            token_id = accounts.add_token(
                session,
                kind=TokenKind.SESSION.value,
                role=user.role,
                token_sha256=token_digest(token),
                now=now,
                expires_at=expires_at,
                user_id=user.id,
            )
            _audit_login(session, user.id, "success", now, client_address)
            metrics.AUTH_ATTEMPTS.labels(result="success").inc()
            return IssuedToken(token=token, token_id=token_id, role=user.role, expires_at=expires_at)
    raise failure


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _audit_login(
    session: Session,
    user_id: str | None,
    outcome: str,
    now: datetime,
    client_address: str | None,
    *,
    reason: str | None = None,
) -> None:
    audit.append(
        session,
        actor=user_id or "unknown",
        action="login",
        outcome=outcome,
        object_ref=user_id,
        client_address=client_address,
        now=now,
        detail={"reason": reason} if reason else None,
    )


def create_machine_token(node: Node, *, role: Role, name: str) -> IssuedToken:
    """A token for a machine (a RIS, a script): no expiry, revocable; printed once by the CLI."""
    if _USERNAME.fullmatch(name) is None:
        raise UserInvalid("The token name must be 1-64 letters, digits or _.@-")
    now = node.clock.now()
    token = _new_token()
    with node.sessions.begin() as session:
        token_id = accounts.add_token(
            session,
            kind=TokenKind.MACHINE.value,
            role=role.value,
            token_sha256=token_digest(token),
            now=now,
            expires_at=None,
            name=name,
        )
        audit.append(
            session,
            actor="cli",
            action="token_create",
            outcome="success",
            object_ref=token_id,
            now=now,
            detail={"role": role.value},
        )
    return IssuedToken(token=token, token_id=token_id, role=role.value, expires_at=None)


def authenticate(node: Node, token: str) -> Principal:
    """The caller behind a bearer token, or AuthenticationFailed."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        raise AuthenticationFailed()
    now = node.clock.now()
    with node.sessions() as session:
        owner: TokenOwner | None = accounts.token_owner(session, token_sha256=token_digest(token), now=now)
    if owner is None:
        raise AuthenticationFailed()
    not_since = now - LAST_USED_RESOLUTION
    if owner.last_used_at is None or owner.last_used_at < not_since:
        try:
            with node.sessions.begin() as session:
                accounts.mark_used(session, owner.token_id, now=now, not_since=not_since)
        except SQLAlchemyError:  # bookkeeping: a busy database must not fail the request itself
            logger.warning("token last use not recorded", extra={"event": "token_last_use_failed"})
    return Principal(
        token_id=owner.token_id, kind=owner.kind, role=owner.role, name=owner.name, user_id=owner.user_id
    )


class PasswordWrong(DicomNodeError):
    """The current password is not correct."""

    code = "auth.password_wrong"


class NotAUser(DicomNodeError):
    """Only a user's session can change a password; machine tokens have none."""

    code = "auth.not_a_user"


def change_password(
    node: Node, principal: Principal, *, current: str, new: str, client_address: str | None = None
) -> None:
    """A user changes their own password, proving the current one; their other sessions end."""
    if principal.user_id is None:
        raise NotAUser()
    password_hash = hash_new_password(new)
    now = node.clock.now()
    with node.sessions.begin() as session:
        user = accounts.user_by_id(session, principal.user_id, for_update=True)
        if user is None:
            raise AuthenticationFailed()
        done = _verify(user.password_hash, current)
        if done:
            user.password_hash = password_hash
            accounts.revoke_user_sessions(session, user.id, now=now, keep=principal.token_id)
        audit_attempt(
            session,
            actor=principal.actor,
            action="password_change",
            object_ref=user.id,
            refused=None if done else PasswordWrong.code,
            now=now,
            client_address=client_address,
        )
    if not done:
        raise PasswordWrong()


def audit_attempt(
    session: Session,
    *,
    actor: str,
    action: str,
    object_ref: str,
    refused: str | None,
    now: datetime,
    client_address: str | None,
    detail: dict[str, object] | None = None,
) -> None:
    """An access action done, or refused with its reason code: a security officer wants to see both."""
    audit.append(
        session,
        actor=actor,
        action=action,
        outcome="failure" if refused else "success",
        object_ref=object_ref,
        client_address=client_address,
        now=now,
        detail={**(detail or {}), "reason": refused} if refused else detail,
    )


def apply_keeping_an_admin(session: Session, now: datetime, change: Callable[[], object]) -> bool:
    """Apply an access change in a savepoint, or undo it (False) when it would leave no admin.

    No change may take away the last way in as admin; `dicom-node token create` on the host stays the
    way back. A node that never had an admin is not held to it. The caller audits either outcome.
    """
    accounts.lock_access_changes(session)
    before = accounts.admin_count(session, now)
    savepoint = session.begin_nested()
    change()
    session.flush()
    if before and not accounts.admin_count(session, now):
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def logout(node: Node, principal: Principal, *, client_address: str | None = None) -> None:
    """Revoke the token in use; refused (LastAdmin) for the last admin machine token."""
    now = node.clock.now()
    with node.sessions.begin() as session:
        done = apply_keeping_an_admin(
            session, now, lambda: accounts.revoke_token(session, principal.token_id, now=now)
        )
        audit_attempt(
            session,
            actor=principal.actor,
            action="logout",
            object_ref=principal.token_id,
            refused=None if done else LastAdmin.code,
            now=now,
            client_address=client_address,
        )
    if not done:
        raise LastAdmin()
