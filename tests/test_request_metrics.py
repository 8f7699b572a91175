"""/metrics counts requests by route template and status, problems and unmatched paths too."""

from __future__ import annotations

import asyncio

import httpx

from app.main import create_app
from app.migrate import upgrade_head
from app.settings import Settings


def counter(text: str, method: str, route: str, status: str) -> float:
    prefix = f'histosynth_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_requests_are_counted_by_template_and_status(tmp_path):
    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)

    async def scenario() -> tuple[str, str]:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            before = (await client.get("/metrics")).text
            missing = await client.get("/v1/jobs/does-not-exist")
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("application/problem+json")
            assert (await client.get("/no/such/path")).status_code == 404
            assert (await client.get("/v1/jobs")).status_code == 200
            return before, (await client.get("/metrics")).text

    before, after = asyncio.run(scenario())
    for method, route, status in (("GET", "/v1/jobs/{job_id}", "404"), ("GET", "unmatched", "404"),
                                  ("GET", "/v1/jobs", "200")):
        assert counter(after, method, route, status) - counter(before, method, route, status) == 1.0, route
