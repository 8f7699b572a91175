"""Public shapes of the REST API (what clients see), separate from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tables import Artifact, Checkpoint, Dataset, Job, ModelVersion


class JobCreate(BaseModel):
    kind: str = Field(description="ingest, train_gan, generate, train_classifier, evaluate, audit, experiment")
    params: dict[str, Any] = Field(default_factory=dict)


class Progress(BaseModel):
    current: int
    total: int
    fraction: float | None
    message: str | None


class ArtifactPublic(BaseModel):
    id: str
    name: str
    media_type: str
    size_bytes: int
    url: str


class CheckpointPublic(BaseModel):
    name: str
    step: int
    size_bytes: int
    created_at: datetime


class ChildPublic(BaseModel):
    id: str
    kind: str
    state: str
    progress: Progress
    url: str


class JobPublic(BaseModel):
    id: str
    kind: str
    state: str
    parent_id: str | None = None
    children: list[ChildPublic] = Field(default_factory=list, description="an experiment's steps, in order")
    params: dict[str, Any]
    progress: Progress
    error: str | None
    result: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[ArtifactPublic]
    checkpoints: list[CheckpointPublic]
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    data: list[JobPublic]
    count: int


class DatasetPublic(BaseModel):
    id: str
    name: str
    kind: str
    job_id: str | None
    n_patches: int
    patch_size: int
    n_patients: int
    n_edge_patches: int
    counts: dict[str, Any]
    source: dict[str, Any]
    created_at: datetime


class DatasetList(BaseModel):
    data: list[DatasetPublic]
    count: int


class ModelPublic(BaseModel):
    id: str
    kind: str
    label: int | None
    version: int
    job_id: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    promoted: bool
    created_at: datetime


class ModelList(BaseModel):
    data: list[ModelPublic]
    count: int


def artifact_public(a: Artifact) -> ArtifactPublic:
    return ArtifactPublic(id=a.id, name=a.name, media_type=a.media_type, size_bytes=a.size_bytes,
                          url=f"/v1/artifacts/{a.id}")


def _progress(job: Job) -> Progress:
    total = job.progress_total or 0
    return Progress(current=job.progress_current, total=total,
                    fraction=(job.progress_current / total) if total else None, message=job.progress_message)


def job_public(session: Session, job: Job) -> JobPublic:
    from app.jobs import children

    kids = [ChildPublic(id=c.id, kind=c.kind, state=c.state, progress=_progress(c), url=f"/v1/jobs/{c.id}")
            for c in children(session, job.id)]
    artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at, Artifact.name)).all()
    checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)).all()
    total = job.progress_total or 0
    return JobPublic(
        id=job.id, kind=job.kind, state=job.state, params=job.params, parent_id=job.parent_id, children=kids,
        progress=Progress(current=job.progress_current, total=total,
                          fraction=(job.progress_current / total) if total else None, message=job.progress_message),
        error=job.error, result=job.result or {}, metrics=job.metrics or {},
        artifacts=[artifact_public(a) for a in artifacts],
        checkpoints=[CheckpointPublic(name=c.name, step=c.step, size_bytes=c.size_bytes, created_at=c.created_at)
                     for c in checkpoints],
        attempts=job.attempts, cancel_requested=job.cancel_requested, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
    )


def dataset_public(d: Dataset) -> DatasetPublic:
    return DatasetPublic.model_validate(d, from_attributes=True)


def model_public(m: ModelVersion) -> ModelPublic:
    return ModelPublic.model_validate(m, from_attributes=True)
