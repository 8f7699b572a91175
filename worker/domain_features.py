"""A classifier model version as a domain feature extractor: its penultimate ResNet18
features, named by model id, version and the file's sha256 so every number computed in them
says which features it was (the audit job; train_gan's snapshot selection)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from app.db import session_scope
from app.tables import ModelVersion
from models.classifier import load_classifier
from models.feature_extractors import FeatureExtractor, domain_extractor
from worker.context import JobContext, UserError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_classifier_version(ctx: JobContext, model_id: str, what: str = "classifier",
                            device: str = "cpu") -> tuple[object, object, dict[str, object]]:
    """(model in eval mode, its config, its identity: model id, version and the file's sha256)."""
    with session_scope(ctx.db_url) as s:
        row = s.get(ModelVersion, model_id)
        if row is None or row.kind != "classifier":
            raise UserError(f"{what} {model_id} no longer exists")
        key, version = row.key, row.version
    path = ctx.storage.local_path(key)
    model, config = load_classifier(path, device=device)
    return model, config, {"model_id": model_id, "model_version": version, "sha256": sha256_file(path)}


def load_domain_extractor(ctx: JobContext, model_id: str) -> FeatureExtractor:
    model, config, identity = load_classifier_version(ctx, model_id)
    return domain_extractor(model, config.input_size, identity)
