"""The dashboard: one static page at `/` and its files under `/static/` (app/web/, shipped as
package data). Public like /healthz: the page holds no data; every call it makes to /v1 carries
the key the user typed, kept in the browser's sessionStorage."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# Same origin only: no CDN, no inline script or style, no framing; images from the API arrive
# as blobs (artifacts need the key, so an <img src> cannot fetch them itself).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY"}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={**HEADERS, "Cache-Control": "no-cache"})


class _StaticWithHeaders(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message):  # noqa: ANN001, ANN202
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                headers.append((b"cache-control", b"no-cache"))  # revalidated (ETag): a new release shows at once
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mount the page at `/` and its files at `/static/`."""
    app.include_router(router)
    app.mount("/static", _StaticWithHeaders(directory=WEB_DIR), name="static")
