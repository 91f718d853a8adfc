"""Every list route: page bounds (422 `request.invalid`) and items/total/page/page_size over pages."""

from __future__ import annotations

from dicom_node.services import peers
from dicom_node.services.auth import create_machine_token
from storage.models import Role
from tests.api.conftest import Api, assert_error, complete_studies, make_rejection, make_study

LISTS = ["/api/v1/studies", "/api/v1/jobs", "/api/v1/rejections", "/api/v1/audit", "/api/v1/peers"]


def test_out_of_bounds_pages_are_invalid_on_every_list_and_the_bounds_themselves_are_fine(api: Api) -> None:
    for path in LISTS:
        for query in ("page=0", "page=-1", "page_size=0", "page_size=101", "page=10000001", "page=x"):
            error = assert_error(api.get(f"{path}?{query}", Role.ADMIN), 422, "request.invalid")
            assert f"query.{query.split('=')[0]}" in error["message"], (path, error)
        for query in ("page_size=100", "page_size=1", "page=10000000"):
            answer = api.get(f"{path}?{query}", Role.ADMIN)
            assert answer.status_code == 200, (path, query, answer.text)


def test_every_list_pages_its_items_completely_and_without_overlap(api: Api) -> None:
    for i in range(7):
        make_study(api.node)
        make_rejection(api.node)
        create_machine_token(api.node, role=Role.VIEWER, name=f"page-{i}")  # an audit event
        with api.node.sessions.begin() as session:
            peers.add_peer(
                session,
                ae_title=f"PEER{i}",
                host="127.0.0.1",
                port=104 + i,
                push_results=False,
                now=api.clock.now(),
            )
        api.clock.advance(60)
    assert len(complete_studies(api.node, api.clock)) == 7  # one de-identify job each
    for path in LISTS:
        first = api.get(f"{path}?page_size=100", Role.ADMIN)
        assert first.status_code == 200, (path, first.text)
        everything = first.json()
        total = everything["total"]
        assert total >= 7 and len(everything["items"]) == total, path
        seen: list[object] = []
        pages = -(-total // 3)
        for page in range(1, pages + 2):
            body = api.get(f"{path}?page={page}&page_size=3", Role.ADMIN).json()
            assert (body["total"], body["page"], body["page_size"]) == (total, page, 3), path
            expected = min(3, max(0, total - (page - 1) * 3))
            assert len(body["items"]) == expected, (path, page)
            seen.extend(_key(item) for item in body["items"])
        assert seen == [_key(item) for item in everything["items"]], path  # same order, no overlap


def _key(item: dict[str, object]) -> object:
    return item.get("id", item.get("ae_title"))


def test_the_defaults_are_page_one_of_fifty(api: Api) -> None:
    for path in LISTS:
        body = api.get(path, Role.ADMIN).json()
        assert (body["page"], body["page_size"]) == (1, 50), path
