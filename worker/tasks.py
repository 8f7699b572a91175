"""Celery tasks: one entry point that claims a job by id and runs its kind's handler."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from app import jobs
from app.db import session_scope
from app.settings import Settings, get_settings
from app.storage import Storage
from app.uploads import delete_expired_uploads
from worker.celery_app import TASK_NAME, celery_app, queue
from worker.context import SHUTTING_DOWN, run_job
from worker.handlers import HANDLERS

log = logging.getLogger("histosynth.worker")


@celery_app.task(name=TASK_NAME)
def run_job_task(job_id: str) -> str:
    outcome = run_job(get_settings(), job_id, HANDLERS)
    log.info("job %s: %s", job_id, outcome)
    return outcome


_reaper_stop = threading.Event()


def reap_once() -> jobs.ReapReport:
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as s:
        report = jobs.reap(s, requeue_after_seconds=settings.requeue_after_seconds)
    for job_id in report.requeued + report.resend:
        queue.enqueue(job_id)
    if report.requeued or report.failed:
        log.warning("reaper: requeued %s, failed %s", report.requeued, report.failed)
    return report


def expire_uploads_once(settings: Settings | None = None) -> list[str]:
    """Delete uploaded zips older than HISTOSYNTH_UPLOAD_TTL_SECONDS; return their keys."""
    settings = settings or get_settings()
    expired = delete_expired_uploads(Storage.from_settings(settings), settings.upload_ttl_seconds)
    if expired:
        log.info("expired %d uploads older than %gs", len(expired), settings.upload_ttl_seconds)
    return expired


def upload_sweep_seconds(settings: Settings) -> float:
    """How often the reaper thread looks for expired uploads: every 10 minutes, or a quarter
    of the TTL when that is shorter (never more often than the reaper runs)."""
    return max(settings.reaper_interval_seconds, min(600.0, settings.upload_ttl_seconds / 4))


def _reaper_loop() -> None:
    settings = get_settings()
    interval = settings.reaper_interval_seconds
    next_sweep = time.monotonic()
    while not _reaper_stop.wait(interval):
        try:
            reap_once()
        except Exception:  # keep reaping after a database blip
            log.exception("reaper pass failed")
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + upload_sweep_seconds(settings)
            try:
                expire_uploads_once(settings)
            except Exception:  # a store that cannot be reached now is tried again next sweep
                log.exception("upload expiry pass failed")


@worker_ready.connect
def _start_reaper(**_kwargs) -> None:
    threading.Thread(target=_reaper_loop, daemon=True, name="histosynth-reaper").start()


@worker_shutting_down.connect
def _hand_back_running_jobs(**_kwargs) -> None:
    SHUTTING_DOWN.set()


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    _reaper_stop.set()
