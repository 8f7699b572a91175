"""/v1/uploads: a zip of patches in the public IDC layout, for an ingest job's `upload_id`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.api.deps import PrincipalDep, SettingsDep, StorageDep
from app.auth import Principal
from app.db import session_scope
from app.quotas import check_storage_quota
from app.problems import Problem
from app.storage import Storage
from app.tables import Upload, new_id
from app.uploads import ZipLimits, ZipRefused, check_upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


class UploadPublic(BaseModel):
    upload_id: str
    size_bytes: int
    n_entries: int


@router.post("", status_code=201, response_model=UploadPublic,
             openapi_extra={"requestBody": {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_zip(request: Request, settings: SettingsDep, storage: StorageDep,
                     principal: PrincipalDep) -> UploadPublic:
    """Send the zip as the raw request body (Content-Type: application/zip). Refused (422) when
    an entry would land outside its folder, is a symbolic link, or the zip declares more entries
    or bytes than the HISTOSYNTH_ZIP_* caps; uploads are deleted after HISTOSYNTH_UPLOAD_TTL_SECONDS."""
    await run_in_threadpool(_check_quota, request, principal)
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
        # Reading the central directory (and publishing, a PUT on S3) blocks: not on the event loop.
        try:
            n_entries = await run_in_threadpool(check_upload, path, ZipLimits.from_settings(settings))
        except ZipRefused as exc:
            raise Problem(422, exc.title, "; ".join(exc.problems[:5]), problems=exc.problems[:50]) from exc
        await run_in_threadpool(storage.move_file, Storage.upload_key(upload_id), path)
    # The row says whose it is (app.ownership): only its creator, or an admin, may ingest it.
    await run_in_threadpool(_record, request, upload_id, principal.key_id, size, n_entries)
    request.state.audit_object = ("upload", upload_id)  # app.audit_log records it
    return UploadPublic(upload_id=upload_id, size_bytes=size, n_entries=n_entries)


def _check_quota(request: Request, principal: Principal) -> None:
    declared = request.headers.get("content-length", "")
    with session_scope(request.app.state.settings.resolved_database_url) as s:
        check_storage_quota(s, request.app.state.settings, principal, int(declared) if declared.isdigit() else 0)


def _record(request: Request, upload_id: str, created_by: str | None, size: int, n_entries: int) -> None:
    with session_scope(request.app.state.settings.resolved_database_url) as s:
        s.add(Upload(id=upload_id, created_by=created_by, size_bytes=size, n_entries=n_entries))
