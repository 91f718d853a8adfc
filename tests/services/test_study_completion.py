"""Study completion through the services: instances received, time advanced, events in the outbox."""

from __future__ import annotations

import threading

from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.core.clock import ManualClock
from dicom_node.services.node import Node
from dicom_node.services.studies import complete_idle_studies, run_completion_sweeper
from storage.events import list_events
from storage.models import Event, EventKind, Study, StudyStatus
from tests.harness import datasets
from tests.harness.ingest import receive
from tests.harness.waiting import wait_until


def study(node: Node, study_id: str) -> Study:
    with node.sessions() as session:
        row = session.get(Study, study_id)
        assert row is not None
        return row


def outbox(node: Node) -> list[tuple[str, str | None, int | None]]:
    with node.sessions() as session:
        return [(e.kind, e.study_id, e.generation) for e in list_events(session)]


def test_study_completes_after_the_idle_time_with_generation_one(node: Node, clock: ManualClock) -> None:
    study_uid = generate_uid()
    outcome = receive(node, datasets.make_ct(study_uid=study_uid, instance_number=1))
    clock.advance(4)
    receive(node, datasets.make_ct(study_uid=study_uid, instance_number=2, seed=2))

    clock.advance(node.study_idle_seconds - 0.5)
    assert complete_idle_studies(node) == []
    assert study(node, outcome.study_ref).status == StudyStatus.RECEIVING
    assert outbox(node) == []

    clock.advance(1)
    assert complete_idle_studies(node) == [outcome.study_ref]
    row = study(node, outcome.study_ref)
    assert (row.status, row.generation, row.instance_count) == (StudyStatus.COMPLETE, 1, 2)
    assert row.completed_at == clock.now()
    assert outbox(node) == [(EventKind.STUDY_COMPLETE, outcome.study_ref, 1)]

    clock.advance(600)
    assert complete_idle_studies(node) == []
    assert outbox(node) == [(EventKind.STUDY_COMPLETE, outcome.study_ref, 1)]


def test_a_late_instance_reopens_the_study_and_it_completes_again_as_generation_two(
    node: Node, clock: ManualClock
) -> None:
    study_uid = generate_uid()
    first = receive(node, datasets.make_ct(study_uid=study_uid))
    clock.advance(node.study_idle_seconds + 1)
    assert complete_idle_studies(node) == [first.study_ref]

    clock.advance(30)
    late = receive(node, datasets.make_ct(study_uid=study_uid, instance_number=2, seed=2))
    assert late.study_ref == first.study_ref
    assert late.study_reopened is True
    row = study(node, first.study_ref)
    assert (row.status, row.generation, row.completed_at) == (StudyStatus.RECEIVING, 1, None)
    assert outbox(node) == [
        (EventKind.STUDY_COMPLETE, first.study_ref, 1),
        (EventKind.STUDY_REOPENED, first.study_ref, 1),
    ]

    clock.advance(node.study_idle_seconds - 1)
    assert complete_idle_studies(node) == []
    clock.advance(2)
    assert complete_idle_studies(node) == [first.study_ref]
    assert study(node, first.study_ref).generation == 2
    assert outbox(node) == [
        (EventKind.STUDY_COMPLETE, first.study_ref, 1),
        (EventKind.STUDY_REOPENED, first.study_ref, 1),
        (EventKind.STUDY_COMPLETE, first.study_ref, 2),
    ]


def test_an_identical_duplicate_after_completion_also_reopens(node: Node, clock: ManualClock) -> None:
    ds = datasets.make_ct()
    first = receive(node, ds)
    clock.advance(node.study_idle_seconds + 1)
    assert complete_idle_studies(node) == [first.study_ref]
    again = receive(node, ds)
    assert again.study_reopened is True
    assert study(node, first.study_ref).instance_count == 1
    clock.advance(node.study_idle_seconds + 1)
    assert complete_idle_studies(node) == [first.study_ref]
    assert study(node, first.study_ref).generation == 2


def test_two_concurrent_sweeps_complete_a_study_exactly_once(node: Node, clock: ManualClock) -> None:
    refs = {receive(node, datasets.make_ct(seed=n)).study_ref for n in range(3)}
    clock.advance(node.study_idle_seconds + 1)

    barrier = threading.Barrier(2)
    results: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def sweeper(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = complete_idle_studies(node)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweeper, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert errors == []
    assert sorted(results[0] + results[1]) == sorted(refs)
    with node.sessions() as session:
        completes = session.scalars(select(Event).where(Event.kind == EventKind.STUDY_COMPLETE)).all()
    assert sorted(e.study_id for e in completes if e.study_id) == sorted(refs)
    assert all(study(node, ref).generation == 1 for ref in refs)


def test_the_sweeper_thread_completes_studies_and_stops(node: Node, clock: ManualClock) -> None:
    ref = receive(node, datasets.make_ct()).study_ref
    clock.advance(node.study_idle_seconds + 1)
    stop = threading.Event()
    thread = threading.Thread(target=run_completion_sweeper, args=(node, stop), kwargs={"poll_seconds": 0.01})
    thread.start()
    try:
        wait_until(lambda: study(node, ref).status == StudyStatus.COMPLETE, timeout=10, what="the sweeper")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert outbox(node) == [(EventKind.STUDY_COMPLETE, ref, 1)]
