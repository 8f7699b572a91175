"""The one wrapper the pure-ASGI middlewares (request id, request metrics, audit trail) share:
`send` with a look at, or a change to, the response's start message (status and headers)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Message, Send


def on_response_start(send: Send, look: Callable[[Message], Message | None]) -> Send:
    """`send`, but `look(message)` sees `http.response.start` first; a message it returns
    replaces the original (to add a header), None sends the original."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = look(message) or message
        await send(message)

    return wrapped
