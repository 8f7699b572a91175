"""Create a job and wake a worker. The row is written first: if the broker is down the job
stays queued and the worker's reaper re-sends its message later; nothing is lost."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app import jobs
from app.metrics import JOBS_SUBMITTED
from app.queue import JobQueue
from app.settings import Settings
from app.tables import Job

log = logging.getLogger("histosynth.api")


def submit(session: Session, settings: Settings, queue: JobQueue, kind: str, params: dict[str, Any],
           idempotency_key: str | None = None, created_by: str | None = None) -> tuple[Job, bool]:
    # Idempotency keys are per API key: another client's key can neither replay nor probe ours.
    scoped = f"{created_by}:{idempotency_key}" if idempotency_key and created_by else idempotency_key
    job, created = jobs.create_job(session, kind, params, idempotency_key=scoped,
                                   max_attempts=settings.max_attempts, created_by=created_by)
    if created:
        JOBS_SUBMITTED.labels(kind=kind).inc()
        try:
            queue.enqueue(job.id)
        except Exception:  # the reaper re-sends it once the broker is back
            log.exception("could not enqueue job %s; it stays queued", job.id)
    return job, created
