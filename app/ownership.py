"""Who may see and change what (issue 10, part 1).

Every job, upload, dataset and model records the key that created it (`created_by`); what a
job makes inherits its job's creator (worker.context). An admin sees everything. A user sees
what it created, datasets and models shared read-only (`shared`), and promoted models (an
admin chose them for everyone). Anything else is answered exactly like a missing id, 404, so
ids of other users' objects cannot be probed. Changing (cancel, share) is for the creator or
an admin; shared is read-only.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, or_
from sqlalchemy.orm import Session

from app.auth import Principal
from app.problems import Problem
from app.tables import Artifact, Dataset, Job, ModelVersion, Upload

Row = TypeVar("Row")


def visible(query: Select, table: Any, principal: Principal) -> Select:
    """`query` over `table`, narrowed to the rows `principal` may read."""
    if principal.is_admin:
        return query
    mine = table.created_by == principal.key_id
    if table is Dataset:
        return query.where(or_(mine, Dataset.shared.is_(True)))
    if table is ModelVersion:
        return query.where(or_(mine, ModelVersion.shared.is_(True), ModelVersion.promoted.is_(True)))
    return query.where(mine)


def can_read(session: Session, row: Any, principal: Principal) -> bool:
    if principal.is_admin:
        return True
    if isinstance(row, Artifact):  # an artifact is its job's
        job = session.get(Job, row.job_id) if row.job_id else None
        return job is not None and job.created_by == principal.key_id
    if row.created_by == principal.key_id:
        return True
    if isinstance(row, Dataset):
        return bool(row.shared)
    if isinstance(row, ModelVersion):
        return bool(row.shared or row.promoted)
    return False


def get_readable(session: Session, table: type[Row], row_id: str, noun: str, principal: Principal) -> Row:
    """The row, or the same 404 a missing id gets."""
    row = session.get(table, row_id)
    if row is None or not can_read(session, row, principal):
        raise Problem(404, f"{noun.capitalize()} not found", f"No {noun} with id {row_id!r}.")
    return row


def check_can_change(row: Any, principal: Principal, what: str) -> None:
    """Readable but not theirs (shared, promoted): 403, since they already know it exists."""
    if not principal.is_admin and row.created_by != principal.key_id:
        raise Problem(403, "Not yours", f"Only the key that created it, or an admin, may {what}.")


def set_shared(session: Session, row: Any, principal: Principal, noun: str, shared: bool) -> None:
    """Share `row` read-only with every key, or stop: its creator or an admin only."""
    check_can_change(row, principal, f"share this {noun}")
    row.shared = shared
    session.commit()


# Params that name other objects: each must be readable by whoever submits the job, so a
# job cannot be used to read (train on, generate from, audit) another user's data.
DATASET_FIELDS = ("dataset_id", "real_dataset_id", "synthetic_dataset_id", "train_dataset_id",
                  "holdout_dataset_id", "real_test_dataset_id", "synthetic_test_dataset_id")
MODEL_FIELDS = ("model_id", "generator_id", "classifier_id", "resume_from")


def _ids(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def check_references(session: Session, principal: Principal, kind: str, params: dict[str, Any]) -> None:
    """404 (naming the parameter) for any referenced object the submitter may not read, and
    403 for what only an admin may ask (a server-side ingest path)."""
    if principal.is_admin:
        return
    if kind == "ingest" and params.get("path") is not None:
        raise Problem(403, "Admin key required", "Only an admin key may ingest a server-side path; "
                      "upload a zip (POST /v1/uploads) and ingest it by upload_id.")
    checks: list[tuple[str, type, str]] = []
    for name, value in params.items():
        if name in DATASET_FIELDS or name.endswith(("dataset_id", "dataset_ids")):
            checks += [(name, Dataset, v) for v in _ids(value)]
        elif name in MODEL_FIELDS or name.endswith(("model_id", "model_ids", "generator_ids")):
            checks += [(name, ModelVersion, v) for v in _ids(value)]
        elif name == "upload_id" and isinstance(value, str):
            checks.append((name, Upload, value))
        elif name == "weights" and isinstance(value, str) and value not in ("imagenet", "none"):
            from app.job_kinds import is_model_ref

            if is_model_ref(value):  # start from a classifier the submitter may read
                checks.append((name, ModelVersion, value))
            else:
                raise Problem(403, "Admin key required", "Only an admin key may name a server-side weights file; "
                              "use weights 'imagenet', 'none' or a classifier model id.")
    for name, table, row_id in checks:
        row = session.get(table, row_id)
        if row is None or not can_read(session, row, principal):
            raise Problem(404, "Referenced object not found", f"{name}: no {table.__tablename__[:-1]} with id "
                          f"{row_id!r}.", field=name)
