"""Model files: torch checkpoints in the store, and the device a model runs on. Version rows
and promotion live in app.model_registry."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from app.storage import Storage, write_bytes_atomic
from models.device import DeviceUnavailableError, resolve_device


def state_bytes(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_state(path: Path, payload: dict[str, Any]) -> int:
    """torch.save to bytes, then an atomic write: a crash never leaves a torn checkpoint."""
    return write_bytes_atomic(path, state_bytes(payload))


def put_state(storage: Storage, key: str, payload: dict[str, Any]) -> int:
    """Serialise first, then one atomic put (a local rename or one S3 PUT): never a torn object."""
    return storage.put_bytes(key, state_bytes(payload))


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state(storage: Storage, key: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(storage.read_bytes(key)), map_location="cpu", weights_only=True)


def pick_device(requested: str) -> str:
    try:
        return resolve_device(requested)
    except DeviceUnavailableError as exc:
        from worker.context import UserError

        raise UserError("device 'cuda' was requested but this worker has no GPU") from exc
