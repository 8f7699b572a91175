"""Model versions and promotion: the one place that numbers versions and picks "the promoted
model of a kind and label" (used by the routes, the worker, the predictor and validation).

A slot is (kind, label); classifiers have label None. The database holds the invariants
(migration 0003): version numbers are unique per slot, and at most one version per slot is
promoted. Versions are assigned inside the transaction that records the job's success, so two
jobs finishing at once cannot both get version n: the second insert violates the unique index
and its transaction is retried with n + 1 (the worker retries on IntegrityError).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from app.tables import ModelVersion

KINDS = ("generator", "classifier")
# A label's first generator is promoted at once so /v1/generations works after one training;
# a classifier answers for real patients' patches, so promoting one is a person's decision.
PROMOTE_FIRST = {"generator": True, "classifier": False}


def _slot(kind: str, label: int | None) -> ColumnElement[bool]:
    same_label = ModelVersion.label.is_(None) if label is None else ModelVersion.label == label
    return (ModelVersion.kind == kind) & same_label


def promoted(session: Session, kind: str, label: int | None = None) -> ModelVersion | None:
    """The promoted version of the slot, or None."""
    return session.scalar(select(ModelVersion).where(_slot(kind, label), ModelVersion.promoted.is_(True)).limit(1))


def classifier_id(session: Session, model_id: str | None, field: str, if_none: tuple[str, str]) -> str:
    """The classifier a job's features come from: `model_id` (a 422 naming `field` unless it is
    a classifier) or, when None, the promoted one (a 409 with `if_none`'s title and detail when
    there is none). The audit's domain features and train_gan's snapshot scores both ask."""
    from app.problems import Problem

    row = session.get(ModelVersion, model_id) if model_id else promoted(session, "classifier")
    if row is None or row.kind != "classifier":
        if model_id:
            raise Problem(422, "Not a classifier", f"{field}: model {model_id!r} is not a classifier.")
        raise Problem(409, *if_none)
    return row.id


def next_version(session: Session, kind: str, label: int | None) -> int:
    return int(session.scalar(select(func.max(ModelVersion.version)).where(_slot(kind, label))) or 0) + 1


def register(session: Session, row: ModelVersion, *, promote_if_first: bool | None = None) -> ModelVersion:
    """Insert `row` with the slot's next version; promoted when asked and the slot has none.

    Call inside the success transaction; flushes, so a concurrent duplicate raises
    IntegrityError here (retry the transaction). `row` itself gets the version and flag.
    """
    if row.kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {row.kind!r}")
    if promote_if_first is None:
        promote_if_first = PROMOTE_FIRST[row.kind]
    row.version = next_version(session, row.kind, row.label)
    row.promoted = bool(promote_if_first and promoted(session, row.kind, row.label) is None)
    merged = session.merge(row)
    session.flush()
    return merged


def promote(session: Session, model: ModelVersion) -> None:
    """Make `model` the slot's promoted version (demote the others first: the partial unique
    index allows one promoted row per slot at every moment). The caller commits."""
    session.execute(update(ModelVersion).where(_slot(model.kind, model.label), ModelVersion.id != model.id,
                                               ModelVersion.promoted.is_(True)).values(promoted=False))
    session.flush()
    session.execute(update(ModelVersion).where(ModelVersion.id == model.id).values(promoted=True))
