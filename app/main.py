"""The FastAPI application factory."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request

from app import problems
from app.api.routes import artifacts, datasets, generations, health, jobs, models, predictions, uploads
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS, REGISTRY, JobStateCollector
from app.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = FastAPI(
        title="histosynth",
        version="0.1.0",
        description="Synthetic breast-histopathology patches (MSG-GAN) and ResNet18 classification.",
    )
    app.state.settings = settings
    from app.predictor import Predictor

    app.state.predictor = Predictor(settings)
    problems.install(app)
    for module in (jobs, generations, predictions, datasets, models, artifacts, uploads, health):
        app.include_router(module.router)

    collector = JobStateCollector(settings.resolved_database_url)
    try:
        REGISTRY.register(collector)
    except ValueError:  # a second app in one process (tests): replace the old collector
        pass

    @app.middleware("http")
    async def _count(request: Request, call_next):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, path).observe(time.perf_counter() - start)
        return response

    return app
