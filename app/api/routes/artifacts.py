"""/v1/artifacts/{id}: files produced by jobs, served by opaque id only (never by path)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi import Response
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import SessionDep, get_or_404
from app.problems import Problem
from app.tables import Artifact
from app.zipstream import iter_png_zip

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_class=FileResponse)
def get_artifact(artifact_id: str, session: SessionDep) -> Response:
    artifact = get_or_404(session, Artifact, artifact_id, "artifact")
    path = Path(artifact.path)
    if path.is_dir() and (path / "meta.json").is_file():  # a packed dataset exported as a zip of PNGs
        stem = Path(artifact.name).stem
        return StreamingResponse(iter_png_zip(path, f"{stem}_"), media_type=artifact.media_type,
                                 headers={"Content-Disposition": f'attachment; filename="{Path(artifact.name).name}"'})
    if not path.is_file():
        raise Problem(410, "Artifact file is gone", f"Artifact {artifact_id} is recorded but its file was removed.")
    return FileResponse(path, media_type=artifact.media_type, filename=Path(artifact.name).name)
