"""Login, lockout, logout, session expiry, machine tokens and disabled users, through the API."""

from __future__ import annotations

from sqlalchemy import select, update

from dicom_node.services.auth import add_user, create_machine_token
from storage.models import AuditEvent, Role, User
from tests.api.conftest import Api, assert_error

PASSWORD = "a long enough password"
LOGIN = "/api/v1/auth/login"


def _login(api: Api, username: str, password: str = PASSWORD) -> tuple[int, dict[str, object]]:
    answer = api.post(LOGIN, json={"username": username, "password": password})
    return answer.status_code, answer.json()


def test_a_login_returns_a_session_token_that_works_until_logout(api: Api) -> None:
    add_user(api.node, username="olivia", password=PASSWORD, role=Role.OPERATOR)
    answer = api.post(LOGIN, json={"username": "olivia", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["role"] == "operator" and body["expires_at"]
    token = body["token"]
    me = api.get("/api/v1/auth/me", token=token)
    assert me.status_code == 200
    assert me.json() == {"name": "olivia", "role": "operator", "kind": "session"}
    assert api.get("/api/v1/studies", token=token).status_code == 200

    assert api.post("/api/v1/auth/logout", token=token).status_code == 204
    assert_error(api.get("/api/v1/auth/me", token=token), 401, "auth.failed")
    with api.node.sessions() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-2:] == ["login", "logout"]


def test_a_wrong_password_and_an_unknown_user_fail_alike(api: Api) -> None:
    add_user(api.node, username="walter", password=PASSWORD, role=Role.VIEWER)
    wrong = assert_error(api.post(LOGIN, json={"username": "walter", "password": "nope"}), 401, "auth.failed")
    unknown = assert_error(
        api.post(LOGIN, json={"username": "ghost", "password": PASSWORD}), 401, "auth.failed"
    )
    assert wrong["message"] == unknown["message"]


def test_the_account_locks_after_too_many_failures_and_unlocks_after_the_lockout(api: Api) -> None:
    add_user(api.node, username="lara", password=PASSWORD, role=Role.VIEWER)
    attempts = api.settings.api_lockout_attempts
    for _ in range(attempts):
        assert_error(api.post(LOGIN, json={"username": "lara", "password": "wrong"}), 401, "auth.failed")
    locked = api.post(LOGIN, json={"username": "lara", "password": PASSWORD})
    assert_error(locked, 423, "auth.locked")
    retry_after = int(locked.headers["retry-after"])
    assert 0 < retry_after <= api.settings.api_lockout_seconds

    api.clock.advance(api.settings.api_lockout_seconds - 5)
    assert_error(api.post(LOGIN, json={"username": "lara", "password": PASSWORD}), 423, "auth.locked")
    api.clock.advance(10)
    assert _login(api, "lara")[0] == 200


def test_a_session_token_expires_with_the_clock(api: Api) -> None:
    add_user(api.node, username="erin", password=PASSWORD, role=Role.VIEWER)
    status, body = _login(api, "erin")
    assert status == 200
    token = str(body["token"])
    api.clock.advance(api.settings.api_session_seconds - 1)
    assert api.get("/api/v1/auth/me", token=token).status_code == 200
    api.clock.advance(2)
    assert_error(api.get("/api/v1/auth/me", token=token), 401, "auth.failed")


def test_a_machine_token_works_without_expiry(api: Api) -> None:
    token = create_machine_token(api.node, role=Role.OPERATOR, name="ris").token
    api.clock.advance(365 * 86400)
    me = api.get("/api/v1/auth/me", token=token)
    assert me.status_code == 200
    assert me.json() == {"name": "ris", "role": "operator", "kind": "machine"}


def test_a_disabled_users_token_stops_working_and_it_cannot_log_in(api: Api) -> None:
    add_user(api.node, username="dora", password=PASSWORD, role=Role.ADMIN)
    status, body = _login(api, "dora")
    assert status == 200
    token = str(body["token"])
    assert api.get("/api/v1/audit", token=token).status_code == 200
    with api.node.sessions.begin() as session:
        session.execute(update(User).where(User.username == "dora").values(disabled=True))
    assert_error(api.get("/api/v1/audit", token=token), 401, "auth.failed")
    assert_error(api.post(LOGIN, json={"username": "dora", "password": PASSWORD}), 401, "auth.failed")


def test_a_login_with_missing_fields_is_invalid_and_names_them(api: Api) -> None:
    error = assert_error(api.post(LOGIN, json={"username": "x"}), 422, "request.invalid")
    assert "password" in error["message"]
