"""Users and bearer tokens of the admin API. Passwords arrive here already hashed; tokens as SHA-256."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, text, update
from sqlalchemy.orm import Session

from storage.db import is_postgresql
from storage.models import ApiToken, Role, TokenKind, User, new_id

# An arbitrary constant naming "changes of who may get in" among PostgreSQL advisory locks.
_ACCESS_LOCK_KEY = 0x61636365


def lock_access_changes(session: Session) -> None:
    """Serialise access changes for the rest of the transaction, so two concurrent changes cannot
    each see the other's admin still there and together remove the last one (SQLite: the writer lock).

    This relies on READ COMMITTED (the engine's default): each later statement sees what the previous
    holder of the lock committed. Under REPEATABLE READ the snapshot would predate the lock.
    """
    if is_postgresql(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ACCESS_LOCK_KEY})


def live_token(now: datetime) -> ColumnElement[bool]:
    """Not revoked and not expired."""
    return ApiToken.revoked_at.is_(None) & (ApiToken.expires_at.is_(None) | (ApiToken.expires_at > now))


def admin_count(session: Session, now: datetime) -> int:
    """Enabled admin users plus live admin machine tokens: the ways an admin can still get in."""
    users = session.scalar(
        select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.disabled.is_(False))
    )
    machines = session.scalar(
        select(func.count())
        .select_from(ApiToken)
        .where(ApiToken.kind == TokenKind.MACHINE.value, ApiToken.role == Role.ADMIN.value, live_token(now))
    )
    return int(users or 0) + int(machines or 0)


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Who a valid token speaks for."""

    token_id: str
    kind: str
    role: str
    user_id: str | None
    name: str
    last_used_at: datetime | None


def add_user(session: Session, *, username: str, password_hash: str, role: str, now: datetime) -> str:
    user_id = new_id("usr")
    session.add(User(id=user_id, username=username, password_hash=password_hash, role=role, created_at=now))
    session.flush()
    return user_id


def user_by_name(session: Session, username: str, *, for_update: bool = False) -> User | None:
    statement = select(User).where(User.username == username)
    if for_update:
        statement = statement.with_for_update()
    return session.scalars(statement).first()


def user_by_id(session: Session, user_id: str, *, for_update: bool = False) -> User | None:
    return session.get(User, user_id, with_for_update=for_update)


def add_token(
    session: Session,
    *,
    kind: str,
    role: str,
    token_sha256: str,
    now: datetime,
    expires_at: datetime | None,
    user_id: str | None = None,
    name: str | None = None,
) -> str:
    token_id = new_id("tok")
    session.add(
        ApiToken(
            id=token_id,
            kind=kind,
            role=role,
            token_sha256=token_sha256,
            user_id=user_id,
            name=name,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return token_id


def token_owner(session: Session, *, token_sha256: str, now: datetime) -> TokenOwner | None:
    """The owner of a live token: not revoked, not expired, its user (if any) not disabled."""
    row = session.execute(
        select(ApiToken, User)
        .outerjoin(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_sha256 == token_sha256, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    token, user = row
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if user is not None and user.disabled:
        return None
    name = user.username if user is not None else (token.name or token.id)
    return TokenOwner(
        token_id=token.id,
        kind=token.kind,
        role=token.role,
        user_id=token.user_id,
        name=name,
        last_used_at=token.last_used_at,
    )


def revoke_token(session: Session, token_id: str, *, now: datetime) -> bool:
    result = session.execute(
        update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def revoke_user_sessions(session: Session, user_id: str, *, now: datetime, keep: str | None = None) -> int:
    """Revoke a user's live session tokens (its access or password changed), all but `keep`."""
    statement = update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    if keep is not None:
        statement = statement.where(ApiToken.id != keep)
    result = session.execute(statement.values(revoked_at=now))
    return int(result.rowcount)  # type: ignore[attr-defined]


def mark_used(session: Session, token_id: str, *, now: datetime, not_since: datetime) -> None:
    """Record that a token was used, at most once per interval, so most requests write nothing."""
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            (ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at < not_since),
        )
        .values(last_used_at=now)
    )
