"""Per-key quotas (issue 10, part 2): how many jobs one key may have waiting or running, and
how many bytes it may keep stored (its uploads and datasets). Open mode has no keys and no
quotas: it is one person's machine."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.problems import Problem
from app.settings import Settings
from app.tables import Dataset, Job, Upload


def active_jobs(session: Session, key_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.created_by == key_id, Job.state.in_(("queued", "running")), Job.parent_id.is_(None))) or 0


def stored_bytes(session: Session, key_id: str) -> int:
    """Uploads as sent, datasets as packed (uint8 RGB patches: n x size x size x 3)."""
    uploads = session.scalar(select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(Upload.created_by == key_id))
    datasets = session.scalar(select(func.coalesce(func.sum(Dataset.n_patches * Dataset.patch_size * Dataset.patch_size * 3), 0))
                              .where(Dataset.created_by == key_id))
    return int(uploads or 0) + int(datasets or 0)


def check_job_quota(session: Session, settings: Settings, principal: Principal) -> None:
    if principal.key_id is None:
        return
    n = active_jobs(session, principal.key_id)
    if n >= settings.max_active_jobs_per_key:
        raise Problem(429, "Too many jobs waiting or running",
                      f"This key has {n} jobs queued or running; the limit is {settings.max_active_jobs_per_key} "
                      "(HISTOSYNTH_MAX_ACTIVE_JOBS_PER_KEY). Submit more when some finish.",
                      headers={"Retry-After": "30"})
    check_storage_quota(session, settings, principal, 0)


def check_storage_quota(session: Session, settings: Settings, principal: Principal, adding: int) -> None:
    if principal.key_id is None:
        return
    used = stored_bytes(session, principal.key_id)
    if used + adding > settings.max_stored_bytes_per_key:
        raise Problem(413, "Storage quota exceeded",
                      f"This key stores {used} bytes; with {adding} more it would pass its quota of "
                      f"{settings.max_stored_bytes_per_key} (HISTOSYNTH_MAX_STORED_BYTES_PER_KEY). Ask an admin.")
