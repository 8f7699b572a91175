"""/v1/artifacts/{id}: files produced by jobs, served by opaque id only (never by path or key)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import SessionDep, StorageDep, get_or_404
from app.packed import META_FILE
from app.problems import Problem
from app.storage import StorageError
from app.tables import Artifact
from app.zipstream import iter_png_zip

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_class=FileResponse)
def get_artifact(artifact_id: str, session: SessionDep, storage: StorageDep) -> Response:
    artifact = get_or_404(session, Artifact, artifact_id, "artifact")
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
