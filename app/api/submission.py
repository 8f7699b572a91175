"""One way every job-creating route answers: ownership checks, validation, quota, submit,
then `202` with `Location` and, for a replayed idempotency key, `Idempotent-Replayed: true`.
/v1/jobs, /v1/generations and /v1/experiments differ only in how the kind is chosen."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from sqlalchemy.orm import Session

from app.api.schemas import JobPublic, job_public
from app.auth import Principal
from app.job_kinds import validate_params
from app.ownership import check_references
from app.queue import JobQueue
from app.quotas import check_job_quota
from app.settings import Settings
from app.submit import submit


def accept_job(response: Response, session: Session, settings: Settings, queue: JobQueue, principal: Principal,
               kind: str, raw: dict[str, Any], idempotency_key: str | None) -> JobPublic:
    check_references(session, principal, kind, raw)  # before anything is resolved or echoed
    params = validate_params(kind, raw, settings, session)
    check_references(session, principal, kind, params)  # and what validation resolved (defaults)
    check_job_quota(session, settings, principal)
    job, created = submit(session, settings, queue, kind, params, idempotency_key, principal.key_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_public(session, job)
