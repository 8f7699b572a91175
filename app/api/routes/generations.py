"""/v1/generations: a shortcut that posts a generate job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response

from app.api.deps import JobRate, PrincipalDep, QueueDep, SessionDep, SettingsDep
from app.api.schemas import JobPublic
from app.api.submission import accept_job

router = APIRouter(prefix="/v1/generations", tags=["generations"])


@router.post("", status_code=202, response_model=JobPublic, dependencies=[JobRate])
def create_generation(
    response: Response, session: SessionDep, settings: SettingsDep, queue: QueueDep, principal: PrincipalDep,
    body: Annotated[dict[str, Any], Body(examples=[{"label": "IDC+", "n": 64, "seed": 1}])],
    idempotency_key: Annotated[str | None, Header(max_length=160)] = None,
) -> JobPublic:
    """Body: {"label": "IDC+"|"IDC-"|1|0, "n": N, "seed"?: S, "model_id"?: M, "size"?: 64|50}."""
    return accept_job(response, session, settings, queue, principal, "generate", body, idempotency_key)
