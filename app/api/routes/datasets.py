"""/v1/datasets: packed datasets made by ingest and generate jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import PrincipalDep, SessionDep
from app.db import page
from app.api.schemas import DatasetList, DatasetPublic, ShareBody, dataset_public
from app.ownership import get_readable, set_shared, visible
from app.tables import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.get("", response_model=DatasetList)
def list_datasets(
    session: SessionDep, principal: PrincipalDep,
    kind: Annotated[str | None, Query(pattern="^(real|synthetic)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetList:
    query = visible(select(Dataset), Dataset, principal)
    if kind:
        query = query.where(Dataset.kind == kind)
    rows, count = page(session, query, Dataset, limit, offset)
    return DatasetList(data=[dataset_public(d, principal) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> DatasetPublic:
    dataset = get_readable(session, Dataset, dataset_id, "dataset", principal)
    return dataset_public(dataset, principal)


@router.post("/{dataset_id}/share", response_model=DatasetPublic)
def share_dataset(dataset_id: str, body: ShareBody, session: SessionDep, principal: PrincipalDep) -> DatasetPublic:
    """Share read-only with every key (`{"shared": true}`), or stop sharing. Creator or admin."""
    dataset = get_readable(session, Dataset, dataset_id, "dataset", principal)
    set_shared(session, dataset, principal, "dataset", body.shared)
    return dataset_public(dataset, principal)
