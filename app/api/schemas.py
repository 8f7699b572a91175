"""Public shapes of the REST API (what clients see), separate from the tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.tables import Artifact, Checkpoint, Dataset, Job, ModelVersion

# A job's JSON embeds only its newest artifacts and checkpoints (a long train_gan job has up to
# a thousand sample grids per job, and GET /v1/jobs shows up to 500 jobs); the counts say how
# many there are, and /v1/jobs/{id}/artifacts and /checkpoints page through them all.
EMBEDDED = 50
PAGE_MAX = 500


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


class DownloadLink(BaseModel):
    url: str = Field(description="GET it without the key (a browser's plain link); one artifact only")
    expires_at: datetime


class CheckpointPublic(BaseModel):
    name: str
    step: int
    size_bytes: int
    created_at: datetime


class ArtifactList(BaseModel):
    data: list[ArtifactPublic]
    count: int = Field(description="all of the job's artifacts (that match the prefix)")
    limit: int
    offset: int


class CheckpointList(BaseModel):
    data: list[CheckpointPublic]
    count: int
    limit: int
    offset: int


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
    artifacts: list[ArtifactPublic] = Field(description=f"the newest {EMBEDDED}, oldest first; all at artifacts_url")
    artifact_count: int
    artifacts_url: str
    checkpoints: list[CheckpointPublic] = Field(description=f"the newest {EMBEDDED}, oldest first; all at checkpoints_url")
    checkpoint_count: int
    checkpoints_url: str
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
    created_by: str | None = Field(None, description="the API key that created it (null: open mode)")
    shared: bool = False
    created_at: datetime


class ShareBody(BaseModel):
    shared: bool = Field(description="true: readable by every key (read-only); false: its creator's again")


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
    starter: bool = Field(False, description="shipped with the service (app/starters), not trained here")
    created_by: str | None = None
    shared: bool = False
    created_at: datetime


class ModelList(BaseModel):
    data: list[ModelPublic]
    count: int


def artifact_public(a: Artifact) -> ArtifactPublic:
    return ArtifactPublic(id=a.id, name=a.name, media_type=a.media_type, size_bytes=a.size_bytes,
                          url=f"/v1/artifacts/{a.id}")


def checkpoint_public(c: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(name=c.name, step=c.step, size_bytes=c.size_bytes, created_at=c.created_at)


# Oldest first; the last key breaks ties so pages never overlap or skip.
ORDER = {Artifact: (Artifact.created_at, Artifact.name, Artifact.id),
         Checkpoint: (Checkpoint.step, Checkpoint.created_at, Checkpoint.id)}


def job_rows(session: Session, table: type[Artifact] | type[Checkpoint], job_id: str, *, limit: int,
             offset: int = 0, newest: bool = False, name_prefix: str | None = None) -> tuple[list[Any], int]:
    """A page of a job's artifacts or checkpoints, oldest first, and how many there are in all.
    `newest`: the last `limit` rows instead (still oldest first), what a job's JSON embeds."""
    where = [table.job_id == job_id]
    if name_prefix:
        where.append(table.name.startswith(name_prefix, autoescape=True))
    count = session.scalar(select(func.count()).select_from(table).where(*where)) or 0
    order = ORDER[table]
    if newest:
        rows = session.scalars(select(table).where(*where).order_by(*(c.desc() for c in order)).limit(limit)).all()
        return list(reversed(rows)), int(count)
    rows = session.scalars(select(table).where(*where).order_by(*order).limit(limit).offset(offset)).all()
    return list(rows), int(count)


def _progress(job: Job) -> Progress:
    total = job.progress_total or 0
    return Progress(current=job.progress_current, total=total,
                    fraction=(job.progress_current / total) if total else None, message=job.progress_message)


def job_public(session: Session, job: Job) -> JobPublic:
    from app.jobs import children

    kids = [ChildPublic(id=c.id, kind=c.kind, state=c.state, progress=_progress(c), url=f"/v1/jobs/{c.id}")
            for c in children(session, job.id)]
    artifacts, n_artifacts = job_rows(session, Artifact, job.id, limit=EMBEDDED, newest=True)
    checkpoints, n_checkpoints = job_rows(session, Checkpoint, job.id, limit=EMBEDDED, newest=True)
    total = job.progress_total or 0
    return JobPublic(
        id=job.id, kind=job.kind, state=job.state, params=job.params, parent_id=job.parent_id, children=kids,
        progress=Progress(current=job.progress_current, total=total,
                          fraction=(job.progress_current / total) if total else None, message=job.progress_message),
        error=job.error, result=job.result or {}, metrics=job.metrics or {},
        artifacts=[artifact_public(a) for a in artifacts], artifact_count=n_artifacts,
        artifacts_url=f"/v1/jobs/{job.id}/artifacts",
        checkpoints=[checkpoint_public(c) for c in checkpoints], checkpoint_count=n_checkpoints,
        checkpoints_url=f"/v1/jobs/{job.id}/checkpoints",
        attempts=job.attempts, cancel_requested=job.cancel_requested, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
    )


def dataset_public(d: Dataset, principal: Principal | None = None) -> DatasetPublic:
    """Someone reading another key's shared dataset sees no patient ids (counts.by_patient) and
    no server paths (source); its creator and admins see everything."""
    out = DatasetPublic.model_validate(d, from_attributes=True)
    if principal is not None and not principal.is_admin and d.created_by != principal.key_id:
        out.counts = {k: v for k, v in out.counts.items() if k != "by_patient"}
        out.source = {}
    return out


def model_public(m: ModelVersion) -> ModelPublic:
    out = ModelPublic.model_validate(m, from_attributes=True)
    out.starter = bool((m.metrics or {}).get("starter"))
    return out
