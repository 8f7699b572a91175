"""Faults survived (issue 10, part 7), each one really done to real processes:

1. the worker SIGKILLed at 5 seeded random points of one train_gan job: a new worker takes the
   job back after each (lease expiry -> reaper -> claim) and it ends with exactly its steps,
   loadable checkpoints and one model version per label;
2. Redis (a private redis-server, no persistence: every message is lost) stopped while a job
   runs: the API still accepts a job, and both jobs complete once Redis is back on its port;
3. Postgres (a private cluster made with initdb) restarted while a job runs: the API says
   503 while it is down and answers again after, and the job completes;
4. a checkpoint write killed half way (a real SIGKILL of the writing process): the previous
   checkpoint is untouched and resume loads the newest complete one.

1-3 run the production shape (tests/conftest.py's Service: uvicorn + `celery worker`), on the
local storage folder or, with HISTOSYNTH_TEST_STORAGE=s3, the S3 store; `make test` runs them in
its first pass only (see the Makefile). The private Redis and Postgres keep the shared ones on
6379/5432 untouched and keep other test runs' workers away from these jobs' messages.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.migrate import upgrade_head
from tests.conftest import (FAST_GAN, MID_JOB_GAN, ROOT, Service, copy_patches, fresh_database, free_port,
                            past_a_checkpoint, service_env, storage_backend)

# A job's kill points: seeded, printed, and overridable to replay or explore another draw.
FAULT_SEED = int(os.environ.get("HISTOSYNTH_TEST_FAULT_SEED", "20240607"))
KILLS = 5
STEPS = 60
EVERY = 10  # checkpoint_every: the smallest the bounds allow
PG_STEPS = 100  # the Postgres restart's job, at 64 px: ~8 s on a quiet machine, a window no poll misses


# -- private servers -------------------------------------------------------------------------
def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class RedisServer:
    """A redis-server of our own on a free port, without persistence: stopping it loses every
    queued and unacknowledged message, the worst case for the job queue."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(self.binary, os.X_OK):
            pytest.fail("redis-server is not installed (the fault tests run a private one)", pytrace=False)
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20) -> None:
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_tail = (self.folder / "redis.log").read_text()[-2000:]
                pytest.fail(f"redis-server did not start on {self.port}: {log_tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-conversation, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        assert not _port_open(self.port)


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        found = str(candidates[-1]) if candidates else None
    if not found:
        pytest.fail(f"{name} (the PostgreSQL server programs) is not installed; the Postgres fault test runs "
                    "a private cluster", pytrace=False)
    return found


class PostgresCluster:
    """A private PostgreSQL cluster (initdb, trust auth on 127.0.0.1, a free port) that the test
    may stop and start. initdb refuses root, so as root the server runs as the `postgres` user
    in a folder under /tmp owned by it."""

    def __init__(self) -> None:
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' user to run a private cluster", pytrace=False)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="histosynth-pg-"))
        if self.as_user:
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        self.data, self.log, self.port = self.folder / "data", self.folder / "server.log", free_port()

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            pytest.fail(f"{' '.join(args[:2])} failed ({done.returncode}): "
                        f"{done.stdout[-1000:]}{done.stderr[-1000:]}{log}")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self._run(_pg_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")

    def start(self) -> None:
        # fsync off: a test cluster need not survive a power cut, and the shared disk is busy.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, _pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the service under fault -----------------------------------------------------------------
def fault_env(request) -> dict[str, str]:
    extra = {
        # Five SIGKILLs are five lost attempts; the job must still be retried after them.
        "HISTOSYNTH_MAX_ATTEMPTS": "10",
        # A queued job whose message Redis lost is re-sent within seconds, not conftest's 20.
        "HISTOSYNTH_REQUEUE_AFTER_SECONDS": "4",
        # A killed worker's job is back in the queue 4-5 s after the kill (conftest: 6-7 s).
        "HISTOSYNTH_LEASE_SECONDS": "4",
        "HISTOSYNTH_HEARTBEAT_SECONDS": "0.5",
        # A 2-core box running a benchmark beside the tests: one torch thread per process.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if storage_backend() == "s3":
        extra.update(request.getfixturevalue("s3_endpoint").storage_env(f"faults-{uuid.uuid4().hex[:10]}"))
    return extra


def service_storage(svc: Service):
    """The Storage the service writes to, built from its own environment."""
    from app.settings import Settings
    from app.storage import Storage

    fields = {k.removeprefix("HISTOSYNTH_").lower(): v for k, v in svc.env.items() if k.startswith("HISTOSYNTH_")}
    return Storage.from_settings(Settings(**fields))


def get_job(svc: Service, job_id: str) -> dict | None:
    """The job's JSON, or None while the API cannot answer (a database restart)."""
    try:
        resp = svc.client.get(f"/v1/jobs/{job_id}", timeout=15)
    except httpx.TransportError:
        return None
    return resp.json() if resp.status_code == 200 else None


def wait_until(svc: Service, job_id: str, done, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = get_job(svc, job_id) or job
        if job is not None and done(job):
            return job
        assert job is None or job["state"] in ("queued", "running"), (what, job)
        time.sleep(0.15)
    raise TimeoutError(f"{what}: job {job_id} is {job and job['state']} after {timeout}s; logs in {svc.home}")


def finished(job: dict) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def ingest(svc: Service, shared_data: Path, folder: Path, per_label: int) -> str:
    root = copy_patches(shared_data, folder, ["10255", "10273"], per_label=per_label)
    resp = svc.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}})
    assert resp.status_code == 202, resp.text
    job = svc.wait_job(resp.json()["id"], timeout=120)
    assert job["state"] == "succeeded", job["error"]
    return job["result"]["dataset_id"]


def train_gan(svc: Service, dataset_id: str, label: int, steps: int, overrides: dict = FAST_GAN) -> str:
    body = {"kind": "train_gan", "params": {"dataset_id": dataset_id, "label": label, "steps": steps,
                                            "checkpoint_every": EVERY, "sample_every": 0, "overrides": overrides}}
    resp = svc.client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def loss_history(svc: Service, job: dict, label: int) -> list[dict]:
    (art,) = [a for a in job["artifacts"] if a["name"] == f"loss_history_label{label}.json"]
    return svc.client.get(art["url"]).json()


def live_workers(svc: Service) -> list[subprocess.Popen]:
    return [w for w in svc.workers if w.poll() is None]


def stop_quickly(svc: Service) -> None:
    """Idle workers are killed rather than asked (a warm shutdown takes seconds each)."""
    for proc in live_workers(svc):
        svc.kill_worker(proc)
    svc.stop()


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def faulty(request, tmp_path_factory, private_redis, shared_data) -> Iterator[Service]:
    """API + one worker on a fresh database of the shared Postgres and the private Redis (db 0),
    with a small real dataset ingested (`svc.dataset_id`)."""
    with fresh_database() as url:
        upgrade_head(url)
        home = tmp_path_factory.mktemp("faults")
        svc = Service(service_env(home, url, private_redis.url(0), **fault_env(request)), home)
        try:
            svc.start_worker()  # boots while the API does
            svc.start_api()
            svc.dataset_id = ingest(svc, shared_data, tmp_path_factory.mktemp("faults_slice"), per_label=12)
            yield svc
        finally:
            stop_quickly(svc)


# -- 1. SIGKILL at random points -----------------------------------------------------------------
def kill_points(seed: int) -> list[int]:
    """KILLS steps, one drawn in each stretch of the job, increasing with gaps of a few steps
    (so each lands in a later attempt's own progress, not the previous attempt's last value)."""
    rng = random.Random(seed)
    stretch = (STEPS - 6) // KILLS
    return [3 + i * stretch + rng.randint(0, stretch - 4) for i in range(KILLS)]


def lease_holder(svc: Service, job_id: str) -> subprocess.Popen:
    """The worker process whose lease the job row names (owner `host:pid:nonce`)."""
    from app.db import session_scope
    from app.tables import Job

    with session_scope(svc.env["HISTOSYNTH_DATABASE_URL"]) as s:
        owner = s.get(Job, job_id).lease_owner
    (proc,) = [w for w in live_workers(svc) if owner and w.pid == int(owner.split(":")[1])]
    return proc


@pytest.mark.integration
def test_sigkill_at_random_points_of_one_training_job(faulty):
    from app.db import session_scope
    from app.tables import Checkpoint, ModelVersion
    from worker.models_store import read_state
    from worker.train_gan import KEEP_CHECKPOINTS

    svc, label = faulty, 0
    points = kill_points(FAULT_SEED)
    print(f"SIGKILL points (seed {FAULT_SEED}, HISTOSYNTH_TEST_FAULT_SEED replays another): steps {points}")
    job_id = train_gan(svc, svc.dataset_id, label, STEPS, MID_JOB_GAN)
    stale, kills = None, []
    for attempt, point in enumerate(points, start=1):
        # A spare worker boots while this attempt trains (booting is the slow part of a cycle).
        if len(live_workers(svc)) < 2:
            svc.start_worker()
        # This attempt's own progress (the row keeps the previous attempt's last value until
        # the new one writes) at or past the drawn point.
        at = wait_until(svc, job_id, lambda j: j["state"] == "running" and j["attempts"] == attempt
                        and j["progress"]["current"] != stale and j["progress"]["current"] >= point,
                        timeout=120, what=f"kill {attempt} at step {point}")
        svc.kill_worker(lease_holder(svc, job_id))
        after = get_job(svc, job_id)
        stale = after["progress"]["current"]
        kills.append({"point": point, "seen": at["progress"]["current"], "row": stale,
                      "checkpoints": [c["step"] for c in after["checkpoints"]]})
        print(f"kill {attempt}: drawn step {point}, seen {at['progress']['current']}, row says {stale}, "
              f"checkpoints {kills[-1]['checkpoints']}")
        # Nothing but the lease's expiry gives the job back: the spare's reaper requeues it.
        assert after["state"] == "running" and after["attempts"] == attempt, after

    job = svc.wait_job(job_id, timeout=240)
    assert job["state"] == "succeeded", (job["error"], kills)
    # Each kill cost exactly one attempt, and the sixth finished it.
    assert job["attempts"] == KILLS + 1, (job["attempts"], kills)
    metrics = job["metrics"][f"label{label}"]
    assert job["result"]["steps"] == STEPS and metrics["step"] == STEPS
    last_ckpt_before_last_kill = max(kills[-1]["checkpoints"], default=0)
    assert metrics["resumed_from_step"] >= last_ckpt_before_last_kill, (metrics, kills)
    # Restored history + continued steps over six attempts: no step lost, none counted twice.
    assert len(loss_history(svc, job, label)) == STEPS

    # Every checkpoint recorded for the job and still kept loads and is the step it says;
    # the ones dropped are only the older ones beyond the newest KEEP_CHECKPOINTS.
    storage = service_storage(svc)
    url = svc.env["HISTOSYNTH_DATABASE_URL"]
    with session_scope(url) as s:
        rows = s.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
        versions = s.query(ModelVersion).filter_by(job_id=job_id).all()
        ckpts = [(r.name, r.step, r.key, r.size_bytes) for r in rows]
        models = [(m.id, m.label, m.key) for m in versions]
    assert [step for _, step, _, _ in ckpts] == list(range(EVERY, STEPS + 1, EVERY))  # each once, none missing
    kept = [c for c in ckpts if storage.exists(c[2])]
    assert kept == ckpts[-KEEP_CHECKPOINTS:], (kept, ckpts)
    for name, step, key, size in kept:
        assert name == f"label{label}" and storage.size(key) == size
        assert read_state(storage, key)["step"] == step
    # Anything else under the checkpoint prefix is a writer's temp file, never a checkpoint name.
    stored = storage.list(f"jobs/{job_id}/checkpoints")
    assert {k for k in stored if not k.rsplit("/", 1)[1].startswith(".")} == {c[2] for c in kept}, stored

    # Exactly one model version for the label, the job's result, and it loads.
    assert len(models) == 1, models
    (model_id, model_label, model_key), = models
    assert model_label == label and job["result"]["model_ids"] == {str(label): model_id}
    assert read_state(storage, model_key)["kind"] == "generator"


# -- 2. Redis stopped and started again ----------------------------------------------------------
@pytest.mark.integration
def test_redis_restarted_during_a_job(faulty, private_redis):
    svc = faulty
    workers = live_workers(svc)
    assert workers
    running = train_gan(svc, svc.dataset_id, 1, 80)
    wait_until(svc, running, lambda j: j["state"] == "running" and j["progress"]["current"] >= 3,
               timeout=120, what="job A running")

    private_redis.kill()
    try:
        started = time.monotonic()
        resp = svc.client.post("/v1/jobs", json={"kind": "train_gan", "params": {
            "dataset_id": svc.dataset_id, "label": 0, "steps": 20, "checkpoint_every": EVERY, "sample_every": 0,
            "overrides": FAST_GAN}})
        submit_s = time.monotonic() - started
        print(f"POST /v1/jobs with Redis down: {resp.status_code} in {submit_s:.1f}s")
        # The row is written first; the lost wake-up message is the reaper's to re-send.
        assert resp.status_code == 202, resp.text
        assert submit_s < 30
        queued = resp.json()["id"]
        assert resp.json()["state"] == "queued"
        ready = svc.client.get("/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"] == {"database": "ok", "broker": "unreachable"}
        assert svc.client.get(f"/v1/jobs/{running}").json()["state"] in ("running", "succeeded")
        time.sleep(1)
    finally:
        private_redis.start()  # the same port, empty: every message sent before is gone
    print(f"job A when Redis came back: {get_job(svc, running)['progress']}")

    first, second = svc.wait_job(running, timeout=180), svc.wait_job(queued, timeout=180)
    assert first["state"] == "succeeded", first["error"]
    assert second["state"] == "succeeded", second["error"]
    assert first["metrics"]["label1"]["step"] == 80 and second["metrics"]["label0"]["step"] == 20
    # Neither job was lost or run twice, and the same worker process reconnected to the broker.
    assert first["attempts"] == 1 and second["attempts"] == 1
    assert live_workers(svc) == workers
    assert svc.client.get("/readyz").status_code == 200


# -- 3. Postgres restarted -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.integration
def test_postgres_restarted_during_a_job(request, tmp_path_factory, private_postgres, private_redis, shared_data):
    import psycopg

    with psycopg.connect(private_postgres.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CREATE DATABASE histosynth")
    url = private_postgres.url("histosynth")
    upgrade_head(url)
    home = tmp_path_factory.mktemp("faults_pg")
    # Redis db 1: the `faulty` service's worker (db 0) never sees these messages.
    svc = Service(service_env(home, url, private_redis.url(1), **fault_env(request)), home)
    try:
        svc.start_worker()
        svc.start_api()
        dataset_id = ingest(svc, shared_data, tmp_path_factory.mktemp("faults_pg_slice"), per_label=10)
        (worker,) = live_workers(svc)
        job_id = train_gan(svc, dataset_id, 1, PG_STEPS, MID_JOB_GAN)
        wait_until(svc, job_id, past_a_checkpoint, timeout=120, what="job running past a checkpoint")

        private_postgres.stop()
        try:
            started = time.monotonic()
            ready = svc.client.get("/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable", ready.text
            # Not a hang: the API answers a clear problem at once while its database is away.
            down = svc.client.get(f"/v1/jobs/{job_id}", timeout=30)
            assert down.status_code in (500, 503) and down.headers["content-type"].startswith(
                "application/problem+json"), (down.status_code, down.text)
            assert time.monotonic() - started < 20
            time.sleep(2)  # long enough for the worker's progress, heartbeat and reaper to hit it
        finally:
            private_postgres.start()

        deadline = time.monotonic() + 30
        while svc.client.get("/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the API did not become ready after Postgres came back"
            time.sleep(0.2)
        job = wait_until(svc, job_id, finished, timeout=180, what="job after the Postgres restart")
        assert job["state"] == "succeeded", (job["error"], f"logs in {home}")
        assert job["metrics"]["label1"]["step"] == PG_STEPS
        assert len(loss_history(svc, job, 1)) == PG_STEPS
        # Progress writes are skipped while the database is away; a write it cannot skip (a
        # checkpoint's row) leaves the job to the reaper, never failed: one retry at most.
        print(f"Postgres restart: job done in {job['attempts']} attempt(s), "
              f"resumed from step {job['metrics']['label1']['resumed_from_step']}")
        assert job["attempts"] in (1, 2)
        assert live_workers(svc) == [worker]  # the worker process lived through it
        # ...and the outage did reach it (not a job that happened to write nothing meanwhile).
        assert "the database is unreachable" in (home / "worker0.log").read_text()
        assert svc.client.get("/v1/jobs").status_code == 200
    finally:
        stop_quickly(svc)


def test_a_database_gone_under_a_job_leaves_it_to_the_reaper(tmp_path):
    """The worker side of 3, deterministic: a progress write is skipped while the database is
    unreachable, and a handler whose database write fails with the database away is not
    recorded as failed (before, a database back a moment later got the job failed for good):
    the job keeps its lease, which runs out, and the reaper queues it again."""
    from datetime import timedelta

    from sqlalchemy.exc import OperationalError

    from app import jobs
    from app.db import session_scope
    from app.settings import Settings
    from app.tables import Job, utcnow
    from worker.context import JobContext, Outcome, run_job

    away = Settings(home=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
    ctx = JobContext(away, "0" * 32, "ingest", {"path": "/x"}, "owner", 1)
    ctx.progress(1, 2, "half", force=True)  # connection refused: not raised into the handler
    assert not ctx.lease_lost and not ctx.cancel_requested

    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        job_id = jobs.create_job(s, "ingest", {"path": "/x"})[0].id

    def database_restarting(ctx) -> Outcome:  # noqa: ANN001
        ctx.progress(1, 2, force=True)
        raise OperationalError("INSERT INTO checkpoints ...", {}, Exception("terminating connection due to "
                                                                            "administrator command"))

    assert run_job(settings, job_id, {"ingest": database_restarting}) == "database-unreachable"
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(Job, job_id)
        assert (row.state, row.error, row.attempts, row.progress_current) == ("running", None, 1, 1)
        report = jobs.reap(s, now=utcnow() + timedelta(seconds=settings.lease_seconds + 1))
    assert report.requeued == [job_id]


# -- 4. a checkpoint write killed half way -------------------------------------------------------
# A child process stores a serialised checkpoint through the real Storage (what put_state does
# after torch.save to bytes); its file handle writes the first half, syncs it, says so, and
# sleeps until the test SIGKILLs it: a crash in the middle of the write.
_HALF_WRITER = textwrap.dedent("""
    import os, sys, time
    import app.storage as storage_mod

    class HalfThenHang:
        def __init__(self, fh):
            self.fh = fh
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            print("HALF", flush=True)
            time.sleep(120)
        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_fdopen = os.fdopen
    storage_mod.os.fdopen = lambda fd, *a, **k: HalfThenHang(real_fdopen(fd, *a, **k))
    root, key, source = sys.argv[1:4]
    with open(source, "rb") as fh:
        storage_mod.Storage(root).put_bytes(key, fh.read())
""")


def _write_half_and_kill(root: Path, keys: list[str], source: Path) -> None:
    """One child per key, at once; each SIGKILLed once half its bytes are on disk."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(root), key, str(source)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for key in keys]
    try:
        for child in children:
            line = child.stdout.readline()
            assert line.strip() == "HALF", child.stderr.read() if child.poll() is not None else line
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    assert all(child.returncode == -signal.SIGKILL for child in children)


class _Ctx:
    """What _Checkpoints uses of a JobContext: the store, the job id, the checkpoint record."""

    def __init__(self, storage, job_id: str) -> None:
        self.storage, self.job_id, self.recorded = storage, job_id, []

    def add_checkpoint(self, name: str, step: int, key: str, size: int) -> None:
        self.recorded.append((name, step, key, size))


def test_checkpoint_write_killed_half_way_keeps_the_previous_one(tmp_path, one_torch_thread):
    import numpy as np
    import torch

    from app.storage import Storage
    from models.gan_trainer import GanTrainer
    from models.msggan import config_from
    from worker.models_store import read_state, state_bytes
    from worker.train_gan import _Checkpoints

    storage = Storage(tmp_path / "store")
    patches = np.random.default_rng(0).integers(0, 256, (16, 50, 50, 3), dtype=np.uint8)
    config = config_from("cpu-small", FAST_GAN)
    trainer = GanTrainer(config, patches)
    ctx = _Ctx(storage, "f" * 32)
    ckpts = _Checkpoints(ctx, "label1")
    trainer.train(2)
    ckpts.save(trainer)  # step 2: the last complete checkpoint
    (good,) = ckpts.keys()
    assert good.endswith("label1-step0000002.pt") and ctx.recorded[0][1] == 2
    before = storage.read_bytes(good)

    # Step 4's checkpoint, killed half way twice: once overwriting step 2's very key (a re-run
    # writing the same name, as a model file is), once under its own name.
    trainer.train(4)
    newer = tmp_path / "step4.pt"
    newer.write_bytes(state_bytes(trainer.state_dict()))
    step4 = f"{ckpts.prefix}/label1-step0000004.pt"
    _write_half_and_kill(storage.root, [good, step4], newer)
    folder = storage.root / ckpts.prefix
    temps = sorted(p for p in folder.iterdir() if p.name.startswith("."))
    half = newer.stat().st_size // 2
    assert [p.stat().st_size for p in temps] == [half, half], temps  # the torn bytes are there...
    assert storage.read_bytes(good) == before                        # ...but never replaced step 2
    assert not storage.exists(step4)
    assert ckpts.keys() == [good]  # a temp file is never taken for a checkpoint
    assert read_state(storage, good)["step"] == 2

    # A torn newer checkpoint (what a non-atomic writer would leave) is skipped on resume.
    storage.put_bytes(f"{ckpts.prefix}/label1-step0000006.pt", newer.read_bytes()[:half])
    resumed = GanTrainer(config, patches)
    assert ckpts.resume(resumed)[0] == 2
    expected = GanTrainer(config, patches)
    expected.load_state_dict(read_state(storage, good))
    assert len(resumed.history) == 2 and resumed.history == expected.history
    got, want = resumed.state_dict(), expected.state_dict()
    assert all(torch.equal(got[net][k], want[net][k]) for net in ("G", "D", "G_ema") for k in want[net])

    # Once step 4 is written whole, it is the one resumed.
    storage.put_file(step4, newer)
    latest = GanTrainer(config, patches)
    assert ckpts.resume(latest)[0] == 4
    for t in (trainer, resumed, expected, latest):
        t.close()
