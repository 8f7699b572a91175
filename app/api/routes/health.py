"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.db import get_engine
from app.metrics import REGISTRY

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])  # mounted public or behind an admin key (app.main)
log = logging.getLogger("histosynth.health")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(url: str) -> str | None:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - host names and drivers' texts stay in the log
        log.warning("readiness: database unreachable: %s", exc)
        return "unreachable"


def _check_broker(settings) -> str | None:  # noqa: ANN001
    if settings.is_embedded:
        folder = settings.broker_folder / "queue"
        if folder.is_dir():
            return None
        log.warning("readiness: broker folder %s is missing", folder)
        return "missing"
    try:
        from kombu import Connection

        with Connection(settings.resolved_broker_url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:  # noqa: BLE001
        log.warning("readiness: broker unreachable: %s", exc)
        return "unreachable"


@router.get("/readyz", responses={503: {"description": "Not ready: a problem naming the failed checks",
                                         "content": {"application/problem+json": {}}}})
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    checks = {"database": _check_db(settings.resolved_database_url), "broker": _check_broker(settings)}
    predictor = getattr(request.app.state, "predictor", None)
    model = predictor.status() if predictor is not None else {"loaded": False}
    ok = all(v is None for v in checks.values())
    body = {"status": "ready" if ok else "not ready",
            "checks": {k: ("ok" if v is None else v) for k, v in checks.items()}, "classifier": model}
    if not ok:
        body.update({"type": "about:blank", "title": "Not ready", "status": 503})
        return JSONResponse(body, status_code=503, media_type="application/problem+json")
    return JSONResponse(body)


@metrics_router.get("/metrics", response_class=PlainTextResponse)  # documented as text, as it is
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
