"""/v1/jobs: create (idempotent), list, show, cancel; a job's checkpoints, paged (its artifacts:
app/api/routes/artifacts.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app import jobs
from app.api.deps import JobRate, PrincipalDep, QueueDep, SessionDep, SettingsDep
from app.api.schemas import (PAGE_MAX, CheckpointList, JobCreate, JobList, JobPublic, checkpoint_public, job_public,
                             job_rows)
from app.api.submission import accept_job
from app.ownership import get_readable, visible
from app.tables import JOB_STATES, Checkpoint, Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobPublic, dependencies=[JobRate])
def create_job(
    body: JobCreate, response: Response, session: SessionDep, settings: SettingsDep, queue: QueueDep,
    principal: PrincipalDep, idempotency_key: Annotated[str | None, Header(max_length=160)] = None,
) -> JobPublic:
    return accept_job(response, session, settings, queue, principal, body.kind, body.params, idempotency_key)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep, principal: PrincipalDep,
    kind: str | None = None,
    state: Annotated[str | None, Query(pattern="^(" + "|".join(JOB_STATES) + ")$")] = None,
    parent_id: Annotated[str | None, Query(max_length=32, description="children of this job")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    rows, count = jobs.list_jobs(session, kind=kind, state=state, limit=limit, offset=offset, parent_id=parent_id,
                                 narrow=lambda q: visible(q, Job, principal))
    return JobList(data=[job_public(session, j) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    return job_public(session, get_readable(session, Job, job_id, "job", principal))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def list_job_checkpoints(
    job_id: str, session: SessionDep, principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> CheckpointList:
    """All of a job's checkpoints, by step (a job's JSON embeds only the newest)."""
    get_readable(session, Job, job_id, "job", principal)
    rows, count = job_rows(session, Checkpoint, job_id, limit=limit, offset=offset)
    return CheckpointList(data=[checkpoint_public(c) for c in rows], count=count, limit=limit, offset=offset)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobPublic:
    get_readable(session, Job, job_id, "job", principal)  # jobs are never shared: readable = its creator's
    return job_public(session, jobs.request_cancel(session, job_id))
