"""Model files and their version rows: generators (one per label) and classifiers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.storage import write_bytes_atomic
from models.device import DeviceUnavailableError, resolve_device


def save_state(path: Path, payload: dict[str, Any]) -> int:
    """torch.save to bytes, then an atomic write: a crash never leaves a torn checkpoint."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue())


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def next_version(session: Session, kind: str, label: int | None) -> int:
    from app.tables import ModelVersion

    query = select(func.max(ModelVersion.version)).where(ModelVersion.kind == kind)
    query = query.where(ModelVersion.label.is_(None) if label is None else ModelVersion.label == label)
    return int(session.scalar(query) or 0) + 1


def has_promoted(session: Session, kind: str, label: int | None) -> bool:
    from app.tables import ModelVersion

    query = select(ModelVersion.id).where(ModelVersion.kind == kind, ModelVersion.promoted.is_(True))
    query = query.where(ModelVersion.label.is_(None) if label is None else ModelVersion.label == label)
    return session.scalar(query.limit(1)) is not None


def pick_device(requested: str) -> str:
    try:
        return resolve_device(requested)
    except DeviceUnavailableError as exc:
        from worker.context import UserError

        raise UserError("device 'cuda' was requested but this worker has no GPU") from exc