"""storage.jobs: leases, attempts, backoff, the dead letter and claims that never hand out a job twice."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import jobs
from storage.jobs import ClaimedJob
from storage.models import Job, JobStatus, Study, StudyStatus, new_id

KIND = "deidentify"
LEASE = 30.0


def enqueue(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    kind: str = KIND,
    study_id: str | None = None,
    generation: int | None = None,
    max_attempts: int = 5,
) -> str:
    with sessions.begin() as session:
        return jobs.enqueue(
            session,
            kind=kind,
            study_id=study_id,
            generation=generation,
            now=now,
            max_attempts=max_attempts,
        )


def claim(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    owner: str = "worker-a",
    kinds: tuple[str, ...] = (KIND,),
    lease_seconds: float = LEASE,
) -> ClaimedJob | None:
    with sessions.begin() as session:
        return jobs.claim(session, kinds=kinds, owner=owner, now=now, lease_seconds=lease_seconds)


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None
        return job


def snapshot(job: Job) -> dict[str, object]:
    return {column.key: getattr(job, column.key) for column in Job.__table__.columns}


def insert_study(sessions: sessionmaker[Session], now: datetime) -> str:
    study_id = new_id("std")
    with sessions.begin() as session:
        session.add(
            Study(
                id=study_id,
                original_study_instance_uid=generate_uid(),
                original_patient_id="PID",
                status=StudyStatus.COMPLETE,
                generation=3,
                instance_count=1,
                first_received_at=now,
                last_received_at=now,
                completed_at=now,
            )
        )
    return study_id


def test_an_enqueued_job_is_claimed_with_one_attempt_and_a_lease(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    study_id = insert_study(sessions, t0)
    job_id = enqueue(sessions, t0, study_id=study_id, generation=3, max_attempts=4)
    queued = job_row(sessions, job_id)
    assert job_id.startswith("job_")
    assert (queued.status, queued.attempts, queued.run_at, queued.lease_owner) == (
        JobStatus.QUEUED,
        0,
        t0,
        None,
    )

    later = t0 + timedelta(seconds=1)
    job = claim(sessions, later)
    assert job == ClaimedJob(
        id=job_id, kind=KIND, study_id=study_id, generation=3, attempts=1, max_attempts=4, owner="worker-a"
    )
    row = job_row(sessions, job_id)
    assert row.status == JobStatus.RUNNING
    assert row.attempts == 1
    assert row.lease_owner == "worker-a"
    assert row.lease_expires_at == later + timedelta(seconds=LEASE)
    assert row.updated_at == later
    assert claim(sessions, later, owner="worker-b") is None, "a held lease is not claimed again"


def test_a_job_without_a_study_is_claimed(sessions: sessionmaker[Session], t0: datetime) -> None:
    job_id = enqueue(sessions, t0)
    job = claim(sessions, t0)
    assert job is not None
    assert (job.id, job.study_id, job.generation) == (job_id, None, None)


def test_a_job_whose_run_at_is_in_the_future_is_not_claimed(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0 + timedelta(seconds=60))
    assert claim(sessions, t0) is None
    assert claim(sessions, t0 + timedelta(seconds=59.999)) is None
    assert job_row(sessions, job_id).status == JobStatus.QUEUED
    job = claim(sessions, t0 + timedelta(seconds=60))
    assert job is not None
    assert job.id == job_id


def test_the_earliest_due_job_is_claimed_first(sessions: sessionmaker[Session], t0: datetime) -> None:
    late = enqueue(sessions, t0)
    early = enqueue(sessions, t0 - timedelta(seconds=10))
    claimed = [claim(sessions, t0), claim(sessions, t0), claim(sessions, t0)]
    assert [job.id if job else None for job in claimed] == [early, late, None]


def test_only_jobs_of_the_given_kinds_are_claimed(sessions: sessionmaker[Session], t0: datetime) -> None:
    deid = enqueue(sessions, t0, kind="deidentify")
    infer = enqueue(sessions, t0, kind="infer")
    assert claim(sessions, t0, kinds=("deliver",)) is None
    assert claim(sessions, t0, kinds=()) is None
    job = claim(sessions, t0, kinds=("infer",))
    assert job is not None
    assert (job.id, job.kind) == (infer, "infer")
    assert claim(sessions, t0, kinds=("infer",)) is None
    job = claim(sessions, t0, kinds=("deliver", "deidentify"))
    assert job is not None
    assert (job.id, job.kind) == (deid, "deidentify")


def test_a_second_claimer_never_gets_the_job_the_first_holds(
    sessions: sessionmaker[Session], t0: datetime, database_url: str
) -> None:
    """PostgreSQL: B skips A's locked row and does not wait. SQLite: B waits for A's writer lock."""
    first_id = enqueue(sessions, t0)
    second_id = enqueue(sessions, t0 + timedelta(microseconds=1))
    b_result: list[ClaimedJob | None] = []
    b_errors: list[BaseException] = []

    def claim_b() -> None:
        try:
            b_result.append(claim(sessions, t0 + timedelta(seconds=1), owner="worker-b"))
        except BaseException as exc:
            b_errors.append(exc)

    thread = threading.Thread(target=claim_b)
    with sessions.begin() as session_a:
        a_job = jobs.claim(
            session_a, kinds=[KIND], owner="worker-a", now=t0 + timedelta(seconds=1), lease_seconds=LEASE
        )
        assert a_job is not None
        assert a_job.id == first_id
        thread.start()
        if database_url.startswith("postgresql"):
            thread.join(timeout=30)
            assert not thread.is_alive(), "SKIP LOCKED: B must not wait for A's open transaction"
        else:
            thread.join(timeout=0.3)
            assert thread.is_alive(), "B must queue behind A's writer lock"
        # Leaving the block commits A, so a waiting B can go on: no deadlock.
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert b_errors == []
    (b_job,) = b_result
    assert b_job is not None
    assert (b_job.id, b_job.owner, b_job.attempts) == (second_id, "worker-b", 1)
    assert job_row(sessions, first_id).lease_owner == "worker-a"
    assert job_row(sessions, second_id).lease_owner == "worker-b"


def test_a_single_job_held_open_is_not_handed_to_a_second_claimer(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0)
    b_result: list[ClaimedJob | None] = []

    thread = threading.Thread(target=lambda: b_result.append(claim(sessions, t0, owner="worker-b")))
    with sessions.begin() as session_a:
        a_job = jobs.claim(session_a, kinds=[KIND], owner="worker-a", now=t0, lease_seconds=LEASE)
        assert a_job is not None
        assert a_job.id == job_id
        thread.start()
        thread.join(timeout=0.3)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert b_result == [None]
    assert job_row(sessions, job_id).attempts == 1


def test_concurrent_claimers_hand_out_every_job_exactly_once(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_ids = {enqueue(sessions, t0 + timedelta(microseconds=i)) for i in range(24)}
    claimers = 4
    barrier = threading.Barrier(claimers)
    claimed: list[list[str]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            while (job := claim(sessions, t0 + timedelta(seconds=1), owner=f"worker-{index}")) is not None:
                assert job.owner == f"worker-{index}"
                claimed[index].append(job.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    everything = [job_id for ids in claimed for job_id in ids]
    assert len(everything) == len(set(everything)), "no job is handed out twice"
    assert set(everything) == job_ids
    with sessions() as session:
        rows = session.scalars(select(Job)).all()
    assert {row.attempts for row in rows} == {1}
    for index, ids in enumerate(claimed):
        assert all(job_row(sessions, job_id).lease_owner == f"worker-{index}" for job_id in ids)


def test_an_expired_lease_is_claimed_again_and_the_old_owner_can_change_nothing(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0)
    old = claim(sessions, t0, owner="worker-a")
    assert old is not None

    assert claim(sessions, t0 + timedelta(seconds=LEASE - 0.001), owner="worker-b") is None
    expired = t0 + timedelta(seconds=LEASE)
    new = claim(sessions, expired, owner="worker-b")
    assert new is not None
    assert (new.id, new.owner, new.attempts) == (job_id, "worker-b", 2)
    before = snapshot(job_row(sessions, job_id))
    assert before["lease_owner"] == "worker-b"
    assert before["lease_expires_at"] == expired + timedelta(seconds=LEASE)

    later = expired + timedelta(seconds=5)
    with sessions.begin() as session:
        assert jobs.succeed(session, old, now=later) is False
        assert jobs.fail(session, old, code="deid.failed", now=later) is None
        assert jobs.extend_lease(session, old, now=later, lease_seconds=600) is False
    assert snapshot(job_row(sessions, job_id)) == before

    with sessions.begin() as session:
        assert jobs.succeed(session, new, now=later) is True
    done = job_row(sessions, job_id)
    assert (done.status, done.lease_owner, done.lease_expires_at, done.updated_at) == (
        JobStatus.SUCCEEDED,
        None,
        None,
        later,
    )
    with sessions.begin() as session:
        assert jobs.succeed(session, new, now=later) is False, "a finished job is not finished twice"


def test_extend_lease_keeps_the_job_from_being_claimed_again(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0)
    job = claim(sessions, t0)
    assert job is not None
    renewed_at = t0 + timedelta(seconds=LEASE - 1)
    with sessions.begin() as session:
        assert jobs.extend_lease(session, job, now=renewed_at, lease_seconds=LEASE) is True
    row = job_row(sessions, job_id)
    assert row.lease_expires_at == renewed_at + timedelta(seconds=LEASE)
    assert row.updated_at == renewed_at
    assert claim(sessions, t0 + timedelta(seconds=LEASE + 1), owner="worker-b") is None
    assert claim(sessions, renewed_at + timedelta(seconds=LEASE), owner="worker-b") is not None


def test_fail_requeues_with_backoff_and_the_last_attempt_goes_to_the_dead_letter(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0, max_attempts=3)
    now = t0
    for attempt, code in enumerate(["deid.read_failed", "database.unavailable"], start=1):
        job = claim(sessions, now)
        assert job is not None
        assert job.attempts == attempt
        failed_at = now + timedelta(seconds=2)
        with sessions.begin() as session:
            assert jobs.fail(session, job, code=code, now=failed_at) == JobStatus.QUEUED
        row = job_row(sessions, job_id)
        retry_at = failed_at + timedelta(seconds=jobs.backoff_seconds(attempt))
        assert row.status == JobStatus.QUEUED
        assert row.run_at == retry_at
        assert row.last_error_code == code
        assert (row.lease_owner, row.lease_expires_at) == (None, None)
        assert row.attempts == attempt
        assert claim(sessions, retry_at - timedelta(milliseconds=1)) is None, "not before its backoff"
        now = retry_at

    job = claim(sessions, now)
    assert job is not None
    assert job.attempts == 3
    with sessions.begin() as session:
        assert jobs.fail(session, job, code="deid.write_failed", now=now) == JobStatus.DEAD
    dead = job_row(sessions, job_id)
    assert dead.status == JobStatus.DEAD
    assert dead.attempts == 3
    assert dead.last_error_code == "deid.write_failed"
    assert (dead.lease_owner, dead.lease_expires_at) == (None, None)
    assert claim(sessions, now + timedelta(days=1)) is None, "the dead letter is never claimed"
    with sessions.begin() as session:
        assert jobs.fail(session, job, code="again", now=now) is None


def test_succeed_after_a_failed_attempt_clears_the_error(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0)
    job = claim(sessions, t0)
    assert job is not None
    with sessions.begin() as session:
        jobs.fail(session, job, code="deid.read_failed", now=t0)
    retry = claim(sessions, t0 + timedelta(seconds=5))
    assert retry is not None
    with sessions.begin() as session:
        assert jobs.succeed(session, retry, now=t0 + timedelta(seconds=6)) is True
    row = job_row(sessions, job_id)
    assert (row.status, row.attempts, row.last_error_code) == (JobStatus.SUCCEEDED, 2, None)


def test_a_worker_that_died_on_the_last_attempt_sends_the_job_to_the_dead_letter(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    job_id = enqueue(sessions, t0, max_attempts=2)
    assert claim(sessions, t0, owner="worker-a") is not None
    second = claim(sessions, t0 + timedelta(seconds=LEASE), owner="worker-b")
    assert second is not None
    assert second.attempts == 2
    # worker-b dies too: its lease expires with attempts == max_attempts.
    expired = t0 + timedelta(seconds=2 * LEASE)
    assert claim(sessions, expired, owner="worker-c") is None
    dead = job_row(sessions, job_id)
    assert dead.status == JobStatus.DEAD
    assert dead.attempts == 2
    assert dead.last_error_code == "job.lease_expired"
    assert (dead.lease_owner, dead.lease_expires_at, dead.updated_at) == (None, None, expired)
    with sessions.begin() as session:
        assert jobs.succeed(session, second, now=expired) is False
    assert job_row(sessions, job_id).status == JobStatus.DEAD


def test_dead_lettering_an_expired_job_does_not_hide_the_next_due_job(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    """None from claim means "nothing due": a worker sleeps on it."""
    crashed = enqueue(sessions, t0, max_attempts=1)
    assert claim(sessions, t0) is not None
    waiting = enqueue(sessions, t0 + timedelta(seconds=1))
    job = claim(sessions, t0 + timedelta(seconds=LEASE), owner="worker-b")
    assert job is not None
    assert job.id == waiting
    assert job_row(sessions, crashed).status == JobStatus.DEAD


def test_backoff_doubles_from_five_seconds_up_to_fifteen_minutes() -> None:
    assert [jobs.backoff_seconds(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 640, 900]
    assert jobs.backoff_seconds(0) == 5.0
    assert jobs.backoff_seconds(50) == 900.0
    assert jobs.backoff_seconds(10_000) == 900.0
    assert isinstance(jobs.backoff_seconds(3), float)


def test_count_by_status_counts_each_status_and_filters_by_kind(
    sessions: sessionmaker[Session], t0: datetime
) -> None:
    with sessions() as session:
        assert jobs.count_by_status(session) == {}
    for _ in range(3):
        enqueue(sessions, t0)
    enqueue(sessions, t0, kind="infer", max_attempts=1)
    enqueue(sessions, t0 + timedelta(hours=1), kind="infer")
    running = claim(sessions, t0)
    done = claim(sessions, t0)
    dead = claim(sessions, t0, kinds=("infer",))
    assert running and done and dead
    with sessions.begin() as session:
        assert jobs.succeed(session, done, now=t0)
        assert jobs.fail(session, dead, code="infer.failed", now=t0) == JobStatus.DEAD

    with sessions() as session:
        assert jobs.count_by_status(session) == {
            JobStatus.QUEUED: 2,
            JobStatus.RUNNING: 1,
            JobStatus.SUCCEEDED: 1,
            JobStatus.DEAD: 1,
        }
        assert jobs.count_by_status(session, kind=KIND) == {
            JobStatus.QUEUED: 1,
            JobStatus.RUNNING: 1,
            JobStatus.SUCCEEDED: 1,
        }
        assert jobs.count_by_status(session, kind="infer") == {JobStatus.QUEUED: 1, JobStatus.DEAD: 1}
        assert jobs.count_by_status(session, kind="deliver") == {}
