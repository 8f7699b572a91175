"""/v1/audit: the audit log, newest first (admin keys only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from app.api.deps import PrincipalDep, SessionDep
from app.auth import require_admin
from app.tables import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    key_id: str | None
    action: str
    object_type: str | None
    object_id: str | None
    status: int
    detail: dict[str, Any]


class AuditList(BaseModel):
    data: list[AuditEventPublic]
    count: int


@router.get("", response_model=AuditList)
def list_events(
    session: SessionDep, principal: PrincipalDep,
    key_id: Annotated[str | None, Query(max_length=32)] = None,
    object_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditList:
    require_admin(principal, "read the audit log")
    query = select(AuditEvent)
    if key_id:
        query = query.where(AuditEvent.key_id == key_id)
    if object_id:
        query = query.where(AuditEvent.object_id == object_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
    return AuditList(data=[AuditEventPublic.model_validate(r, from_attributes=True) for r in rows], count=count)
