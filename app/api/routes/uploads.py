"""/v1/uploads: a zip of patches in the public IDC layout, for an ingest job's `upload_id`."""

from __future__ import annotations

import zipfile

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import SettingsDep, StorageDep
from app.problems import Problem
from app.storage import Storage
from app.tables import new_id
from app.uploads import zip_problems

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


class UploadPublic(BaseModel):
    upload_id: str
    size_bytes: int
    n_entries: int


@router.post("", status_code=201, response_model=UploadPublic,
             openapi_extra={"requestBody": {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_zip(request: Request, settings: SettingsDep, storage: StorageDep) -> UploadPublic:
    """Send the zip as the raw request body (Content-Type: application/zip)."""
    upload_id = new_id()
    size = 0
    with storage.scratch("uploads", upload_id) as work:  # removed whatever happens
        path = work / "upload.zip"
        with open(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise Problem(413, "Upload too large", f"The limit is {settings.max_upload_bytes} bytes.")
                fh.write(chunk)
        if size == 0:
            raise Problem(422, "Empty upload", "The request body was empty; send a zip file.")
        if not zipfile.is_zipfile(path):
            raise Problem(422, "Not a zip file", "The upload is not a readable zip archive.")
        with zipfile.ZipFile(path) as zf:
            problems = zip_problems(zf)
            n_entries = len(zf.infolist())
        if problems:
            raise Problem(422, "Zip refused", "; ".join(problems[:5]), problems=problems[:50])
        storage.move_file(Storage.upload_key(upload_id), path)
    return UploadPublic(upload_id=upload_id, size_bytes=size, n_entries=n_entries)
