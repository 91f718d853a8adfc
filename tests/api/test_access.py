"""Tokens and users for admins: list, revoke, add, change role, disable, unlock, and the last-admin guard."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

from sqlalchemy import select

from dicom_node.services import access_admin
from dicom_node.services.access_admin import LastAdmin
from dicom_node.services.auth import LAST_USED_RESOLUTION, add_user, create_machine_token
from storage.models import ApiToken, AuditEvent, Role
from tests.api.conftest import Api, assert_error

PASSWORD = "a long enough password"
TOKENS = "/api/v1/tokens"
USERS = "/api/v1/users"


def _login(api: Api, username: str, password: str = PASSWORD) -> str:
    answer = api.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def _audit(api: Api, action: str) -> list[tuple[str, str | None, str | None]]:
    with api.node.sessions() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.object_ref, AuditEvent.detail)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def _token_id(api: Api, role: Role) -> str:
    me = api.get(f"{TOKENS}?kind=machine", Role.ADMIN).json()["items"]
    return next(item["id"] for item in me if item["name"] == f"test-{role.value}")


def test_tokens_are_listed_with_their_state_and_never_their_value_or_hash(api: Api) -> None:
    add_user(api.node, username="nina", password=PASSWORD, role=Role.VIEWER)
    session_token = _login(api, "nina")
    listed = api.get(TOKENS, Role.ADMIN)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["total"] == 4  # three machine tokens of the fixture and nina's session
    kinds = sorted(item["kind"] for item in body["items"])
    assert kinds == ["machine", "machine", "machine", "session"]
    assert session_token not in listed.text
    with api.node.sessions() as session:
        digests = session.scalars(select(ApiToken.token_sha256)).all()
    assert not any(digest in listed.text for digest in digests)
    assert all(item["active"] for item in body["items"])
    sessions = api.get(f"{TOKENS}?kind=session", Role.ADMIN).json()["items"]
    assert [item["kind"] for item in sessions] == ["session"] and sessions[0]["user_id"].startswith("usr_")
    assert_error(api.get(f"{TOKENS}?kind=forever", Role.ADMIN), 422, "request.filter_invalid")


def test_a_revoked_token_stops_working_at_once_and_the_revocation_is_audited(api: Api) -> None:
    viewer = _token_id(api, Role.VIEWER)
    assert api.get("/api/v1/studies", Role.VIEWER).status_code == 200
    revoked = api.post(f"{TOKENS}/{viewer}/revoke", Role.ADMIN)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["active"] is False and revoked.json()["revoked_at"]
    assert_error(api.get("/api/v1/studies", Role.VIEWER), 401, "auth.failed")
    assert_error(api.post(f"{TOKENS}/{viewer}/revoke", Role.ADMIN), 409, "request.conflict")
    assert_error(api.post(f"{TOKENS}/tok_nosuch/revoke", Role.ADMIN), 404, "request.not_found")
    assert api.get(f"{TOKENS}?active=false", Role.ADMIN).json()["total"] == 1
    assert api.get(f"{TOKENS}?active=true", Role.ADMIN).json()["total"] == 2
    events = _audit(api, "token_revoke")
    assert len(events) == 1 and events[0][1] == viewer
    assert events[0][0] == _token_id(api, Role.ADMIN)  # the actor is the admin's token id


def test_the_last_way_in_as_admin_cannot_be_revoked_or_logged_out_and_each_refusal_is_audited(
    api: Api,
) -> None:
    admin = _token_id(api, Role.ADMIN)
    assert_error(api.post(f"{TOKENS}/{admin}/revoke", Role.ADMIN), 409, "auth.last_admin")
    assert_error(api.post("/api/v1/auth/logout", Role.ADMIN), 409, "auth.last_admin")
    assert api.get(TOKENS, Role.ADMIN).status_code == 200  # still works
    (refused,) = _audit(api, "token_revoke")
    assert refused[1] == admin and json.loads(refused[2] or "{}")["reason"] == "auth.last_admin"
    with api.node.sessions() as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.action.in_(["token_revoke", "logout"]))
        ).all()
    assert outcomes == ["failure", "failure"]
    add_user(api.node, username="ada", password=PASSWORD, role=Role.ADMIN)
    assert api.post(f"{TOKENS}/{admin}/revoke", Role.ADMIN).status_code == 200
    assert_error(api.get(TOKENS, Role.ADMIN), 401, "auth.failed")
    ada = _login(api, "ada")
    ada_id = api.get(USERS, token=ada).json()["items"][0]["id"]
    for change in ({"disabled": True}, {"role": "operator"}):
        refused = api.request("PATCH", f"{USERS}/{ada_id}", token=ada, json=change)
        assert_error(refused, 409, "auth.last_admin")
    (ada_now,) = api.get(USERS, token=ada).json()["items"]
    assert (ada_now["disabled"], ada_now["role"]) == (False, "admin")
    assert api.get("/api/v1/auth/me", token=ada).status_code == 200  # the refused change revoked nothing
    assert [json.loads(event[2] or "{}")["reason"] for event in _audit(api, "user_update")] == [
        "auth.last_admin",
        "auth.last_admin",
    ]


def test_a_token_records_its_last_use_at_most_once_per_interval(api: Api) -> None:
    operator = _token_id(api, Role.OPERATOR)

    def last_used() -> object:
        with api.node.sessions() as session:
            return session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == operator))

    assert last_used() is None
    assert api.get("/api/v1/jobs", Role.OPERATOR).status_code == 200
    first = last_used()
    assert first is not None
    api.clock.advance(LAST_USED_RESOLUTION.total_seconds() / 2)
    api.get("/api/v1/jobs", Role.OPERATOR)
    assert last_used() == first
    api.clock.advance(LAST_USED_RESOLUTION.total_seconds())
    api.get("/api/v1/jobs", Role.OPERATOR)
    later = last_used()
    assert isinstance(later, type(first)) and later - first >= LAST_USED_RESOLUTION  # type: ignore[operator]


def test_an_admin_adds_a_user_who_can_then_log_in(api: Api) -> None:
    created = api.post(USERS, Role.ADMIN, json={"username": "omar", "password": PASSWORD, "role": "operator"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["username"] == "omar" and body["role"] == "operator" and body["disabled"] is False
    assert "password" not in created.text and PASSWORD not in created.text
    assert api.get("/api/v1/auth/me", token=_login(api, "omar")).json()["role"] == "operator"
    again = api.post(USERS, Role.ADMIN, json={"username": "omar", "password": PASSWORD, "role": "viewer"})
    assert_error(again, 409, "auth.user_exists")
    short = api.post(USERS, Role.ADMIN, json={"username": "pia", "password": "short", "role": "viewer"})
    assert_error(short, 422, "request.invalid")
    assert PASSWORD not in str(_audit(api, "user_create"))
    assert [event[0] for event in _audit(api, "user_create")] == [_token_id(api, Role.ADMIN)]


def test_users_are_listed_and_read_by_id_with_filters(api: Api) -> None:
    for name, role in (("bea", Role.VIEWER), ("carl", Role.OPERATOR), ("dora", Role.ADMIN)):
        add_user(api.node, username=name, password=PASSWORD, role=role)
    listed = api.get(USERS, Role.ADMIN).json()
    assert [item["username"] for item in listed["items"]] == ["bea", "carl", "dora"]
    assert all("password" not in key for item in listed["items"] for key in item)
    assert "$argon2" not in api.get(USERS, Role.ADMIN).text
    assert [i["username"] for i in api.get(f"{USERS}?role=operator", Role.ADMIN).json()["items"]] == ["carl"]
    assert_error(api.get(f"{USERS}?role=root", Role.ADMIN), 422, "request.filter_invalid")
    bea = listed["items"][0]
    assert api.get(f"{USERS}/{bea['id']}", Role.ADMIN).json() == bea
    assert_error(api.get(f"{USERS}/usr_nosuch", Role.ADMIN), 404, "request.not_found")


def test_a_role_change_ends_the_users_sessions_so_the_old_rights_do_not_linger(api: Api) -> None:
    user_id = add_user(api.node, username="eve", password=PASSWORD, role=Role.OPERATOR)
    first, second = _login(api, "eve"), _login(api, "eve")
    changed = api.request("PATCH", f"{USERS}/{user_id}", Role.ADMIN, json={"role": "viewer"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["role"] == "viewer"
    for token in (first, second):
        assert_error(api.get("/api/v1/auth/me", token=token), 401, "auth.failed")
    assert api.get("/api/v1/auth/me", token=_login(api, "eve")).json()["role"] == "viewer"
    (event,) = _audit(api, "user_update")
    assert event[1] == user_id and event[2] is not None
    assert json.loads(event[2]) == {"role": ["operator", "viewer"], "sessions_revoked": 2}


def test_a_disabled_user_cannot_log_in_until_enabled_again(api: Api) -> None:
    user_id = add_user(api.node, username="finn", password=PASSWORD, role=Role.VIEWER)
    token = _login(api, "finn")
    path = f"{USERS}/{user_id}"
    assert api.request("PATCH", path, Role.ADMIN, json={"disabled": True}).json()["disabled"] is True
    assert_error(api.get("/api/v1/auth/me", token=token), 401, "auth.failed")
    refused = api.post("/api/v1/auth/login", json={"username": "finn", "password": PASSWORD})
    assert_error(refused, 401, "auth.failed")
    assert api.request("PATCH", path, Role.ADMIN, json={"disabled": False}).json()["disabled"] is False
    assert_error(api.get("/api/v1/auth/me", token=token), 401, "auth.failed")  # old sessions stay revoked
    _login(api, "finn")


def test_an_admin_unlocks_a_locked_account_before_the_lockout_ends(api: Api) -> None:
    user_id = add_user(api.node, username="gus", password=PASSWORD, role=Role.VIEWER)
    for _ in range(api.settings.api_lockout_attempts):
        api.post("/api/v1/auth/login", json={"username": "gus", "password": "wrong password"})
    assert_error(
        api.post("/api/v1/auth/login", json={"username": "gus", "password": PASSWORD}), 423, "auth.locked"
    )
    path = f"{USERS}/{user_id}"
    assert api.get(path, Role.ADMIN).json()["locked_until"] is not None
    unlocked = api.request("PATCH", path, Role.ADMIN, json={"unlock": True}).json()
    assert unlocked["locked_until"] is None and unlocked["failed_logins"] == 0
    _login(api, "gus")
    (event,) = _audit(api, "user_update")
    assert event[2] is not None and json.loads(event[2]) == {"unlocked": True}


def test_an_empty_change_or_unknown_field_is_refused_and_an_equal_value_changes_nothing(api: Api) -> None:
    user_id = add_user(api.node, username="hal", password=PASSWORD, role=Role.VIEWER)
    path = f"{USERS}/{user_id}"
    assert_error(api.request("PATCH", path, Role.ADMIN, json={}), 422, "request.invalid")
    assert_error(api.request("PATCH", path, Role.ADMIN, json={"role": "root"}), 422, "request.invalid")
    sneaky = api.request("PATCH", path, Role.ADMIN, json={"rol": "admin", "unlock": True})
    assert_error(sneaky, 422, "request.invalid")
    message = sneaky.json()["error"]["message"]
    assert "unknown field" in message and "rol" not in message and "admin" not in message
    token = _login(api, "hal")
    same = api.request("PATCH", path, Role.ADMIN, json={"role": "viewer", "disabled": False, "unlock": True})
    assert same.status_code == 200 and same.json()["role"] == "viewer"
    assert api.get("/api/v1/auth/me", token=token).status_code == 200  # nothing changed: session kept
    assert_error(
        api.request("PATCH", f"{USERS}/usr_nosuch", Role.ADMIN, json={"unlock": True}),
        404,
        "request.not_found",
    )
    assert _audit(api, "user_update") == []


def test_a_lockout_shown_to_admins_ends_when_its_time_has_passed(api: Api) -> None:
    user_id = add_user(api.node, username="ivy", password=PASSWORD, role=Role.VIEWER)
    for _ in range(api.settings.api_lockout_attempts):
        api.post("/api/v1/auth/login", json={"username": "ivy", "password": "wrong password"})
    assert api.get(f"{USERS}/{user_id}", Role.ADMIN).json()["locked_until"] is not None
    api.clock.advance(api.settings.api_lockout_seconds + timedelta(seconds=1).total_seconds())
    assert api.get(f"{USERS}/{user_id}", Role.ADMIN).json()["locked_until"] is None


def _live_admin_tokens(api: Api) -> list[str]:
    with api.node.sessions() as session:
        return list(
            session.scalars(
                select(ApiToken.id).where(ApiToken.role == "admin", ApiToken.revoked_at.is_(None))
            ).all()
        )


def _revoke(api: Api, token_id: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
    barrier.wait()
    try:
        access_admin.revoke_token(api.node, token_id, actor="test")
        outcomes.append("revoked")
    except LastAdmin:
        outcomes.append("refused")


def test_two_concurrent_revocations_cannot_together_remove_the_last_admin(api: Api) -> None:
    """Each would see the other's token still live; the access lock makes the second see the first."""
    for round_ in range(5):
        (live,) = _live_admin_tokens(api)
        extra = create_machine_token(api.node, role=Role.ADMIN, name=f"extra-{round_}").token_id
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_revoke, args=(api, target, barrier, outcomes))
            for target in (live, extra)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["refused", "revoked"], round_
        assert len(_live_admin_tokens(api)) == 1


