"""Starter models (app/starter_models.py): installed and promoted only into empty slots,
idempotently, checked against their manifest, labelled as starters in the API, and replaced
by a user's own promotion."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

import httpx
import pytest
import torch

from app import model_registry
from app.db import session_scope
from app.main import create_app
from app.migrate import upgrade_head
from app.settings import Settings
from app.starter_models import STARTERS_DIR, install_starters, load_manifest
from app.tables import ModelVersion
from models.classifier import build_resnet18, classifier_state, config_from as classifier_config
from models.msggan import config_from


def _write(folder: Path, name: str, payload: dict) -> tuple[str, str]:
    buf = io.BytesIO()
    torch.save(payload, buf)
    (folder / name).write_bytes(buf.getvalue())
    return name, hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture
def starters(tmp_path) -> Path:
    folder = tmp_path / "starters"
    folder.mkdir()
    gan = config_from("cpu-small", {"width": 1 / 32})
    models = []
    for label in (0, 1):
        torch.manual_seed(label)
        g = gan.make_generator()
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in g.state_dict().items()}
        name, digest = _write(folder, f"generator_label{label}.pt",
                              {"kind": "generator", "label": label, "config": gan.to_dict(), "state_dict": state})
        models.append({"kind": "generator", "label": label, "file": name, "sha256": digest, "config": gan.to_dict(),
                       "metrics": {"fid_domain": 20.0 + label}})
    cfg = classifier_config({"weights": "none", "mode": "finetune", "input_size": 32})
    name, digest = _write(folder, "classifier.pt", classifier_state(build_resnet18("none", "finetune"), cfg))
    models.append({"kind": "classifier", "label": None, "file": name, "sha256": digest, "config": cfg.to_dict(),
                   "metrics": {"balanced_accuracy": 0.8}})
    (folder / "manifest.json").write_text(json.dumps({"trained_by": "test", "models": models}))
    return folder


def _settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path / "home")
    upgrade_head(settings.resolved_database_url)
    return settings


def test_starters_fill_empty_slots_once_and_are_labelled(starters, tmp_path):
    settings = _settings(tmp_path)
    installed = install_starters(settings, starters)
    assert len(installed) == 3
    assert install_starters(settings, starters) == []  # idempotent
    with session_scope(settings.resolved_database_url) as s:
        for kind, label in (("generator", 0), ("generator", 1), ("classifier", None)):
            row = model_registry.promoted(s, kind, label)
            assert row is not None and row.id in installed and row.metrics["starter"] is True and row.shared

    async def scenario():  # noqa: ANN202
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            from tests.helpers import png_bytes
            models = (await c.get("/v1/models")).json()["data"]
            pred = await c.post("/v1/predictions", files=[("files", ("p.png", png_bytes(seed=1), "image/png"))])
            return models, pred
    models, pred = asyncio.run(scenario())
    assert len(models) == 3 and all(m["starter"] for m in models)
    assert pred.status_code == 200, pred.text
    assert pred.json()["model"]["starter"] is True and 0 <= pred.json()["predictions"][0]["probability_idc"] <= 1


def test_a_slot_with_any_model_is_left_alone_and_a_user_promotion_replaces_a_starter(starters, tmp_path):
    settings = _settings(tmp_path)
    with session_scope(settings.resolved_database_url) as s:
        mine = model_registry.register(s, ModelVersion(kind="generator", label=1, key="models/mine.pt", config={},
                                                       metrics={}))
        mine_id = mine.id
    installed = install_starters(settings, starters)
    assert len(installed) == 2  # label 0 and the classifier; label 1 already had a model
    with session_scope(settings.resolved_database_url) as s:
        assert model_registry.promoted(s, "generator", 1).id == mine_id
        mine_cls = model_registry.register(s, ModelVersion(kind="classifier", label=None, key="models/c.pt",
                                                           config={}, metrics={}))
        model_registry.promote(s, mine_cls)
    with session_scope(settings.resolved_database_url) as s:
        assert model_registry.promoted(s, "classifier").id == mine_cls.id


def test_a_starter_that_does_not_match_its_manifest_is_refused(starters, tmp_path):
    (starters / "classifier.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match its manifest"):
        install_starters(_settings(tmp_path), starters)


def test_the_shipped_manifest_names_files_that_exist():
    manifest = load_manifest()
    if manifest is None:
        pytest.fail("app/starters/manifest.json is missing: run bench/build_starters.py")
    kinds = sorted((m["kind"], m.get("label") if m.get("label") is not None else -1) for m in manifest["models"])
    assert kinds == [("classifier", -1), ("generator", 0), ("generator", 1)]
    for m in manifest["models"]:
        data = (STARTERS_DIR / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"]
