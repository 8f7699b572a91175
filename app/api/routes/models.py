"""/v1/models: generator and classifier versions, and promotion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import model_registry
from app.api.deps import PrincipalDep, SessionDep
from app.auth import require_admin
from app.ownership import get_readable, set_shared, visible
from app.db import page
from app.api.schemas import ModelList, ModelPublic, ShareBody, model_public
from app.problems import Problem
from app.tables import ModelVersion

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def list_models(
    session: SessionDep, principal: PrincipalDep,
    kind: Annotated[str | None, Query(pattern="^(generator|classifier)$")] = None,
    label: Annotated[int | None, Query(ge=0, le=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ModelList:
    query = visible(select(ModelVersion), ModelVersion, principal)
    if kind:
        query = query.where(ModelVersion.kind == kind)
    if label is not None:
        query = query.where(ModelVersion.label == label)
    rows, count = page(session, query, ModelVersion, limit, offset)
    return ModelList(data=[model_public(m) for m in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: str, session: SessionDep, principal: PrincipalDep) -> ModelPublic:
    model = get_readable(session, ModelVersion, model_id, "model", principal)
    return model_public(model)


@router.post("/{model_id}/promote", response_model=ModelPublic)
def promote_model(model_id: str, session: SessionDep, request: Request, principal: PrincipalDep) -> ModelPublic:
    """Make this version the one used by default (generators: per label; classifiers: for
    /predictions). Admin keys only: a promoted model answers everyone's requests."""
    model = get_readable(session, ModelVersion, model_id, "model", principal)
    require_admin(principal, "promote a model")
    try:
        model_registry.promote(session, model)
        session.commit()
    except IntegrityError as exc:  # another promotion in the same slot committed first
        session.rollback()
        raise Problem(409, "Promotion conflict", "Another version of this slot was promoted at the same moment; "
                      "read the models again and retry.") from exc
    session.refresh(model)
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is not None and model.kind == "classifier":
        predictor.invalidate()
    return model_public(model)


@router.post("/{model_id}/share", response_model=ModelPublic)
def share_model(model_id: str, body: ShareBody, session: SessionDep, principal: PrincipalDep) -> ModelPublic:
    """Share read-only with every key (`{"shared": true}`), or stop sharing. Creator or admin."""
    model = get_readable(session, ModelVersion, model_id, "model", principal)
    set_shared(session, model, principal, "model", body.shared)
    return model_public(model)
