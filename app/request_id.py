"""A request id on every request and response (`X-Request-ID`), and in every problem body,
so a client can quote one opaque token and an operator finds the details in the log.

A valid incoming `X-Request-ID` (from a proxy) is kept; anything else is replaced."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.asgi_send import on_response_start

HEADER = "x-request-id"
_VALID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
current: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_reference() -> str:
    return uuid.uuid4().hex[:16]


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER.encode(), b"").decode("latin-1")
        rid = given if _VALID.match(given) else new_reference()
        scope.setdefault("state", {})["request_id"] = rid
        token = current.set(rid)

        def with_id(message: Message) -> Message:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
            return {**message, "headers": [*headers, (HEADER.encode(), rid.encode())]}

        try:
            await self.app(scope, receive, on_response_start(send, with_id))
        finally:
            current.reset(token)
