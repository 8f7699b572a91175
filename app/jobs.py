"""The job service: create, claim with a lease, heartbeat, progress, finish, cancel, reap.

Every transition is a conditional UPDATE on the job row (the record of truth), so a lost or
duplicated Celery message can never lose a job or run it twice: only the worker that holds
the lease (``lease_owner``) may move a running job, and a claim only succeeds on a queued job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import page
from app.tables import FINAL_STATES, Job, utcnow


class JobError(Exception):
    """A request the job service refuses; `status` is the HTTP status it maps to."""

    status = 400
    title = "Bad request"


class JobNotFound(JobError):
    status = 404
    title = "Job not found"


class IdempotencyConflict(JobError):
    status = 422
    title = "Idempotency-Key reused with a different request"


class InvalidTransition(JobError):
    status = 409
    title = "Job is not in a state that allows this"


def request_hash(kind: str, params: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_job(
    session: Session, kind: str, params: dict[str, Any], *, idempotency_key: str | None = None, max_attempts: int = 3,
    parent_id: str | None = None, job_id: str | None = None, created_by: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job. Returns (job, created); same key + same body returns the first job.
    A child job (`parent_id`) may be given a stable `job_id`; creating it again returns it."""
    digest = request_hash(kind, params)
    if job_id is not None:
        existing = session.get(Job, job_id)
        if existing is not None:
            return existing, False
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _same_request(existing, digest, idempotency_key), False
    # enqueued_at is set here, in the insert, rather than by an UPDATE after sending the
    # message: such an UPDATE would hold the row lock just when the worker tries to claim it.
    job = Job(kind=kind, params=params, idempotency_key=idempotency_key, request_hash=digest,
              max_attempts=max_attempts, enqueued_at=utcnow(), parent_id=parent_id, created_by=created_by)
    if job_id is not None:
        job.id = job_id
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Two requests with the same key raced; the loser returns the winner's job.
        session.rollback()
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _same_request(existing, digest, idempotency_key), False
    return job, True


def _same_request(existing: Job, digest: str, key: str) -> Job:
    if existing.request_hash != digest:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was first used for a different request (job {existing.id}).")
    return existing


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"No job with id {job_id!r}.")
    return job


def list_jobs(
    session: Session, *, kind: str | None = None, state: str | None = None, limit: int = 50, offset: int = 0,
    parent_id: str | None = None, narrow: Callable[[Select], Select] | None = None,
) -> tuple[list[Job], int]:
    """`narrow` restricts the rows further (app.ownership.visible: what the caller may read)."""
    query = select(Job) if narrow is None else narrow(select(Job))
    if parent_id:
        query = query.where(Job.parent_id == parent_id)
    if kind:
        query = query.where(Job.kind == kind)
    if state:
        query = query.where(Job.state == state)
    return page(session, query, Job, limit, offset)


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> Job | None:
    """Take a queued job for `owner`; None if it is not queued (already taken, done, cancelled).

    The row is locked FOR UPDATE (Postgres; SQLite serialises writers) so two workers woken by a
    duplicated message cannot both take it: the second waits, then sees state 'running'."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.state == "queued").with_for_update())
    if job is None:
        session.rollback()
        return None
    now = utcnow()
    if job.attempts >= job.max_attempts:
        session.execute(update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="failed", finished_at=now, error=f"gave up after {job.attempts} attempts (worker lost each time)"))
        session.commit()
        return None
    # The UPDATE re-checks the state: SQLite has no FOR UPDATE, so two claimers may both have
    # read 'queued'; only one of them changes a row.
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "queued").values(
            state="running", attempts=Job.attempts + 1, lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now)))
    session.commit()
    if res.rowcount != 1:
        return None
    session.refresh(job)
    return job


def _owned(job_id: str, owner: str):  # noqa: ANN202
    return update(Job).where(Job.id == job_id, Job.state == "running", Job.lease_owner == owner)


def heartbeat(session: Session, job_id: str, owner: str, lease_seconds: float) -> tuple[bool, bool]:
    """Extend the lease. Returns (still_owner, cancel_requested)."""
    now = utcnow()
    res = session.execute(
        _owned(job_id, owner).values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    session.commit()
    return res.rowcount == 1, cancel


def set_progress(
    session: Session, job_id: str, owner: str, current: int, total: int, message: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> tuple[bool, bool]:
    """Record progress. Returns (still_owner, cancel_requested)."""
    values: dict[str, Any] = {"progress_current": current, "progress_total": total}
    if message is not None:
        values["progress_message"] = message[:200]
    if metrics is not None:
        values["metrics"] = metrics
    res = session.execute(_owned(job_id, owner).values(**values))
    cancel = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    session.commit()
    return res.rowcount == 1, cancel


def finish(
    session: Session, job_id: str, owner: str, state: str, *, result: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None, error: str | None = None, commit: bool = True,
) -> bool:
    """Move an owned running job to a final state. False if the lease was lost meanwhile."""
    assert state in FINAL_STATES
    values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "lease_owner": None, "lease_expires_at": None}
    if result is not None:
        values["result"] = result
    if metrics is not None:
        values["metrics"] = metrics
    if error is not None:
        values["error"] = error
    res = session.execute(_owned(job_id, owner).values(**values))
    if commit:
        session.commit()
    return res.rowcount == 1


def lock_for_finish(session: Session, job_id: str, owner: str) -> Job | None:
    """Lock an owned running job's row for the rest of the transaction (SELECT ... FOR UPDATE;
    SQLite serialises writers anyway). A cancel request waits on this lock, so the success and
    the cancel cannot both win: whatever the worker reads here (`cancel_requested`) is final.
    None if the lease was lost."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.state == "running", Job.lease_owner == owner)
                          .with_for_update())


