"""/v1/experiments: a shortcut that posts an experiment job (the paper's whole pipeline)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response

from app.api.deps import JobRate, PrincipalDep, QueueDep, SessionDep, SettingsDep
from app.api.schemas import JobPublic
from app.api.submission import accept_job

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.post("", status_code=202, response_model=JobPublic, dependencies=[JobRate])
def create_experiment(
    response: Response, session: SessionDep, settings: SettingsDep, queue: QueueDep, principal: PrincipalDep,
    body: Annotated[dict[str, Any], Body(examples=[{"dataset_id": "<id>", "fraction": 0.05, "steps": 2000,
                                                    "weights": "none", "mode": "finetune", "epochs": 3,
                                                    "input_size": 64}])],
    idempotency_key: Annotated[str | None, Header(max_length=160)] = None,
) -> JobPublic:
    """Body: the experiment job's params (README, Job kinds); its steps appear as `children`."""
    return accept_job(response, session, settings, queue, principal, "experiment", body, idempotency_key)
