"""RFC 9457 problem details: every error a client sees, and never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import request_id
from app.jobs import JobError

log = logging.getLogger("histosynth.api")
MEDIA_TYPE = "application/problem+json"

# What every /v1 route may answer besides its success, for the OpenAPI document (app.main): a
# problem for any 4xx (401 key, 403 admin, 404, 409, 413, 422, 429). Declaring "4XX" also keeps
# FastAPI from documenting its own 422 body, which this app never sends (see _validation).
PROBLEM_SCHEMA = {
    "type": "object", "required": ["type", "title", "status"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"}, "request_id": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object"}}},
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "A problem (RFC 9457)", "content": {MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}},
}


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers  # e.g. Retry-After on a 429 or 503


def problem_response(status: int, title: str, detail: str | None = None, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    rid = extra.get("request_id") or request_id.current.get()
    if rid:
        body["request_id"] = rid
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic errors minus the echoed input and internals, which can be huge or binary."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, request.url.path, headers=exc.headers,
                                **exc.extra)

    @app.exception_handler(JobError)
    async def _job_error(request: Request, exc: JobError) -> JSONResponse:
        return problem_response(exc.status, exc.title, str(exc), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_errors(list(exc.errors()))
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(422, "Request body or parameters are invalid", detail, request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(exc.status_code, title, detail, request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette runs this outside every middleware, so the id comes from the scope's state
        # (app.request_id put it there) and the header is added here.
        rid = getattr(request.state, "request_id", None) or request_id.new_reference()
        log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, rid)
        return problem_response(500, "Internal server error",
                                "The error was logged; quote the request_id to the operator.", request.url.path,
                                headers={request_id.HEADER: rid}, request_id=rid)
