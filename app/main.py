"""The FastAPI application factory."""

from __future__ import annotations

import time

import anyio
from fastapi import Depends, FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import problems
from app.admission import InflightGate, RateLimiter
from app.asgi_send import on_response_start
from app.audit_log import AuditTrail
from app.auth import authenticate, require_admin_key
from app.api.routes import (artifacts, audit, datasets, experiments, generations, health, jobs, models, predictions,
                            previews, uploads, web)
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS, REGISTRY, JobStateCollector
from app.queue import JobQueue
from app.request_id import RequestId
from app.settings import Settings, get_settings
from app.storage import Storage


class RequestMetrics:
    """Counts requests and observes latency per route template (pure ASGI: Starlette's
    BaseHTTPMiddleware costs a task and a stream per request, measurable on /v1/predictions)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), ["500"]

        def note_status(message: Message) -> None:
            status[0] = str(message["status"])

        try:
            await self.app(scope, receive, on_response_start(send, note_status))
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], path, status[0]).inc()
            HTTP_LATENCY.labels(scope["method"], path).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    open_mode = settings.auth == "open"
    docs = settings.docs if settings.docs is not None else open_mode
    app = FastAPI(
        title="histosynth",
        version="0.1.0",
        description="Synthetic breast-histopathology patches (MSG-GAN) and ResNet18 classification.",
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    from app.predictor import Predictor

    app.state.storage = Storage.from_settings(settings)
    app.state.predictor = Predictor(settings, storage=app.state.storage)
    app.state.queue = JobQueue(settings)
    app.state.prediction_limiter = RateLimiter(settings.rate_prediction_images_per_minute, "images")
    app.state.job_limiter = RateLimiter(settings.rate_jobs_per_minute, "jobs")
    app.state.prediction_gate = InflightGate(settings.predict_max_inflight_images)
    app.state.decode_limiter = anyio.CapacityLimiter(settings.predict_decode_threads)
    problems.install(app)
    # Every /v1 route needs a principal (app.auth): none can be left public by forgetting it.
    for module in (jobs, generations, experiments, predictions, datasets, previews, models, artifacts, uploads, audit):
        app.include_router(module.router, dependencies=[Depends(authenticate)], responses=problems.PROBLEM_RESPONSES)
    app.include_router(health.router)
    metrics_public = settings.metrics_public if settings.metrics_public is not None else open_mode
    app.include_router(health.metrics_router, dependencies=[] if metrics_public else [Depends(require_admin_key)],
                       responses={} if metrics_public else problems.PROBLEM_RESPONSES)
    web.install(app)  # the dashboard at / and /static/: public files; its data calls carry the key

    collector = JobStateCollector(settings.resolved_database_url)
    try:
        REGISTRY.register(collector)
    except ValueError:  # a second app in one process (tests): replace the old collector
        pass

    app.add_middleware(AuditTrail, database_url=settings.resolved_database_url)
    app.add_middleware(RequestMetrics)
    if settings.trusted_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
    app.add_middleware(RequestId)  # outermost: every response, errors included, carries the id
    return app
