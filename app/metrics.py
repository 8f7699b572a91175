"""Prometheus metrics. Job counts by state are read from the database at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.db import session_scope
from app.tables import JOB_STATES, Job

REGISTRY = CollectorRegistry()
JOBS_SUBMITTED = Counter("histosynth_jobs_submitted_total", "Jobs created via the API", ["kind"], registry=REGISTRY)
HTTP_REQUESTS = Counter("histosynth_http_requests_total", "HTTP requests", ["method", "route", "status"],
                        registry=REGISTRY)
HTTP_LATENCY = Histogram("histosynth_http_request_seconds", "HTTP request latency", ["method", "route"],
                         registry=REGISTRY)
PREDICTIONS = Counter("histosynth_predictions_total", "Patches classified", registry=REGISTRY)
PREDICTION_BATCH = Histogram("histosynth_prediction_batch_size", "Images per classifier forward pass",
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY)


class JobStateCollector:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self):  # noqa: ANN201
        gauge = GaugeMetricFamily("histosynth_jobs", "Jobs by kind and state", labels=["kind", "state"])
        try:
            with session_scope(self.database_url) as s:
                rows = s.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
        except Exception:  # a scrape must not fail because the database blinked
            rows = []
        seen = set()
        for kind, state, n in rows:
            gauge.add_metric([kind, state], n)
            seen.add((kind, state))
        for state in JOB_STATES:
            if not any(s == state for _, s in seen):
                gauge.add_metric(["all", state], 0)
        yield gauge
