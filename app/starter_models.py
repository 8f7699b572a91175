"""Starter models: a generator per label and a classifier shipped in the package
(`app/starters/`, made by `bench/build_starters.py` on the public dataset), so the main job
works on the first command: `POST /v1/generations` and `/v1/predictions` answer before anyone
has trained anything.

They are installed, and promoted, only into an empty slot (no model of that kind and label at
all), by `histosynth serve` and `histosynth migrate`; a user's own promoted model replaces
them like any other version. They carry `metrics.starter = true` and their measured numbers
(from `manifest.json`), so the API, the page and the README label them as starters.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app import model_registry
from app.db import session_scope
from app.settings import Settings
from app.storage import Storage
from app.tables import ModelVersion

log = logging.getLogger("histosynth.starters")
STARTERS_DIR = Path(__file__).resolve().parent / "starters"
MANIFEST = "manifest.json"


def load_manifest(folder: Path = STARTERS_DIR) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def install_starters(settings: Settings, folder: Path = STARTERS_DIR) -> list[str]:
    """Register and promote each shipped starter whose slot is empty. Returns the ids installed.
    Idempotent: a starter's id is derived from its file's sha256."""
    manifest = load_manifest(folder)
    if manifest is None:
        return []
    storage = Storage.from_settings(settings)
    installed = []
    with session_scope(settings.resolved_database_url) as s:
        for entry in manifest["models"]:
            kind, label = entry["kind"], entry.get("label")
            same_label = ModelVersion.label.is_(None) if label is None else ModelVersion.label == label
            if s.scalar(select(func.count()).select_from(ModelVersion).where(
                    ModelVersion.kind == kind, same_label)):
                continue  # the slot has models already: never touch a user's registry
            data = (folder / entry["file"]).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(f"starter file {entry['file']} does not match its manifest (sha256 {digest})")
            model_id = f"starter{digest[:25]}"
            key = f"models/{model_id}.pt"
            storage.put_bytes(key, data)
            row = ModelVersion(id=model_id, kind=kind, label=label, key=key, config=entry["config"],
                               metrics={**entry["metrics"], "starter": True, "sha256": digest,
                                        "trained_by": manifest.get("trained_by", "")},
                               shared=True)
            row = model_registry.register(s, row, promote_if_first=False)
            model_registry.promote(s, row)
            installed.append(model_id)
            log.info("installed starter %s %s (label %s)", kind, model_id, label)
    return installed
