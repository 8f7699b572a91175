"""/v1/generations: a shortcut that posts a generate job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response

from app.api.deps import JobRate, PrincipalDep, QueueDep, SessionDep, SettingsDep
from app.api.schemas import JobPublic, job_public
from app.job_kinds import validate_params
from app.ownership import check_references
from app.quotas import check_job_quota
from app.submit import submit

router = APIRouter(prefix="/v1/generations", tags=["generations"])


@router.post("", status_code=202, response_model=JobPublic, dependencies=[JobRate])
def create_generation(
    response: Response, session: SessionDep, settings: SettingsDep, queue: QueueDep, principal: PrincipalDep,
    body: Annotated[dict[str, Any], Body(examples=[{"label": "IDC+", "n": 64, "seed": 1}])],
    idempotency_key: Annotated[str | None, Header(max_length=160)] = None,
) -> JobPublic:
    """Body: {"label": "IDC+"|"IDC-"|1|0, "n": N, "seed"?: S, "model_id"?: M, "size"?: 64|50}."""
    check_references(session, principal, "generate", body)
    params = validate_params("generate", body, settings, session)
    check_references(session, principal, "generate", params)
    check_job_quota(session, settings, principal)
    job, created = submit(session, settings, queue, "generate", params, idempotency_key, principal.key_id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_public(session, job)
