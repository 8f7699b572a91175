"""The audit log (issue 10, part 6): who (key id) did what, to which object, when, and how it
ended. Every state-changing /v1 request is recorded by `AuditTrail` after its response, and
every refused one (401/403), reads included; the CLI records key management. Only route
templates, ids and status codes are stored: never bodies, never image bytes."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi_send import on_response_start
from app.db import session_scope
from app.tables import AuditEvent

log = logging.getLogger("histosynth.audit")
CHANGES = ("POST", "PUT", "PATCH", "DELETE")
# The object a route acts on, by its path parameter (templates like /v1/jobs/{job_id}/cancel).
OBJECT_PARAMS = {"job_id": "job", "dataset_id": "dataset", "model_id": "model", "artifact_id": "artifact",
                 "upload_id": "upload"}
CREATED = {"/v1/jobs": "job", "/v1/generations": "job", "/v1/experiments": "job"}


def record(session: Session, key_id: str | None, action: str, status: int, *, object_type: str | None = None,
           object_id: str | None = None, detail: dict[str, Any] | None = None) -> None:
    session.add(AuditEvent(key_id=key_id, action=action[:100], object_type=object_type,
                           object_id=(object_id or None) and object_id[:64], status=status, detail=detail or {}))
    session.commit()


class AuditTrail:
    """Pure ASGI: it sees the matched route, the principal the auth dependency left in the
    scope's state, the status and the Location header of a creation."""

    def __init__(self, app: ASGIApp, database_url: str) -> None:
        self.app, self.url = app, database_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {"status": 500, "location": None}

        def watch(message: Message) -> None:
            seen["status"] = message["status"]
            for k, v in message.get("headers", []):
                if k.lower() == b"location":
                    seen["location"] = v.decode("latin-1")

        try:
            await self.app(scope, receive, on_response_start(send, watch))
        finally:
            status = seen["status"]
            if scope["method"] in CHANGES or status in (401, 403):
                await run_in_threadpool(self._write, scope, status, seen["location"])

    def _write(self, scope: Scope, status: int, location: str | None) -> None:
        template = getattr(scope.get("route"), "path", None) or "unmatched"
        object_type = object_id = None
        for param, kind in OBJECT_PARAMS.items():
            if param in (scope.get("path_params") or {}):
                object_type, object_id = kind, str(scope["path_params"][param])
        state = scope.get("state") or {}
        if object_id is None and template in CREATED and location:
            object_type, object_id = CREATED[template], location.rstrip("/").rsplit("/", 1)[-1]
        if object_id is None and state.get("audit_object"):  # a route that names what it made
            object_type, object_id = state["audit_object"]
        principal = state.get("principal")
        detail = {"request_id": state.get("request_id")}
        if principal is not None:
            detail["role"] = principal.role
        try:
            with session_scope(self.url) as s:
                record(s, getattr(principal, "key_id", None), f"{scope['method']} {template}", status,
                       object_type=object_type, object_id=object_id, detail=detail)
        except Exception:  # noqa: BLE001 - a lost audit row is logged; the request already happened
            log.exception("could not write the audit event for %s %s", scope["method"], template)
