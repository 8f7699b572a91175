"""/v1/artifacts/{id}: files produced by jobs, served by opaque id only (never by path or key);
/v1/jobs/{id}/artifacts: a job's artifacts, paged."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import PrincipalDep, SessionDep, StorageDep
from app.ownership import get_readable
from app.api.schemas import PAGE_MAX, ArtifactList, DownloadLink, artifact_public, job_rows
from app.download_links import QUERY_PARAM, make_link
from app.packed import META_FILE
from app.problems import Problem
from app.storage import StorageError
from app.tables import ApiKey, Artifact, Job, utcnow
from app.zipstream import iter_png_zip

router = APIRouter(tags=["artifacts"])


@router.get("/v1/jobs/{job_id}/artifacts", response_model=ArtifactList)
def list_job_artifacts(
    job_id: str, session: SessionDep, principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    name_prefix: Annotated[str | None, Query(max_length=300, description="e.g. samples/label1/")] = None,
) -> ArtifactList:
    """All of a job's artifacts, oldest first (a job's JSON embeds only the newest)."""
    get_readable(session, Job, job_id, "job", principal)
    rows, count = job_rows(session, Artifact, job_id, limit=limit, offset=offset, name_prefix=name_prefix)
    return ArtifactList(data=[artifact_public(a) for a in rows], count=count, limit=limit, offset=offset)


@router.post("/v1/artifacts/{artifact_id}/link", response_model=DownloadLink)
def link_artifact(artifact_id: str, request: Request, session: SessionDep, principal: PrincipalDep) -> DownloadLink:
    """A short-lived URL for this artifact that works without the key (app/download_links.py):
    a browser saves a large zip straight to disk from it. In open mode the plain URL."""
    get_readable(session, Artifact, artifact_id, "artifact", principal)
    ttl = request.app.state.settings.download_link_seconds
    url = f"/v1/artifacts/{artifact_id}"
    if principal.key_id is None:
        return DownloadLink(url=url, expires_at=utcnow() + timedelta(seconds=ttl))
    token, expires = make_link(session.get(ApiKey, principal.key_id), artifact_id, ttl)
    return DownloadLink(url=f"{url}?{QUERY_PARAM}={token}", expires_at=datetime.fromtimestamp(expires, timezone.utc))


@router.get("/v1/artifacts/{artifact_id}", response_class=FileResponse)
def get_artifact(
    artifact_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep,
    link: Annotated[str | None, Query(max_length=300, description="a download link's token (POST .../link), "
                                      "instead of the Authorization header; app.auth checks it")] = None,
) -> Response:
    artifact = get_readable(session, Artifact, artifact_id, "artifact", principal)
    filename = Path(artifact.name).name
    gone = Problem(410, "Artifact file is gone", f"Artifact {artifact_id} is recorded but its file was removed.")
    try:
        if storage.exists(f"{artifact.key}/{META_FILE}"):  # a packed dataset exported as a zip of PNGs
            folder = storage.local_tree(artifact.key)
            return StreamingResponse(iter_png_zip(folder, f"{Path(artifact.name).stem}_"),
                                     media_type=artifact.media_type,
                                     headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        if storage.is_local:
            return FileResponse(storage.local_path(artifact.key), media_type=artifact.media_type, filename=filename)
        size = storage.size(artifact.key)
        return StreamingResponse(storage.iter_bytes(artifact.key), media_type=artifact.media_type,
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                          "Content-Length": str(size)})
    except StorageError as exc:
        raise gone from exc
