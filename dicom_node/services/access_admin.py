"""Who may use the admin API, for admins: tokens (list, revoke); users (list, role, state, unlock, password).

The CLI and the API call these. Every change is audited by internal id only. A change that takes away
a user's access (role changed, disabled) revokes the user's live sessions at once: a session token
carries the role it was issued with, so keeping it would keep the old rights. No change may leave the
node without an admin (an enabled admin user or a live admin machine token); `dicom-node token create`
on the host remains the way back in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from dicom_node.services import auth
from dicom_node.services.auth import LastAdmin, apply_keeping_an_admin
from dicom_node.services.views import Conflict, FilterInvalid, NotFound, NothingToChange, Page, PageRequest
from storage import accounts
from storage.listing import fetch_page
from storage.models import ApiToken, Role, TokenKind, User

if TYPE_CHECKING:
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class TokenView:
    id: str
    kind: str
    role: str
    name: str | None
    user_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class UserView:
    id: str
    username: str
    role: str
    disabled: bool
    locked_until: datetime | None
    failed_logins: int
    created_at: datetime
    last_login_at: datetime | None


def _token_view(token: ApiToken, now: datetime) -> TokenView:
    live = token.revoked_at is None and (token.expires_at is None or token.expires_at > now)
    return TokenView(
        id=token.id,
        kind=token.kind,
        role=token.role,
        name=token.name,
        user_id=token.user_id,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        last_used_at=token.last_used_at,
        active=live,
    )


def _user_view(user: User, now: datetime) -> UserView:
    locked = user.locked_until if user.locked_until is not None and user.locked_until > now else None
    return UserView(
        id=user.id,
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        locked_until=locked,
        failed_logins=user.failed_logins,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def list_tokens(
    node: Node,
    request: PageRequest,
    *,
    kind: str | None = None,
    active: bool | None = None,
    user_id: str | None = None,
) -> Page[TokenView]:
    if kind is not None and kind not in {k.value for k in TokenKind}:
        raise FilterInvalid()
    now = node.clock.now()
    statement = select(ApiToken)
    if kind is not None:
        statement = statement.where(ApiToken.kind == kind)
    if active is not None:
        statement = statement.where(accounts.live_token(now) if active else ~accounts.live_token(now))
    if user_id is not None:
        statement = statement.where(ApiToken.user_id == user_id)
    with node.sessions() as session:
        rows, total = fetch_page(
            session,
            statement.order_by(ApiToken.created_at.desc(), ApiToken.id),
            page=request.page,
            page_size=request.page_size,
        )
        items = [_token_view(token, now) for token in rows]
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)


def revoke_token(node: Node, token_id: str, *, actor: str, client_address: str | None = None) -> TokenView:
    """Revoke any token, a machine's or a user's session; a revoked token answers 401 from then on."""
    now = node.clock.now()
    with node.sessions.begin() as session:
        accounts.lock_access_changes(session)
        token = session.get(ApiToken, token_id)
        if token is None:
            raise NotFound()
        if token.revoked_at is not None:
            raise Conflict()
        done = apply_keeping_an_admin(session, now, lambda: accounts.revoke_token(session, token_id, now=now))
        auth.audit_attempt(
            session,
            actor=actor,
            action="token_revoke",
            object_ref=token_id,
            refused=None if done else LastAdmin.code,
            now=now,
            client_address=client_address,
            detail={"kind": token.kind, "role": token.role},
        )
    if not done:
        raise LastAdmin()
    return _token_view_of(node, token_id)


def _token_view_of(node: Node, token_id: str) -> TokenView:
    with node.sessions() as session:
        token = session.get(ApiToken, token_id)
        if token is None:
            raise NotFound()
        return _token_view(token, node.clock.now())


def list_users(
    node: Node, request: PageRequest, *, role: str | None = None, disabled: bool | None = None
) -> Page[UserView]:
    if role is not None and role not in {r.value for r in Role}:
        raise FilterInvalid()
    statement = select(User)
    if role is not None:
        statement = statement.where(User.role == role)
    if disabled is not None:
        statement = statement.where(User.disabled.is_(disabled))
    now = node.clock.now()
    with node.sessions() as session:
        rows, total = fetch_page(
            session,
            statement.order_by(func.lower(User.username), User.id),
            page=request.page,
            page_size=request.page_size,
        )
        items = [_user_view(user, now) for user in rows]
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)


def get_user(node: Node, user_id: str) -> UserView:
    with node.sessions() as session:
        user = session.get(User, user_id)
        if user is None:
            raise NotFound()
        return _user_view(user, node.clock.now())


def user_id_of(node: Node, username: str) -> str:
    """The internal id of a user name (the CLI takes names; the API and the audit trail use ids)."""
    with node.sessions() as session:
        user = accounts.user_by_name(session, username)
        if user is None:
            raise NotFound()
        return user.id


def update_user(
    node: Node,
    user_id: str,
    *,
    role: Role | None = None,
    disabled: bool | None = None,
    unlock: bool = False,
    password: str | None = None,
    actor: str,
    client_address: str | None = None,
) -> UserView:
    """Change a user's role, enabled state or password, or lift a lockout.

    A role change, a disable or a new password ends the user's sessions; a new password also lifts a
    lockout (the usual reason an admin sets one). Values equal to the current ones change nothing and
    write no audit event. The password is never in the audit trail, only that one was set.
    """
    if role is None and disabled is None and not unlock and password is None:
        raise NothingToChange()
    password_hash = auth.hash_new_password(password) if password is not None else None
    unlock = unlock or password is not None
    now = node.clock.now()
    with node.sessions.begin() as session:
        accounts.lock_access_changes(session)
        user = session.get(User, user_id)
        if user is None:
            raise NotFound()
        detail: dict[str, Any] = {}
        if role is not None and role.value != user.role:
            detail["role"] = [user.role, role.value]
        if disabled is not None and disabled != user.disabled:
            detail["disabled"] = disabled
        if unlock and (user.failed_logins or (user.locked_until is not None and user.locked_until > now)):
            detail["unlocked"] = True
        if password_hash is not None:
            detail["password_set"] = True
        if not detail:
            return _user_view(user, now)

        def change() -> None:
            if "role" in detail:
                user.role = detail["role"][1]
            if "disabled" in detail:
                user.disabled = detail["disabled"]
            if "unlocked" in detail:
                user.locked_until = None
                user.failed_logins = 0
            if password_hash is not None:
                user.password_hash = password_hash
            if "role" in detail or detail.get("disabled") is True or password_hash is not None:
                detail["sessions_revoked"] = accounts.revoke_user_sessions(session, user_id, now=now)

        done = apply_keeping_an_admin(session, now, change)
        if not done:
            detail.pop("sessions_revoked", None)  # undone with the rest
        auth.audit_attempt(
            session,
            actor=actor,
            action="user_update",
            object_ref=user_id,
            refused=None if done else LastAdmin.code,
            now=now,
            client_address=client_address,
            detail=detail,
        )
    if not done:
        raise LastAdmin()
    return get_user(node, user_id)
