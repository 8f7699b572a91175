"""Nothing internal reaches a client (issue 10, part 5): problems carry an opaque request id
(also in `X-Request-ID`), unhandled errors and readiness failures say nothing about hosts,
paths or drivers, a crashed job's error is a reference into the worker log."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from app.db import session_scope
from app.main import create_app
from app.migrate import upgrade_head
from app.settings import Settings
from app.tables import Job
from worker.context import Outcome, run_job


def _client_run(settings: Settings, scenario, app=None):  # noqa: ANN001, ANN202
    async def main():  # noqa: ANN202
        transport = httpx.ASGITransport(app=app or create_app(settings), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await scenario(client)
    return asyncio.run(main())


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(home=tmp_path)
    upgrade_head(s.resolved_database_url)
    return s


def test_problems_and_responses_carry_a_request_id(settings):
    async def scenario(client):  # noqa: ANN001, ANN202
        return (await client.get("/v1/jobs/nope"), await client.get("/v1/jobs/nope", headers={"X-Request-ID": "proxy-abc-123"}),
                await client.get("/v1/jobs/nope", headers={"X-Request-ID": "bad id\nInjected: 1"}),
                await client.get("/healthz"))
    missing, forwarded, hostile, health = _client_run(settings, scenario)
    rid = missing.headers["x-request-id"]
    assert missing.status_code == 404 and missing.json()["request_id"] == rid and len(rid) == 16
    assert forwarded.headers["x-request-id"] == "proxy-abc-123" == forwarded.json()["request_id"]
    assert hostile.headers["x-request-id"] != "bad id\nInjected: 1" and len(hostile.headers["x-request-id"]) == 16
    assert health.headers["x-request-id"] and health.headers["x-request-id"] != rid


def test_an_unhandled_error_is_opaque_and_logged_under_its_id(settings, caplog):
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 at db.internal.example:5432 in /srv/secret/path")

    async def scenario(client):  # noqa: ANN001, ANN202
        return await client.get("/boom")
    with caplog.at_level(logging.ERROR, logger="histosynth.api"):
        resp = _client_run(settings, scenario, app=app)
    assert resp.status_code == 500 and resp.headers["content-type"].startswith("application/problem+json")
    for secret in ("hunter2", "db.internal", "/srv/secret", "RuntimeError", "Traceback"):
        assert secret not in resp.text
    rid = resp.json()["request_id"]
    assert resp.headers["x-request-id"] == rid
    assert any(rid in r.getMessage() for r in caplog.records) and "hunter2" in caplog.text


def test_readiness_names_no_hosts(tmp_path):
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://u:secretpw@db.internal.example:1/x",
                        broker_url="redis://redis.internal.example:1/0")

    async def scenario(client):  # noqa: ANN001, ANN202
        return await client.get("/readyz")
    resp = _client_run(settings, scenario)
    assert resp.status_code == 503
    assert resp.json()["checks"] == {"database": "unreachable", "broker": "unreachable"}
    for secret in ("internal.example", "secretpw", "psycopg", "Error"):
        assert secret not in resp.text


def test_a_crashed_job_gets_a_reference_not_the_exception(settings, caplog):
    from app import jobs

    with session_scope(settings.resolved_database_url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/x"})
        job_id = job.id

    def crash(ctx) -> Outcome:  # noqa: ANN001
        raise KeyError("/srv/private/patient-10253/secret.png")

    with caplog.at_level(logging.ERROR):
        assert run_job(settings, job_id, {"ingest": crash}) == "failed"
    with session_scope(settings.resolved_database_url) as s:
        error = s.get(Job, job_id).error
    assert error.startswith("internal error (reference ") and "/srv/private" not in error and "KeyError" not in error
    ref = error.split("reference ")[1].split()[0]
    assert ref in caplog.text and "/srv/private/patient-10253" in caplog.text