def test_users_are_ordered_by_name_regardless_of_case_on_both_databases(api: Api) -> None:
    for name in ("bob", "Alice", "carol", "Bea"):
        add_user(api.node, username=name, password=PASSWORD, role=Role.VIEWER)
    names = [item["username"] for item in api.get(USERS, Role.ADMIN).json()["items"]]
    assert names == ["Alice", "Bea", "bob", "carol"]


def test_a_concurrent_token_revocation_and_admin_disable_cannot_remove_the_last_admin(api: Api) -> None:
    """The two changes lower the count through different tables; the shared lock orders them."""
    for round_ in range(4):
        (token_id,) = _live_admin_tokens(api)
        user_id = add_user(api.node, username=f"admin{round_}", password=PASSWORD, role=Role.ADMIN)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def disable(
            user_id: str = user_id, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes
        ) -> None:
            barrier.wait()
            try:
                access_admin.update_user(api.node, user_id, disabled=True, actor="test")
                outcomes.append("disabled")
            except LastAdmin:
                outcomes.append("refused")

        threads = [
            threading.Thread(target=_revoke, args=(api, token_id, barrier, outcomes)),
            threading.Thread(target=disable),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert "refused" in outcomes and len(outcomes) == 2, (round_, outcomes)
        if "revoked" in outcomes:  # the user stayed: make a token the next round's way in, drop the user
            create_machine_token(api.node, role=Role.ADMIN, name=f"next-{round_}")
            access_admin.update_user(api.node, user_id, disabled=True, actor="test")


def test_an_admin_resets_a_password_which_ends_sessions_lifts_the_lockout_and_is_never_audited(
    api: Api,
) -> None:
    user_id = add_user(api.node, username="jon", password=PASSWORD, role=Role.OPERATOR)
    old_session = _login(api, "jon")
    for _ in range(api.settings.api_lockout_attempts):
        api.post("/api/v1/auth/login", json={"username": "jon", "password": "wrong password"})
    new_password = "another long password"
    reset = api.request("PATCH", f"{USERS}/{user_id}", Role.ADMIN, json={"password": new_password})
    assert reset.status_code == 200, reset.text
    assert reset.json()["locked_until"] is None and new_password not in reset.text
    assert_error(api.get("/api/v1/auth/me", token=old_session), 401, "auth.failed")
    assert_error(
        api.post("/api/v1/auth/login", json={"username": "jon", "password": PASSWORD}), 401, "auth.failed"
    )
    _login(api, "jon", new_password)
    (event,) = _audit(api, "user_update")
    assert json.loads(event[2] or "{}") == {"password_set": True, "unlocked": True, "sessions_revoked": 1}
    with api.node.sessions() as session:
        everything = " ".join(str(row) for row in session.execute(select(AuditEvent.__table__)).all())
    assert new_password not in everything and PASSWORD not in everything
    short = api.request("PATCH", f"{USERS}/{user_id}", Role.ADMIN, json={"password": "short"})
    assert_error(short, 422, "request.invalid")


def test_a_user_changes_their_own_password_keeping_this_session_and_ending_the_others(api: Api) -> None:
    add_user(api.node, username="kim", password=PASSWORD, role=Role.VIEWER)
    this, other = _login(api, "kim"), _login(api, "kim")
    path = "/api/v1/auth/password"
    new_password = "kim's new long password"
    wrong = api.post(
        path, token=this, json={"current_password": "not it at all", "new_password": new_password}
    )
    assert_error(wrong, 403, "auth.password_wrong")
    assert api.get("/api/v1/auth/me", token=other).status_code == 200  # a wrong attempt changes nothing
    changed = api.post(path, token=this, json={"current_password": PASSWORD, "new_password": new_password})
    assert changed.status_code == 204, changed.text
    assert api.get("/api/v1/auth/me", token=this).status_code == 200
    assert_error(api.get("/api/v1/auth/me", token=other), 401, "auth.failed")
    _login(api, "kim", new_password)
    too_short = api.post(path, token=this, json={"current_password": new_password, "new_password": "short"})
    assert_error(too_short, 422, "request.invalid")
    machine = api.post(path, Role.VIEWER, json={"current_password": PASSWORD, "new_password": new_password})
    assert_error(machine, 409, "auth.not_a_user")
    with api.node.sessions() as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(AuditEvent.action == "password_change").order_by(AuditEvent.id)
        ).all()
    assert outcomes == ["failure", "success"]
