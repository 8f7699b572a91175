"""JobContext: what a running job's handler gets — params, storage, and the callbacks that
report progress, honour cancel, and record artifacts and checkpoints — plus the runner that
claims the job, heart-beats its lease and records the outcome."""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError

from app import jobs, model_registry
from app.db import session_scope
from app.job_kinds import Params, stored_params
from app.settings import Settings
from app.storage import Storage
from app.tables import Artifact, Checkpoint, ModelVersion

log = logging.getLogger("histosynth.worker")
ID_NAMESPACE = uuid.UUID("6f1c3e58-1d0b-4b7e-9a1e-5f0c2d9a7b11")


def stable_id(*parts: str) -> str:
    """Ids derived from the job make a re-run after a crash overwrite, never duplicate."""
    return uuid.uuid5(ID_NAMESPACE, "/".join(parts)).hex


# Set when the worker process is asked to stop (SIGTERM): running jobs stop at their next
# check and are handed back to the queue instead of holding the shutdown until they finish.
SHUTTING_DOWN = threading.Event()


class JobAborted(Exception):
    """Raised inside a handler when the job was cancelled or its lease was lost."""


class UserError(Exception):
    """A failure caused by the job's input: recorded as the job's error, never retried."""


@dataclass
class Outcome:
    result: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[Any] = field(default_factory=list)  # ORM rows merged with the success (datasets, updates)
    # New model versions: numbered (and maybe promoted) by app.model_registry in the success transaction
    new_models: list[ModelVersion] = field(default_factory=list)


Handler = Callable[["JobContext"], Outcome]


class JobContext:
    def __init__(self, settings: Settings, job_id: str, kind: str, params: dict[str, Any], owner: str, attempt: int,
                 handlers: dict[str, Handler] | None = None):
        self.settings = settings
        # The handler table this job runs under: a parent job (experiment) runs its children with it.
        self.handlers: dict[str, Handler] = handlers or {}
        # `params` is the job's JSON as stored; handlers read `p`, the same typed and validated.
        self.job_id, self.kind, self.params, self.owner, self.attempt = job_id, kind, params, owner, attempt
        self.storage = Storage.from_settings(settings)
        self.cancel_requested = False
        self.lease_lost = False
        self._last_progress = -math.inf  # the first write is never throttled
        self._lock = threading.Lock()

    @functools.cached_property
    def p(self) -> Any:
        """The job's params as its kind's pydantic model (app.job_kinds: the one place their
        defaults live), validated once from the stored JSON. Typed `Any` so that a handler
        annotates its own kind: `p: TrainGanParams = ctx.p`."""
        try:
            params: Params = stored_params(self.kind, self.params)
        except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise UserError(f"the stored params of this {self.kind} job are not valid: {exc}") from exc
        return params

    @property
    def db_url(self) -> str:
        return self.settings.resolved_database_url

    # -- callbacks handed to the ML core ---------------------------------------------------
    def should_abort(self) -> bool:
        return self.cancel_requested or self.lease_lost or SHUTTING_DOWN.is_set()

    def check_abort(self) -> None:
        if self.should_abort():
            raise JobAborted("cancelled" if self.cancel_requested else "lease lost")

    def progress(self, current: int, total: int, message: str | None = None, *, metrics: dict | None = None,
                 force: bool = False) -> None:
        """Throttled to one write per `settings.progress_interval_seconds` whatever the caller's rate."""
        now = time.monotonic()
        if not force and now - self._last_progress < self.settings.progress_interval_seconds and current < total:
            return
        self._last_progress = now
        try:
            with self._lock, session_scope(self.db_url) as s:
                owner, cancel = jobs.set_progress(s, self.job_id, self.owner, current, total, message, metrics)
        except OperationalError:
            # Best effort, like the heartbeat: while the database is away (a restart, a
            # failover) the job goes on; a lease that ran out meanwhile shows at the next write.
            log.warning("job %s: progress not recorded, the database is unreachable", self.job_id)
            return
        self.lease_lost |= not owner
        self.cancel_requested |= cancel

    def add_artifact(self, name: str, media_type: str, data: bytes) -> str:
        artifact_id = stable_id(self.job_id, "artifact", name)
        key = Storage.artifact_key(self.job_id, artifact_id)
        size = self.storage.put_bytes(key, data)
        self.register_artifact(artifact_id, name, media_type, key, size)
        return artifact_id

    def register_artifact(self, artifact_id: str, name: str, media_type: str, key: str, size: int) -> None:
        with self._lock, session_scope(self.db_url) as s:
            s.merge(Artifact(id=artifact_id, job_id=self.job_id, name=name, media_type=media_type,
                             key=key, size_bytes=size))

    def add_checkpoint(self, name: str, step: int, key: str, size: int) -> None:
        with self._lock, session_scope(self.db_url) as s:
            s.merge(Checkpoint(id=stable_id(self.job_id, "ckpt", name, str(step)), job_id=self.job_id, name=name,
                               step=step, key=key, size_bytes=size))

    def heartbeat(self) -> None:
        with self._lock, session_scope(self.db_url) as s:
            owner, cancel = jobs.heartbeat(s, self.job_id, self.owner, self.settings.lease_seconds)
        self.lease_lost |= not owner
        self.cancel_requested |= cancel


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _heartbeat_loop(ctx: JobContext, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.heartbeat_seconds):
        try:
            ctx.heartbeat()
        except Exception:  # a database blip must not kill the job; the lease has slack
            log.exception("heartbeat failed for job %s", ctx.job_id)


