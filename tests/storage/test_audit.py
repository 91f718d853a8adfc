"""storage.audit: a hash chain that verifies, names the row that was edited, deleted or moved, never forks."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import audit
from storage.audit import GENESIS_HASH, ChainBreak
from storage.models import AuditEvent

ALTERED = "audit.event_altered"
BROKEN = "audit.chain_broken"

# Every column an edit could touch, with a value that differs from what `append_events` writes.
EDITS: dict[str, object] = {
    "occurred_at": None,  # filled per row: one microsecond later
    "actor": "someone-else",
    "action": "study.deleted",
    "outcome": "failure",
    "object_ref": "std_other",
    "client_address": "10.9.9.9",
    "user_agent": "curl/8",
    "correlation_id": "cor_other",
    "detail": '{"count":999}',
    "prev_hash": "f" * 64,
    "hash": "e" * 64,
}


def append_events(sessions: sessionmaker[Session], t0: datetime, count: int) -> list[int]:
    ids = []
    for n in range(count):
        with sessions.begin() as session:
            event = audit.append(
                session,
                actor=f"worker-{n}",
                action="study.deidentified",
                outcome="success",
                now=t0 + timedelta(seconds=n, microseconds=n),
                object_ref=f"std_{n:032x}",
                detail={"instances": n, "codes": ["deid.ok"]},
                client_address="127.0.0.1",
                user_agent="dicom-node-test",
                correlation_id=f"cor_{n}",
            )
            ids.append(event.id)
    return ids


def verify(sessions: sessionmaker[Session], *, batch: int = 1000) -> tuple[int, ChainBreak | None]:
    with sessions() as session:
        return audit.verify_chain(session, batch=batch)


def tamper(sessions: sessionmaker[Session], event_id: int, **values: object) -> None:
    """Change a stored row behind the module's back, the way someone with SQL access would."""
    with sessions.begin() as session:
        session.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(**values))


