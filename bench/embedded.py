"""`histosynth serve` in embedded mode (SQLite + filesystem broker in a temp home) for the
benchmarks that drive the service through its REST API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def embedded_service(prefix: str, env: dict[str, str] | None = None,
                     home: Path | None = None) -> Iterator[tuple[httpx.Client, Path]]:
    """(client, home) of a fresh API + worker (or one on an existing `home`), stopped on exit
    (SIGTERM, as a deploy would); `env` adds HISTOSYNTH_ settings (an S3 storage URL, say)."""
    home = home or Path(tempfile.mkdtemp(prefix=prefix))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Benchmarks measure a fresh registry: no shipped starter models (app/starter_models.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_")} | {
        "HISTOSYNTH_HOME": str(home), "HISTOSYNTH_STARTER_MODELS": "false", **(env or {})}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=open(home / "serve.log", "wb"), stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        for _ in range(300):
            try:
                client.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.3)
        yield client, home
    finally:
        client.close()
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def wait_job(client: httpx.Client, job_id: str, poll: float = 0.5) -> dict:
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(poll)
    return job


def job_seconds(job: dict) -> float | None:
    """Wall time from the worker's claim to the recorded outcome."""
    from datetime import datetime

    if not job.get("started_at") or not job.get("finished_at"):
        return None
    return round((datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds(), 1)
