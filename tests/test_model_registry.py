"""Model versions and promotion (app.model_registry, migration 0003), on SQLite and Postgres."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from app import jobs, model_registry
from app.db import get_engine, session_scope
from app.migrate import alembic_config, upgrade_head
from app.tables import Job, ModelVersion
from worker.context import Outcome, _record_success


def _row(kind: str = "generator", label: int | None = 1, model_id: str | None = None) -> ModelVersion:
    return ModelVersion(id=model_id or None, kind=kind, label=label, key="models/m.pt", config={}, metrics={})


def test_versions_count_per_slot_and_first_generator_is_promoted(db_url):
    with session_scope(db_url) as s:
        g1 = model_registry.register(s, _row("generator", 1))
        g2 = model_registry.register(s, _row("generator", 1))
        other = model_registry.register(s, _row("generator", 0))
        c1 = model_registry.register(s, _row("classifier", None))
        c2 = model_registry.register(s, _row("classifier", None))
    assert (g1.version, g2.version, other.version, c1.version, c2.version) == (1, 2, 1, 1, 2)
    assert (g1.promoted, g2.promoted, other.promoted) == (True, False, True)
    assert not c1.promoted and not c2.promoted  # a person promotes classifiers
    with session_scope(db_url) as s:
        assert model_registry.promoted(s, "generator", 1).id == g1.id
        assert model_registry.promoted(s, "classifier") is None
        model_registry.promote(s, s.get(ModelVersion, c2.id))
    with session_scope(db_url) as s:
        assert model_registry.promoted(s, "classifier").id == c2.id
        model_registry.promote(s, s.get(ModelVersion, g2.id))
    with session_scope(db_url) as s:
        flags = dict(s.execute(select(ModelVersion.id, ModelVersion.promoted).where(
            ModelVersion.kind == "generator", ModelVersion.label == 1)).all())
    assert flags == {g1.id: False, g2.id: True}


def test_the_database_refuses_a_second_version_n_or_a_second_promoted_row(db_url):
    base = {"kind": "classifier", "label": None, "key": "models/m.pt", "config": {}, "metrics": {}}
    with session_scope(db_url) as s:
        s.execute(insert(ModelVersion).values(id="a" * 32, version=1, promoted=True, **base))
    with pytest.raises(IntegrityError), session_scope(db_url) as s:  # same slot (NULL label), same version
        s.execute(insert(ModelVersion).values(id="b" * 32, version=1, promoted=False, **base))
    with pytest.raises(IntegrityError), session_scope(db_url) as s:  # a second promoted classifier
        s.execute(insert(ModelVersion).values(id="c" * 32, version=2, promoted=True, **base))
    with session_scope(db_url) as s:
        s.execute(insert(ModelVersion).values(id="d" * 32, version=2, promoted=False, **base))
        assert s.scalar(select(ModelVersion.version).where(ModelVersion.id == "d" * 32)) == 2


def _running_job(url: str) -> tuple[str, str]:
    with session_scope(url) as s:
        job, _ = jobs.create_job(s, "train_gan", {})
        owner = f"worker-{job.id[:6]}"
        assert jobs.claim(s, job.id, owner, lease_seconds=60) is not None
        return job.id, owner


def test_two_jobs_finishing_at_once_get_distinct_versions_and_one_promotion(db_url, monkeypatch):
    # Both read "no version yet" before either inserts: the unique index makes the second
    # insert fail, and the success transaction is retried with the next number.
    real_next = model_registry.next_version
    reads = threading.Barrier(2, timeout=10)

    calls = []

    def next_version_slowly(session, kind, label):
        n = real_next(session, kind, label)
        calls.append(n)
        try:
            reads.wait()
        except threading.BrokenBarrierError:  # the retry reads alone
            pass
        return n

    monkeypatch.setattr(model_registry, "next_version", next_version_slowly)
    started = [_running_job(db_url) for _ in range(2)]
    outcomes, results = {}, {}

    def finish(job_id: str, owner: str) -> None:
        row = _row("generator", 1, model_id=f"m{job_id[:31]}")
        outcomes[job_id] = _record_success(db_url, job_id, owner, Outcome(result={"ok": 1}, new_models=[row]))

    threads = [threading.Thread(target=finish, args=pair) for pair in started]
    for t in threads:
        t.start()
    time.sleep(1.0)
    reads.abort()  # from now on no read waits for a partner
    for t in threads:
        t.join(60)
    assert set(outcomes.values()) == {"succeeded"}
    with session_scope(db_url) as s:
        rows = s.scalars(select(ModelVersion)).all()
        for job_id, _ in started:
            job = s.get(Job, job_id)
            assert job.state == "succeeded"
            results[job_id] = job.result
    assert sorted(r.version for r in rows) == [1, 2]
    assert calls == [1, 1, 2]  # both read 1; the loser's retry read 2
    assert sum(r.promoted for r in rows) == 1
    assert sorted(v for r in results.values() for v in r["model_versions"].values()) == [1, 2]


def test_migrations_0003_and_0004_repair_rows_and_turn_paths_into_keys(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0002")
    base = {"kind": "generator", "label": 1, "config": {}, "metrics": {}}
    old_table = sa.Table("model_versions", sa.MetaData(), autoload_with=get_engine(url))
    with get_engine(url).begin() as conn:
        for i, (version, promoted) in enumerate([(1, True), (2, True), (2, False)]):
            conn.execute(insert(old_table).values(
                id=f"{i}" * 32, version=version, promoted=promoted, path=f"/moved/home/storage/models/{i}.pt",
                created_at=datetime(2026, 11, 20 + i), **base))
    upgrade_head(url)
    with session_scope(url) as s:
        rows = s.execute(select(ModelVersion.id, ModelVersion.version, ModelVersion.promoted, ModelVersion.key)
                         .order_by(ModelVersion.id)).all()
    assert [(r.version, r.promoted) for r in rows] == [(1, False), (2, True), (3, False)]
    # 0004: absolute paths became keys, wherever the storage folder was
    assert [r.key for r in rows] == ["models/0.pt", "models/1.pt", "models/2.pt"]


def test_a_result_that_cannot_be_stored_fails_the_job_once_with_a_reason(db_url, tmp_path):
    from app.settings import Settings
    from worker.context import run_job

    settings = Settings(home=tmp_path, database_url=db_url)
    with session_scope(db_url) as s:
        job, _ = jobs.create_job(s, "train_gan", {})
        job_id = job.id
    bad = Outcome(result={}, new_models=[_row("not-a-kind", 1)])
    assert run_job(settings, job_id, {"train_gan": lambda ctx: bad}) == "failed"
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and job.attempts == 1
        assert "could not record the result" in job.error and "Traceback" not in job.error
        assert s.scalars(select(ModelVersion)).all() == []