def all_events(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_an_empty_trail_verifies(sessions: sessionmaker[Session]) -> None:
    assert verify(sessions) == (0, None)


def test_a_chain_of_appends_verifies_and_links_each_row_to_the_one_before(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    ids = append_events(sessions, t0, 6)
    assert ids == sorted(ids)
    assert verify(sessions) == (6, None)
    events = all_events(sessions)
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    for event in events:
        assert len(event.hash) == 64
        assert event.occurred_at.tzinfo is not None


def test_appends_in_one_transaction_chain_to_each_other(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    with sessions.begin() as session:
        first = audit.append(session, actor="a", action="x", outcome="success", now=t0)
        second = audit.append(session, actor="a", action="y", outcome="success", now=t0)
        assert second.prev_hash == first.hash
    assert verify(sessions) == (2, None)


def test_an_event_stamped_in_another_timezone_is_stored_in_utc_and_verifies(
    sessions: sessionmaker[Session],
) -> None:
    local = datetime(2026, 3, 1, 14, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    with sessions.begin() as session:
        audit.append(session, actor="a", action="login", outcome="success", now=local)
    (event,) = all_events(sessions)
    assert event.occurred_at == local
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert verify(sessions) == (1, None)


def test_details_are_stored_as_canonical_json(sessions: sessionmaker[Session], t0: datetime) -> None:
    with sessions.begin() as session:
        audit.append(
            session,
            actor="a",
            action="x",
            outcome="success",
            now=t0,
            detail={"zeta": 1, "alpha": {"b": [1, 2], "a": "é"}},
        )
        audit.append(
            session,
            actor="a",
            action="x",
            outcome="success",
            now=t0,
            detail={"alpha": {"a": "é", "b": [1, 2]}, "zeta": 1},
        )
        audit.append(session, actor="a", action="x", outcome="success", now=t0)
    first, second, empty = all_events(sessions)
    assert first.detail == '{"alpha":{"a":"\\u00e9","b":[1,2]},"zeta":1}'
    assert second.detail == first.detail, "key order in the caller does not change the stored text"
    assert json.loads(first.detail) == {"zeta": 1, "alpha": {"b": [1, 2], "a": "é"}}
    assert empty.detail == "{}"
    assert verify(sessions) == (3, None)


@pytest.mark.parametrize("column", sorted(EDITS))
def test_editing_any_column_of_any_row_is_detected_at_that_row(
    sessions: sessionmaker[Session], t0: datetime, column: str
) -> None:
    rows = 4
    for index in range(rows):
        with sessions.begin() as session:
            session.execute(delete(AuditEvent))
        ids = append_events(sessions, t0, rows)
        assert verify(sessions) == (rows, None)
        value = EDITS[column]
        if column == "occurred_at":
            value = t0 + timedelta(seconds=index, microseconds=index + 1)
        tamper(sessions, ids[index], **{column: value})
        assert verify(sessions) == (index, ChainBreak(ids[index], ALTERED)), f"row {index}"


def test_an_edited_row_whose_hash_was_recomputed_is_detected_at_the_next_row(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    ids = append_events(sessions, t0, 4)
    forged = all_events(sessions)[1]
    forged.actor = "someone-else"
    tamper(
        sessions,
        ids[1],
        actor=forged.actor,
        hash=audit.event_hash(forged.prev_hash, audit._fields(forged)),
    )
    assert verify(sessions) == (2, ChainBreak(ids[2], BROKEN))


@pytest.mark.parametrize("deleted", [0, 2])
def test_deleting_a_row_is_detected_at_the_next_row(
    sessions: sessionmaker[Session], t0: datetime, deleted: int
) -> None:
    ids = append_events(sessions, t0, 5)
    with sessions.begin() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == ids[deleted]))
    assert verify(sessions) == (deleted, ChainBreak(ids[deleted + 1], BROKEN))


def test_swapping_two_rows_contents_is_detected(sessions: sessionmaker[Session], t0: datetime) -> None:
    ids = append_events(sessions, t0, 5)
    columns = [c.key for c in AuditEvent.__table__.columns if c.key != "id"]
    events = all_events(sessions)
    one = {key: getattr(events[1], key) for key in columns}
    three = {key: getattr(events[3], key) for key in columns}
    tamper(sessions, ids[3], hash="0" * 63 + "1")  # the hash column is unique: make room first
    tamper(sessions, ids[1], **three)
    tamper(sessions, ids[3], **one)
    swapped = all_events(sessions)
    assert [e.id for e in swapped] == ids
    assert [e.actor for e in swapped] == [f"worker-{i}" for i in (0, 3, 2, 1, 4)]
    assert [e.hash for e in swapped] == [events[i].hash for i in (0, 3, 2, 1, 4)]
    assert verify(sessions) == (1, ChainBreak(ids[1], BROKEN))


def test_a_second_appender_waits_for_the_first_and_chains_to_its_event(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    """PostgreSQL: the advisory lock; SQLite: the writer lock. Either way B sees A's committed row."""
    b_events: list[AuditEvent] = []
    b_errors: list[BaseException] = []

    def append_b() -> None:
        try:
            with sessions.begin() as session:
                b_events.append(audit.append(session, actor="b", action="x", outcome="success", now=t0))
        except BaseException as exc:
            b_errors.append(exc)

    thread = threading.Thread(target=append_b)
    with sessions.begin() as session_a:
        a_event = audit.append(session_a, actor="a", action="x", outcome="success", now=t0)
        thread.start()
        thread.join(timeout=0.3)
        assert thread.is_alive(), "B must wait for A's open transaction, or the chain forks"
        # Leaving the block commits A and releases B.
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert b_errors == []
    (b_event,) = b_events
    assert b_event.prev_hash == a_event.hash
    assert verify(sessions) == (2, None)


def test_concurrent_appends_make_one_chain_without_a_fork(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    writers, appends = 6, 8
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for n in range(appends):
                with sessions.begin() as session:
                    audit.append(
                        session,
                        actor=f"writer-{index}",
                        action="x",
                        outcome="success",
                        now=t0 + timedelta(microseconds=n),
                        detail={"writer": index, "n": n},
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    total = writers * appends
    assert verify(sessions) == (total, None)
    events = all_events(sessions)
    prev_hashes = [e.prev_hash for e in events]
    assert len(set(prev_hashes)) == total, "no two events share a predecessor: the chain did not fork"
    assert prev_hashes.count(GENESIS_HASH) == 1
    assert sorted((e.actor, e.detail) for e in events) == sorted(
        (f"writer-{i}", json.dumps({"n": n, "writer": i}, separators=(",", ":")))
        for i in range(writers)
        for n in range(appends)
    )


@pytest.mark.parametrize("count", [1, 2, 5, 6])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_verify_counts_every_event_across_batches(
    sessions: sessionmaker[Session], t0: datetime, count: int, batch: int
) -> None:
    append_events(sessions, t0, count)
    assert verify(sessions, batch=batch) == (count, None)


def test_verify_carries_the_chain_across_batch_boundaries(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    """With batch=2, rows 0-1 are one batch and 3-4 the next: deleting row 2 must still show."""
    ids = append_events(sessions, t0, 6)
    with sessions.begin() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == ids[2]))
    assert verify(sessions, batch=2) == (2, ChainBreak(ids[3], BROKEN))


def test_verify_finds_an_edit_in_a_later_batch(sessions: sessionmaker[Session], t0: datetime) -> None:
    ids = append_events(sessions, t0, 7)
    tamper(sessions, ids[5], outcome="failure")
    assert verify(sessions, batch=2) == (5, ChainBreak(ids[5], ALTERED))


def test_verify_is_unaffected_by_gaps_in_the_ids(sessions: sessionmaker[Session], t0: datetime) -> None:
    """A rolled-back append leaves an id gap on PostgreSQL; the chain, not the ids, decides."""
    append_events(sessions, t0, 2)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        audit.append(session, actor="a", action="x", outcome="success", now=t0)
        raise RuntimeError("the change the event records failed")
    append_events(sessions, t0 + timedelta(minutes=1), 3)
    assert verify(sessions, batch=2) == (5, None)
