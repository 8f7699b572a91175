"""/v1/artifacts/{id}: files produced by jobs, served by opaque id only (never by path)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.deps import SessionDep
from app.problems import Problem
from app.tables import Artifact

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_class=FileResponse)
def get_artifact(artifact_id: str, session: SessionDep) -> FileResponse:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise Problem(404, "Artifact not found", f"No artifact with id {artifact_id!r}.")
    path = Path(artifact.path)
    if not path.is_file():
        raise Problem(410, "Artifact file is gone", f"Artifact {artifact_id} is recorded but its file was removed.")
    return FileResponse(path, media_type=artifact.media_type, filename=Path(artifact.name).name)
