"""The job service on both databases it supports: SQLite (embedded) and Postgres (production)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import jobs
from app.db import session_scope
from app.migrate import downgrade_base
from app.tables import Job, utcnow


def test_migration_round_trip(db_url):
    from sqlalchemy import inspect

    from app.db import get_engine

    tables = set(inspect(get_engine(db_url)).get_table_names())
    assert {"jobs", "checkpoints", "artifacts", "datasets", "model_versions", "alembic_version"} <= tables
    if db_url.startswith("sqlite"):
        downgrade_base(db_url)
        get_engine.cache_clear()
        assert set(inspect(get_engine(db_url)).get_table_names()) <= {"alembic_version"}


def test_idempotent_create(db_url):
    with session_scope(db_url) as s:
        a, created_a = jobs.create_job(s, "ingest", {"path": "/x"}, idempotency_key="k1")
        b, created_b = jobs.create_job(s, "ingest", {"path": "/x"}, idempotency_key="k1")
        assert (created_a, created_b) == (True, False)
        assert a.id == b.id
        with pytest.raises(jobs.IdempotencyConflict):
            jobs.create_job(s, "ingest", {"path": "/y"}, idempotency_key="k1")
        c, created_c = jobs.create_job(s, "ingest", {"path": "/x"})
        assert created_c and c.id != a.id
        assert s.query(Job).count() == 2


def test_claim_is_exclusive_under_concurrency(db_url):
    with session_scope(db_url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/x"})
    winners = []

    def try_claim(owner):
        with session_scope(db_url) as s:
            if jobs.claim(s, job.id, owner, 30) is not None:
                winners.append(owner)

    threads = [threading.Thread(target=try_claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    with session_scope(db_url) as s:
        row = s.get(Job, job.id)
        assert (row.state, row.attempts, row.lease_owner) == ("running", 1, winners[0])


def test_only_the_lease_owner_moves_a_running_job(db_url):
    with session_scope(db_url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/x"})
        jobs.claim(s, job.id, "owner", 30)
        assert jobs.set_progress(s, job.id, "owner", 5, 10, "half") == (True, False)
        assert jobs.set_progress(s, job.id, "intruder", 9, 10) == (False, False)
        assert jobs.finish(s, job.id, "intruder", "succeeded") is False
        assert jobs.finish(s, job.id, "owner", "succeeded", result={"ok": 1}) is True
        row = s.get(Job, job.id)
        s.refresh(row)
        assert (row.state, row.progress_current, row.result) == ("succeeded", 5, {"ok": 1})


def test_reaper_requeues_expired_lease_then_gives_up(db_url):
    with session_scope(db_url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/x"}, max_attempts=2)
        jobs.claim(s, job.id, "dead-worker", 30)
        # Not expired yet: nothing happens.
        assert jobs.reap(s).requeued == []
        report = jobs.reap(s, now=utcnow() + timedelta(seconds=31))
        assert report.requeued == [job.id]
        row = s.get(Job, job.id)
        s.refresh(row)
        assert (row.state, row.lease_owner, row.attempts) == ("queued", None, 1)
        # The dead worker's late heartbeat must not resurrect its lease.
        assert jobs.heartbeat(s, job.id, "dead-worker", 30) == (False, False)
        jobs.claim(s, job.id, "worker-2", 30)
        report = jobs.reap(s, now=utcnow() + timedelta(seconds=31))
        assert report.failed == [job.id]
        s.refresh(row)
        assert row.state == "failed" and "worker lost 2 times" in row.error


def test_cancel_queued_running_and_final(db_url):
    with session_scope(db_url) as s:
        queued, _ = jobs.create_job(s, "ingest", {"path": "/a"})
        running, _ = jobs.create_job(s, "ingest", {"path": "/b"})
        jobs.claim(s, running.id, "w", 30)
        assert jobs.request_cancel(s, queued.id).state == "cancelled"
        assert jobs.claim(s, queued.id, "w", 30) is None  # a late message cannot run it
        after = jobs.request_cancel(s, running.id)
        assert (after.state, after.cancel_requested) == ("running", True)
        assert jobs.heartbeat(s, running.id, "w", 30) == (True, True)
        jobs.finish(s, running.id, "w", "cancelled")
        with pytest.raises(jobs.InvalidTransition):
            jobs.request_cancel(s, running.id)
        with pytest.raises(jobs.JobNotFound):
            jobs.request_cancel(s, "nope")


def test_list_is_stable_and_paginated(db_url):
    with session_scope(db_url) as s:
        ids = [jobs.create_job(s, "ingest", {"path": f"/{i}"})[0].id for i in range(7)]
        jobs.claim(s, ids[0], "w", 30)
        seen = []
        for offset in range(0, 7, 3):
            page, count = jobs.list_jobs(s, limit=3, offset=offset)
            assert count == 7
            seen += [j.id for j in page]
        assert sorted(seen) == sorted(ids) and len(set(seen)) == 7
        running, count = jobs.list_jobs(s, state="running")
        assert count == 1 and running[0].id == ids[0]
        stale = jobs.reap(s, now=utcnow() + timedelta(seconds=60), requeue_after_seconds=30)
        assert set(stale.resend) == set(ids[1:])  # queued for long with no claim: message re-sent
        assert s.scalar(select(Job.state).where(Job.id == ids[0])) == "queued"
