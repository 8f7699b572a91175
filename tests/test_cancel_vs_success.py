"""A cancel that lands after a handler's last check but before its success commits
(worker.context._record_success): the cancel wins, nothing is published, and the files the job
stored are removed. A cancel after the commit is refused. SQLite and Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import jobs
from app.db import session_scope
from app.storage import Storage
from app.tables import Dataset, Job, ModelVersion
from worker.context import Outcome, _record_success


def _running_job(url: str) -> tuple[str, str]:
    with session_scope(url) as s:
        job, _ = jobs.create_job(s, "ingest", {"path": "/nowhere"})
        owner = f"worker-{job.id[:6]}"
        assert jobs.claim(s, job.id, owner, lease_seconds=60) is not None
        return job.id, owner


def _outcome(store: Storage, job_id: str) -> Outcome:
    store.put_bytes(f"datasets/d-{job_id}/patches.u8", b"\x00" * 30)
    store.put_bytes(f"models/m-{job_id}.pt", b"weights")
    dataset = Dataset(id=f"d{job_id[:31]}", name="x", kind="real", job_id=job_id, key=f"datasets/d-{job_id}",
                      n_patches=1, patch_size=50)
    model = ModelVersion(kind="classifier", label=None, job_id=job_id, key=f"models/m-{job_id}.pt", config={},
                         metrics={})
    return Outcome(result={"ok": True}, rows=[dataset], new_models=[model])


def test_a_late_cancel_wins_and_nothing_is_published(db_url, tmp_path):
    store = Storage(tmp_path / "store")
    job_id, owner = _running_job(db_url)
    outcome = _outcome(store, job_id)
    with session_scope(db_url) as s:
        assert jobs.request_cancel(s, job_id).cancel_requested  # running: only a request
    assert _record_success(db_url, job_id, owner, outcome, storage=store) == "cancelled"
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job.state == "cancelled" and not job.result and job.lease_owner is None
        assert s.scalar(select(Dataset).where(Dataset.job_id == job_id)) is None
        assert s.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id)) is None
    assert store.list(f"datasets/d-{job_id}") == [] and not store.exists(f"models/m-{job_id}.pt")


def test_a_cancel_after_the_commit_is_refused_and_the_result_stays(db_url, tmp_path):
    store = Storage(tmp_path / "store")
    job_id, owner = _running_job(db_url)
    outcome = _outcome(store, job_id)
    assert _record_success(db_url, job_id, owner, outcome, storage=store) == "succeeded"
    with session_scope(db_url) as s, pytest.raises(jobs.InvalidTransition, match="already succeeded"):
        jobs.request_cancel(s, job_id)
    with session_scope(db_url) as s:
        assert s.get(Job, job_id).state == "succeeded"
        assert s.scalar(select(Dataset.key).where(Dataset.job_id == job_id)) == f"datasets/d-{job_id}"
    assert store.exists(f"datasets/d-{job_id}/patches.u8") and store.exists(f"models/m-{job_id}.pt")


def test_an_older_row_updated_by_a_cancelled_job_keeps_its_files(db_url, tmp_path):
    # An audit's outcome updates an existing generator's metrics; a cancel must not delete
    # the generator's weights, which another job made.
    store = Storage(tmp_path / "store")
    store.put_bytes("models/older.pt", b"weights")
    job_id, owner = _running_job(db_url)
    update = ModelVersion(id="o" * 32, key="models/older.pt")
    with session_scope(db_url) as s:
        jobs.request_cancel(s, job_id)
    assert _record_success(db_url, job_id, owner, Outcome(result={}, rows=[update]), storage=store) == "cancelled"
    assert store.exists("models/older.pt")
