"""/v1/datasets: packed datasets made by ingest and generate jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import SessionDep, get_or_404
from app.db import page
from app.api.schemas import DatasetList, DatasetPublic, dataset_public
from app.tables import Dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.get("", response_model=DatasetList)
def list_datasets(
    session: SessionDep,
    kind: Annotated[str | None, Query(pattern="^(real|synthetic)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DatasetList:
    query = select(Dataset)
    if kind:
        query = query.where(Dataset.kind == kind)
    rows, count = page(session, query, Dataset, limit, offset)
    return DatasetList(data=[dataset_public(d) for d in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetPublic:
    dataset = get_or_404(session, Dataset, dataset_id, "dataset")
    return dataset_public(dataset)
