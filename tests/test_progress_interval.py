"""A job's progress row is written at most once per `progress_interval_seconds` (its last step
always): the throttle that keeps a fast training loop from committing once per step."""

import pytest

from app import jobs
from app.db import session_scope
from app.migrate import upgrade_head
from app.settings import Settings
from app.tables import Job
from worker.context import JobContext


def progress_row(url: str, job_id: str) -> tuple[int, int, str]:
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        return job.progress_current, job.progress_total, job.progress_message


@pytest.fixture()
def running_job(tmp_path):
    def make(interval: float) -> tuple[JobContext, str]:
        settings = Settings(home=tmp_path, progress_interval_seconds=interval)
        url = settings.resolved_database_url
        upgrade_head(url)
        with session_scope(url) as s:
            job_id = jobs.create_job(s, "ingest", {"path": "/x"})[0].id
            assert jobs.claim(s, job_id, "w:1:a", settings.lease_seconds) is not None
        return JobContext(settings, job_id, "ingest", {"path": "/x"}, "w:1:a", 1), url
    return make


def test_a_long_interval_keeps_the_first_write_and_the_last_step(running_job):
    ctx, url = running_job(3600)
    ctx.progress(1, 10, "step 1")
    for step in range(2, 10):
        ctx.progress(step, 10, f"step {step}")
    assert progress_row(url, ctx.job_id) == (1, 10, "step 1")  # the 8 in between were throttled
    ctx.progress(9, 10, "forced", force=True)
    assert progress_row(url, ctx.job_id) == (9, 10, "forced")
    ctx.progress(10, 10, "done")  # the last step is written whatever the interval
    assert progress_row(url, ctx.job_id) == (10, 10, "done")


def test_interval_zero_writes_every_step(running_job):
    ctx, url = running_job(0)
    for step in range(1, 6):
        ctx.progress(step, 10, f"step {step}")
        assert progress_row(url, ctx.job_id) == (step, 10, f"step {step}")


def test_a_negative_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="progress_interval_seconds"):
        Settings(home=tmp_path, progress_interval_seconds=-1)