def run_job(settings: Settings, job_id: str, handlers: dict[str, Handler]) -> str:
    """Claim `job_id` and run its handler. Returns what happened (for logs and tests)."""
    owner = worker_identity()
    with session_scope(settings.resolved_database_url) as s:
        job = jobs.claim(s, job_id, owner, settings.lease_seconds)
        if job is None:
            return "not-claimed"
        kind, params, attempt = job.kind, dict(job.params), job.attempts
    ctx = JobContext(settings, job_id, kind, params, owner, attempt, handlers)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(ctx, stop), daemon=True, name=f"heartbeat-{job_id}")
    beat.start()
    url = settings.resolved_database_url
    try:
        handler = handlers.get(kind)
        if handler is None:
            raise UserError(f"this worker has no handler for job kind {kind!r}")
        outcome = handler(ctx)
    except JobAborted:
        if ctx.lease_lost:
            return "lease-lost"
        if SHUTTING_DOWN.is_set() and not ctx.cancel_requested:
            with session_scope(url) as s:
                jobs.release(s, job_id, owner)
            return "released"
        with session_scope(url) as s:
            jobs.finish(s, job_id, owner, "cancelled")
        return "cancelled"
    except UserError as exc:
        with session_scope(url) as s:
            jobs.finish(s, job_id, owner, "failed", error=str(exc))
        return "failed"
    except OperationalError:
        return _database_away(job_id)
    except Exception:  # the trace goes to the worker log; the job gets an opaque reference to it
        ref = uuid.uuid4().hex[:12]
        log.error("job %s crashed (reference %s):\n%s", job_id, ref, traceback.format_exc())
        with session_scope(url) as s:
            jobs.finish(s, job_id, owner, "failed", error=f"internal error (reference {ref} in the worker log)")
        return "failed"
    finally:
        stop.set()
    try:
        return _record_success(url, job_id, owner, outcome, storage=ctx.storage)
    except OperationalError:
        return _database_away(job_id)
    except Exception as exc:  # a result that cannot be stored fails the job, once, with a reason
        log.error("job %s: recording its success failed:\n%s", job_id, traceback.format_exc())
        with session_scope(url) as s:
            jobs.finish(s, job_id, owner, "failed", error=f"internal error: could not record the result ({type(exc).__name__})")
        return "failed"


def _database_away(job_id: str) -> str:
    """The database went away under the job (a restart, a failover): not the job's fault, and
    nothing can be recorded now. The job is left as it is; its lease runs out (the heartbeat
    stopped) and the reaper hands it to a worker again, which resumes from its checkpoints.
    A database that stays away uses up max_attempts like a lost worker."""
    log.warning("job %s: the database is unreachable; left to the reaper to run again", job_id, exc_info=True)
    return "database-unreachable"


def _record_success(url: str, job_id: str, owner: str, outcome: Outcome, tries: int = 5,
                    storage: Storage | None = None) -> str:
    """The success and the rows it creates (datasets, models) commit together or not at all.
    Model versions are numbered here (app.model_registry); a job finishing at the same moment
    in the same slot makes the insert conflict, and the transaction is tried again."""
    for attempt in range(tries):
        try:
            with session_scope(url) as s:
                job = jobs.lock_for_finish(s, job_id, owner)
                if job is None:
                    return "lease-lost"
                if job.cancel_requested:
                    # The cancel arrived after the handler's last check: it still wins (the API
                    # said "cancel requested"), and nothing the job made is published.
                    jobs.finish(s, job_id, owner, "cancelled", commit=False)
                    s.commit()
                    _discard_outputs(storage, job_id, outcome)
                    return "cancelled"
                for row in [*outcome.rows, *outcome.new_models]:
                    # What a job makes belongs to whoever submitted the job (app.ownership).
                    if getattr(row, "job_id", None) == job_id and hasattr(row, "created_by"):
                        row.created_by = job.created_by
                for row in outcome.rows:
                    s.merge(row)
                versions = {row.id: model_registry.register(s, row).version for row in outcome.new_models}
                result = {**outcome.result, "model_versions": versions} if versions else outcome.result
                if not jobs.finish(s, job_id, owner, "succeeded", result=result, metrics=outcome.metrics,
                                   commit=False):
                    s.rollback()
                    return "lease-lost"
            return "succeeded"
        except IntegrityError:
            if attempt == tries - 1:
                raise
            log.warning("job %s: model version taken by a concurrent job; numbering again", job_id)
    raise AssertionError("unreachable")


def _discard_outputs(storage: Storage | None, job_id: str, outcome: Outcome) -> None:
    """Delete what a cancelled job stored for the rows it will not publish (a dataset's folder,
    a model file), so no unreferenced object is left behind. Best effort: a leftover object is
    garbage, never a wrong answer, since nothing points at it."""
    if storage is None:
        return
    # Only rows this job created: `rows` may also hold updates to older rows (an audit's
    # metrics on a generator), whose files must stay.
    made_here = [row for row in outcome.rows if getattr(row, "job_id", None) == job_id]
    for row in [*made_here, *outcome.new_models]:
        key = getattr(row, "key", None)
        if not isinstance(key, str) or not key:
            continue
        try:
            storage.delete_prefix(key) if not key.endswith(".pt") else storage.delete(key)
        except Exception:  # noqa: BLE001
            log.warning("could not delete %s after a cancel", key, exc_info=True)
