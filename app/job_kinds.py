"""Job kinds and their parameters: validated when a job is posted, so bad input gets a 422
before anything is queued, and a worker never sees parameters it cannot use."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.orm import Session

from app.problems import Problem, _clean_errors
from app.settings import Settings
from app.storage import Storage
from app.uploads import zip_problems


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestParams(Params):
    path: str | None = Field(None, description="Server-side folder (public IDC layout) or .zip file.")
    upload_id: str | None = Field(None, description="A zip uploaded with POST /v1/uploads.")
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> "IngestParams":
        if (self.path is None) == (self.upload_id is None):
            raise ValueError("give exactly one of 'path' or 'upload_id'")
        return self


def check_ingest(params: IngestParams, settings: Settings, session: Session) -> None:
    if params.upload_id is not None:
        if not Storage(settings.resolved_storage_dir).upload_path(params.upload_id).is_file():
            raise Problem(422, "Unknown upload", f"No upload with id {params.upload_id!r}.")
        return
    path = Path(params.path).expanduser()
    if not path.is_absolute():
        raise Problem(422, "Path must be absolute", f"{params.path!r} is relative; the worker resolves nothing.")
    if settings.ingest_roots and not any(path.resolve().is_relative_to(r.resolve()) for r in settings.ingest_roots):
        raise Problem(422, "Path outside the allowed ingest roots", f"{path} is not under HISTOSYNTH_INGEST_ROOTS.")
    if not path.exists():
        raise Problem(422, "Path does not exist", f"{path} does not exist on the server.")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise Problem(422, "Not a folder or a zip file", f"{path} is a file but not a zip archive.")
        with zipfile.ZipFile(path) as zf:
            problems = zip_problems(zf)
        if problems:
            raise Problem(422, "Zip refused", "; ".join(problems[:5]), problems=problems[:50])


@dataclass(frozen=True)
class KindSpec:
    params: type[Params]
    check: Callable[[Any, Settings, Session], None] | None = None
    description: str = ""


KINDS: dict[str, KindSpec] = {
    "ingest": KindSpec(IngestParams, check_ingest, "Public IDC layout (folder or zip) -> packed dataset"),
}


def validate_params(kind: str, raw: dict[str, Any], settings: Settings, session: Session) -> dict[str, Any]:
    """Return the normalised params of `kind` or raise a 422 Problem that says what is wrong."""
    spec = KINDS.get(kind)
    if spec is None:
        raise Problem(422, "Unknown job kind", f"{kind!r} is not a job kind; known kinds: {', '.join(sorted(KINDS))}.")
    try:
        params = spec.params.model_validate(raw)
    except ValidationError as exc:
        errors = _clean_errors(list(exc.errors()))
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in errors[:5])
        raise Problem(422, f"Invalid parameters for a {kind} job", detail, errors=errors) from exc
    if spec.check is not None:
        spec.check(params, settings, session)
    return params.model_dump(exclude_none=True)
