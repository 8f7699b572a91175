"""What an audit job compares, resolved when it is posted: the generator behind the synthetic
set, its training dataset and patients, the holdout, and the feature extractor's checkpoint.
Anything missing is a 4xx before the job is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import model_registry
from app.problems import Problem
from app.settings import Settings


def inception_search_dirs() -> list[Path]:
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints"]


def resolve_audit_inputs(params: Any, settings: Settings, session: Session) -> dict[str, Any]:
    from app.tables import Dataset, ModelVersion

    synthetic = session.get(Dataset, params.synthetic_dataset_id)
    if synthetic is None:
        raise Problem(422, "Unknown dataset", f"No dataset with id {params.synthetic_dataset_id!r}.")
    if synthetic.kind != "synthetic":
        raise Problem(422, "Not a synthetic dataset", f"Dataset {synthetic.id} is {synthetic.kind}; audit a generated one.")
    generator = session.get(ModelVersion, (synthetic.source or {}).get("model_id", ""))
    if generator is None:
        raise Problem(422, "Generator unknown", f"Dataset {synthetic.id} records no generator that still exists.")
    label = generator.label
    config = generator.config or {}
    train_id = params.train_dataset_id or config.get("dataset_id")
    train = session.get(Dataset, train_id) if train_id else None
    if train is None:
        raise Problem(422, "Training dataset unknown",
                      f"Give train_dataset_id: generator {generator.id} records no training dataset that still exists.")
    holdout_patients = config.get("holdout_patients") or []
    if params.holdout_dataset_id:
        holdout = session.get(Dataset, params.holdout_dataset_id)
        if holdout is None or holdout.kind != "real":
            raise Problem(422, "Holdout must be a real dataset", f"{params.holdout_dataset_id!r} is not an ingested dataset.")
        if not int(holdout.counts.get("by_label", {}).get(str(label), 0)):
            raise Problem(422, "Holdout lacks the label", f"Dataset {holdout.id} has no patches of label {label}.")
    elif not holdout_patients:
        raise Problem(422, "No holdout patients",
                      f"Generator {generator.id} was trained on every patient of its dataset. Train it with "
                      "holdout_fraction > 0 (train_gan) or give holdout_dataset_id: a real dataset of other patients.")
    out: dict[str, Any] = {"generator_id": generator.id, "label": label, "train_dataset_id": train.id}
    if params.features == "domain":
        out["classifier_model_id"] = model_registry.classifier_id(session, params.classifier_model_id, "classifier_model_id", (
            "No classifier for domain features",
            "Domain features come from a ResNet18 trained on real patches: train one (train_classifier), "
            "promote it or pass classifier_model_id, or use features='inception'."))
    else:
        from models.feature_extractors import INCEPTION_FILE

        path = settings.inception_weights
        candidates = [path] if path else [d / INCEPTION_FILE for d in inception_search_dirs()]
        if not any(p.is_file() for p in candidates):
            raise Problem(422, "Inception weights missing",
                          f"features='inception' needs torchvision's {INCEPTION_FILE}; looked for "
                          f"{', '.join(str(p) for p in candidates)}. Set HISTOSYNTH_INCEPTION_WEIGHTS or use features='domain'.")
    return out
