"""storage.studies and storage.arrivals: idle completion, generations, re-opening, a race-safe claim."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.core.clock import ManualClock
from storage import arrivals
from storage import studies as study_repo
from storage.events import list_events
from storage.models import Event, EventKind, Study, StudyStatus

IDLE = timedelta(seconds=10)


def arrive(sessions: sessionmaker[Session], study_uid: str, now: datetime, *, new: bool = True) -> bool:
    engine = sessions.kw["bind"]
    with engine.begin() as connection:
        study = arrivals.lock_study(
            connection, original_study_instance_uid=study_uid, original_patient_id="PID", now=now
        )
        return arrivals.record_arrival(connection, study, now=now, new_instance=new)


def sweep(sessions: sessionmaker[Session], now: datetime) -> list[str]:
    with sessions.begin() as session:
        return study_repo.complete_idle_studies(session, idle_before=now - IDLE, now=now)


def study_by_uid(sessions: sessionmaker[Session], study_uid: str) -> Study:
    with sessions() as session:
        return session.scalars(select(Study).where(Study.original_study_instance_uid == study_uid)).one()


def events(sessions: sessionmaker[Session]) -> list[tuple[str, str | None, int | None]]:
    with sessions() as session:
        return [(e.kind, e.study_id, e.generation) for e in list_events(session)]


def test_lock_study_creates_once_and_keeps_first_received(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uid = generate_uid()
    first = clock.now()
    arrive(sessions, uid, first)
    clock.advance(3)
    arrive(sessions, uid, clock.now())
    study = study_by_uid(sessions, uid)
    assert study.status == StudyStatus.RECEIVING
    assert study.generation == 0
    assert study.instance_count == 2
    assert study.first_received_at == first
    assert study.last_received_at == clock.now()
    assert study.completed_at is None
    assert study.id.startswith("std_")
    assert events(sessions) == []


def test_a_study_completes_only_after_the_idle_time(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uid = generate_uid()
    arrive(sessions, uid, clock.now())

    clock.advance(IDLE.total_seconds() - 0.001)
    assert sweep(sessions, clock.now()) == []
    assert study_by_uid(sessions, uid).status == StudyStatus.RECEIVING

    clock.advance(0.002)
    study_id = study_by_uid(sessions, uid).id
    assert sweep(sessions, clock.now()) == [study_id]
    study = study_by_uid(sessions, uid)
    assert study.status == StudyStatus.COMPLETE
    assert study.generation == 1
    assert study.completed_at == clock.now()
    assert events(sessions) == [(EventKind.STUDY_COMPLETE, study_id, 1)]

    clock.advance(3600)
    assert sweep(sessions, clock.now()) == [], "a complete study is not completed again"
    assert events(sessions) == [(EventKind.STUDY_COMPLETE, study_id, 1)]


def test_an_arrival_restarts_the_idle_timer(sessions: sessionmaker[Session], clock: ManualClock) -> None:
    uid = generate_uid()
    arrive(sessions, uid, clock.now())
    clock.advance(8)
    arrive(sessions, uid, clock.now())
    clock.advance(8)
    assert sweep(sessions, clock.now()) == []
    clock.advance(2)
    assert len(sweep(sessions, clock.now())) == 1


def test_an_earlier_timestamp_does_not_move_the_timer_back(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uid = generate_uid()
    late = clock.now() + timedelta(seconds=5)
    arrive(sessions, uid, late)
    arrive(sessions, uid, clock.now())  # a receiver whose clock lags
    assert study_by_uid(sessions, uid).last_received_at == late


def test_a_late_instance_reopens_and_the_study_completes_again_with_the_next_generation(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uid = generate_uid()
    arrive(sessions, uid, clock.now())
    clock.advance(11)
    (study_id,) = sweep(sessions, clock.now())

    clock.advance(100)
    assert arrive(sessions, uid, clock.now()) is True
    study = study_by_uid(sessions, uid)
    assert study.status == StudyStatus.RECEIVING
    assert study.completed_at is None
    assert study.generation == 1
    assert study.instance_count == 2
    assert events(sessions) == [
        (EventKind.STUDY_COMPLETE, study_id, 1),
        (EventKind.STUDY_REOPENED, study_id, 1),
    ]

    clock.advance(5)
    assert sweep(sessions, clock.now()) == []
    clock.advance(6)
    assert sweep(sessions, clock.now()) == [study_id]
    assert study_by_uid(sessions, uid).generation == 2
    assert events(sessions) == [
        (EventKind.STUDY_COMPLETE, study_id, 1),
        (EventKind.STUDY_REOPENED, study_id, 1),
        (EventKind.STUDY_COMPLETE, study_id, 2),
    ]


def test_a_repeated_arrival_on_a_receiving_study_does_not_reopen(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uid = generate_uid()
    assert arrive(sessions, uid, clock.now()) is False
    assert arrive(sessions, uid, clock.now(), new=False) is False
    assert study_by_uid(sessions, uid).instance_count == 1
    assert events(sessions) == []


def test_only_idle_studies_complete_and_the_limit_is_respected(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    idle = [generate_uid() for _ in range(3)]
    for uid in idle:
        arrive(sessions, uid, clock.now())
    clock.advance(11)
    busy = generate_uid()
    arrive(sessions, busy, clock.now())
    with sessions.begin() as session:
        first = study_repo.complete_idle_studies(
            session, idle_before=clock.now() - IDLE, now=clock.now(), limit=2
        )
    assert len(first) == 2
    second = sweep(sessions, clock.now())
    assert len(second) == 1
    assert {study_by_uid(sessions, uid).id for uid in idle} == set(first) | set(second)
    assert study_by_uid(sessions, busy).status == StudyStatus.RECEIVING


def test_a_sweep_blocked_behind_an_uncommitted_sweep_completes_nothing(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    """The deterministic interleaving: B sweeps while A has claimed the study but not committed."""
    uid = generate_uid()
    arrive(sessions, uid, clock.now())
    clock.advance(11)
    now = clock.now()

    b_result: list[list[str]] = []
    b_errors: list[BaseException] = []

    def sweep_b() -> None:
        try:
            b_result.append(sweep(sessions, now))
        except BaseException as exc:
            b_errors.append(exc)

    with sessions.begin() as session_a:
        a_result = study_repo.complete_idle_studies(session_a, idle_before=now - IDLE, now=now)
        assert len(a_result) == 1
        thread = threading.Thread(target=sweep_b)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "B must wait for A's claim (row lock / write lock), not run past it"
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert b_errors == []
    assert b_result == [[]]
    with sessions() as session:
        assert len(session.scalars(select(Event).where(Event.kind == EventKind.STUDY_COMPLETE)).all()) == 1
    assert study_by_uid(sessions, uid).generation == 1


def test_two_concurrent_sweeps_complete_each_study_exactly_once(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    uids = [generate_uid() for _ in range(10)]
    for uid in uids:
        arrive(sessions, uid, clock.now())
    clock.advance(11)
    now = clock.now()

    barrier = threading.Barrier(2)
    results: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = sweep(sessions, now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    completed = results[0] + results[1]
    assert sorted(completed) == sorted(study_by_uid(sessions, uid).id for uid in uids)
    with sessions() as session:
        complete_events = session.scalars(select(Event).where(Event.kind == EventKind.STUDY_COMPLETE)).all()
    assert sorted(e.study_id for e in complete_events if e.study_id) == sorted(completed)
    assert {e.generation for e in complete_events} == {1}