def release(session: Session, job_id: str, owner: str) -> bool:
    """A worker that is shutting down hands its running job back: queued again, lease cleared,
    the attempt not counted (a graceful stop is not a failure). Its checkpoints let the next
    worker resume. A cancel requested since the worker's last check is honoured instead: the job
    ends cancelled, never queued again (as in `reap`; found by tests/test_job_state_machine.py)."""
    res = session.execute(_owned(job_id, owner).where(Job.cancel_requested.is_(False)).values(
        state="queued", lease_owner=None, lease_expires_at=None, attempts=Job.attempts - 1, enqueued_at=None))
    if res.rowcount == 0:
        res = session.execute(_owned(job_id, owner).where(Job.cancel_requested.is_(True)).values(
            state="cancelled", finished_at=utcnow(), lease_owner=None, lease_expires_at=None))
    session.commit()
    return res.rowcount == 1


def children(session: Session, job_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.created_at, Job.id)).all())


def request_cancel(session: Session, job_id: str) -> Job:
    """Queued jobs are cancelled at once; running ones are asked to stop at their next check.
    A parent's unfinished children are cancelled with it."""
    job = _cancel_one(session, job_id)
    for child in children(session, job_id):
        if child.state not in FINAL_STATES:
            _cancel_one(session, child.id)
    session.refresh(job)
    return job


def _cancel_one(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id)
    if job.state in FINAL_STATES:
        raise InvalidTransition(f"Job {job_id} is already {job.state}.")
    if job.state == "queued":
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.state == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=utcnow())
        )
    else:
        res = session.execute(update(Job).where(Job.id == job_id, Job.state == "running").values(cancel_requested=True))
    session.commit()
    if res.rowcount != 1:  # it moved between our read and our write: try again on the new state
        return _cancel_one(session, job_id)
    session.refresh(job)
    return job


@dataclass
class ReapReport:
    requeued: list[str]
    failed: list[str]
    resend: list[str]


def reap(session: Session, *, now: datetime | None = None, requeue_after_seconds: float = 30.0) -> ReapReport:
    """Put running jobs whose lease expired back to queued (or fail them when out of attempts),
    and list queued jobs whose wake-up message may have been lost so the caller re-sends it."""
    now = now or utcnow()
    report = ReapReport([], [], [])
    expired = session.scalars(
        select(Job).where(Job.state == "running", Job.lease_expires_at < now).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        previous = job.lease_owner
        job.lease_owner, job.lease_expires_at = None, None
        if job.cancel_requested:
            job.state, job.finished_at = "cancelled", now
        elif job.attempts >= job.max_attempts:
            job.state, job.finished_at = "failed", now
            job.error = f"worker lost {job.attempts} times (last lease held by {previous}); giving up"
            report.failed.append(job.id)
        else:
            job.state = "queued"
            job.enqueued_at = now
            report.requeued.append(job.id)
    stale = session.scalars(
        select(Job.id).where(
            Job.state == "queued", (Job.enqueued_at.is_(None)) | (Job.enqueued_at < now - timedelta(seconds=requeue_after_seconds))
        )
    ).all()
    report.resend.extend(stale)
    if stale:
        session.execute(update(Job).where(Job.id.in_(stale)).values(enqueued_at=now))
    session.commit()
    return report
