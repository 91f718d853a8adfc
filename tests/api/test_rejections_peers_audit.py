"""Rejections (bytes to admins, audited), peers (CRUD and a real C-ECHO), the audit trail and its check."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select, text

from storage.models import AuditEvent, Rejection, Role
from tests.api.conftest import Api, assert_error, make_rejection
from tests.harness.ports import free_port

PEERS = "/api/v1/peers"


def test_rejections_list_detail_and_quarantined_bytes_for_admins_only(api: Api) -> None:
    ref = make_rejection(api.node)
    listed = api.get("/api/v1/rejections", Role.VIEWER).json()
    assert [item["id"] for item in listed["items"]] == [ref]
    detail = api.get(f"/api/v1/rejections/{ref}", Role.VIEWER).json()
    assert detail["codes"] and detail["has_quarantined_bytes"] is True
    assert (detail["calling_ae_title"], detail["status"] > 0) == ("STORESCU", True)
    code = detail["codes"][0]
    assert api.get(f"/api/v1/rejections?code={code}", Role.VIEWER).json()["total"] == 1
    assert api.get("/api/v1/rejections?code=instance.nothing", Role.VIEWER).json()["total"] == 0

    for role in (Role.VIEWER, Role.OPERATOR):
        assert_error(api.get(f"/api/v1/rejections/{ref}/bytes", role), 403, "auth.forbidden")
    answer = api.get(f"/api/v1/rejections/{ref}/bytes", Role.ADMIN)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    with api.node.sessions() as session:
        row = session.get(Rejection, ref)
        assert row is not None and row.quarantine_key is not None
        assert answer.content == api.node.blobs.path_of(row.quarantine_key).read_bytes()
        assert len(answer.content) == row.size_bytes
        reads = session.scalars(select(AuditEvent).where(AuditEvent.action == "phi_read")).all()
    assert [(event.object_ref, event.outcome) for event in reads] == [(ref, "success")]
    assert_error(api.get("/api/v1/rejections/rej_none/bytes", Role.ADMIN), 404, "request.not_found")


def test_peers_are_added_read_and_removed_with_conflicts_and_unknowns_refused(api: Api) -> None:
    peer = {"ae_title": "PACS1", "host": "10.0.0.5", "port": 104, "push_results": True}
    created = api.post(PEERS, Role.ADMIN, json=peer)
    assert created.status_code == 201 and created.json() == peer
    assert_error(api.post(PEERS, Role.ADMIN, json=peer), 409, "peer.already_exists")
    assert api.get(PEERS, Role.VIEWER).json() == {"items": [peer], "total": 1, "page": 1, "page_size": 50}
    assert api.get(f"{PEERS}/PACS1", Role.VIEWER).json() == peer
    assert_error(api.get(f"{PEERS}/NOPE", Role.VIEWER), 404, "peer.not_found")
    assert_error(api.post(f"{PEERS}/NOPE/echo", Role.OPERATOR), 404, "peer.not_found")
    assert_error(api.post(PEERS, Role.ADMIN, json={**peer, "ae_title": "X" * 17}), 422, "request.invalid")
    assert_error(api.post(PEERS, Role.ADMIN, json={**peer, "port": 0}), 422, "request.invalid")

    moved = api.request(
        "PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={"host": "10.0.0.9", "push_results": False}
    )
    assert moved.status_code == 200 and moved.json() == {**peer, "host": "10.0.0.9", "push_results": False}
    assert api.get(f"{PEERS}/PACS1", Role.VIEWER).json()["host"] == "10.0.0.9"
    assert_error(api.request("PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={"port": 0}), 422, "request.invalid")
    assert_error(
        api.request("PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={"host": "a b"}), 422, "request.invalid"
    )
    assert_error(api.request("PATCH", f"{PEERS}/NOPE", Role.ADMIN, json={"port": 104}), 404, "peer.not_found")
    assert_error(api.request("PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={}), 422, "request.invalid")
    assert_error(
        api.request("PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={"hots": "x"}), 422, "request.invalid"
    )
    assert api.request("PATCH", f"{PEERS}/PACS1", Role.ADMIN, json={"port": 104}).status_code == 200  # no-op
    assert api.request("DELETE", f"{PEERS}/PACS1", Role.ADMIN).status_code == 204
    assert_error(api.request("DELETE", f"{PEERS}/PACS1", Role.ADMIN), 404, "peer.not_found")
    assert api.get(PEERS, Role.VIEWER).json()["items"] == []
    with api.node.sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("peer_%")).order_by(AuditEvent.id)
        ).all()
    assert actions == ["peer_add", "peer_update", "peer_remove"]
    with api.node.sessions() as session:
        (detail,) = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "peer_update")).all()
    assert json.loads(detail) == {
        "ae_title": "PACS1",
        "host": ["10.0.0.5", "10.0.0.9"],
        "push_results": [True, False],
    }


@pytest.fixture
def verification_scp() -> Iterator[int]:
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    yield port
    server.shutdown()


def test_an_echo_to_a_real_verification_scp_succeeds(api: Api, verification_scp: int) -> None:
    peer = {"ae_title": "ECHOSCP", "host": "127.0.0.1", "port": verification_scp}
    assert api.post(PEERS, Role.ADMIN, json=peer).status_code == 201
    assert_error(api.post(f"{PEERS}/ECHOSCP/echo", Role.VIEWER), 403, "auth.forbidden")
    answer = api.post(f"{PEERS}/ECHOSCP/echo", Role.OPERATOR)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["ae_title"], body["success"], body["status"]) == ("ECHOSCP", True, 0)
    assert body["elapsed_ms"] >= 0


# pynetdicom 2's failed connect calls shutdown() before close() on the unconnected socket (shutdown raises
# ENOTCONN, so close never runs): the socket is only closed, with a ResourceWarning, when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")
def test_an_echo_to_a_closed_port_fails_without_an_error(api: Api) -> None:
    port = free_port()  # nothing listens there
    assert (
        api.post(PEERS, Role.ADMIN, json={"ae_title": "GONE", "host": "127.0.0.1", "port": port}).status_code
        == 201
    )
    body = api.post(f"{PEERS}/GONE/echo", Role.OPERATOR).json()
    assert (body["success"], body["status"]) == (False, None)
    gc.collect()  # the leaked socket's warning belongs to this test


def test_the_audit_trail_lists_newest_first_and_verify_finds_a_tampered_row(api: Api) -> None:
    api.post(PEERS, Role.ADMIN, json={"ae_title": "A1", "host": "h1", "port": 1})
    api.post(PEERS, Role.ADMIN, json={"ae_title": "A2", "host": "h2", "port": 2})
    events = api.get("/api/v1/audit", Role.ADMIN).json()
    ids = [event["id"] for event in events["items"]]
    assert ids == sorted(ids, reverse=True) and events["total"] == len(ids) >= 5
    newest = events["items"][0]
    assert (newest["action"], newest["outcome"], newest["detail"]) == (
        "peer_add",
        "success",
        {"ae_title": "A2"},
    )
    assert newest["client_address"] == "testclient"
    assert api.get("/api/v1/audit?action=peer_add", Role.ADMIN).json()["total"] == 2
    assert api.get("/api/v1/audit?action=nothing", Role.ADMIN).json()["total"] == 0
    assert_error(api.get("/api/v1/audit", Role.OPERATOR), 403, "auth.forbidden")

    assert api.get("/api/v1/audit/verify", Role.ADMIN).json() == {
        "checked": len(ids),
        "broken_at": None,
        "reason": None,
    }
    tampered = sorted(ids)[1]
    with api.node.sessions.begin() as session:
        session.execute(text("UPDATE audit_events SET actor = 'someone' WHERE id = :id"), {"id": tampered})
    verdict = api.get("/api/v1/audit/verify", Role.ADMIN).json()
    assert (verdict["broken_at"], verdict["reason"]) == (tampered, "audit.event_altered")
    assert verdict["checked"] == 1
