"""Bounded jobs: every parameter and every override key has bounds (a 422 naming the field and
its range), sample grids and checkpoints are capped per job, a GAN step with many critic updates
stops between them on cancel, and a job's artifacts are paged instead of embedded in full."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app import job_kinds
from app.job_kinds import (CLASSIFIER_OVERRIDES, GAN_OVERRIDES, MAX_GRIDS, SPEED_OPTIONS, KindSpec, smallest_every,
                           validate_params)
from app.problems import Problem
from models.msggan import PRESETS

GAN = {"dataset_id": "d1", "label": 1}


@pytest.fixture
def no_checks(monkeypatch):
    """Kinds without their database checks: only the pydantic models' bounds are exercised."""
    for kind, spec in list(job_kinds.KINDS.items()):
        monkeypatch.setitem(job_kinds.KINDS, kind, KindSpec(spec.params))


def refused(kind: str, raw: dict) -> Problem:
    with pytest.raises(Problem) as exc:
        validate_params(kind, raw, settings=None, session=None)
    assert exc.value.status == 422
    return exc.value


def locs(problem: Problem) -> dict[tuple, str]:
    return {tuple(e["loc"]): e["msg"] for e in problem.extra["errors"]}


# -- the tables cover the configs ------------------------------------------------------------


def test_override_tables_cover_every_config_field():
    from models.classifier import AUGMENTS as CLASSIFIER_AUGMENTS, MODES, ClassifierConfig
    from models.gan_speed import PRECISIONS, TrainSpeed
    from models.diffaug import POLICIES as DIFFAUG_POLICIES
    from models.msggan import AUGMENTS, LOSSES, OPTIMIZERS, GanConfig

    assert set(GAN_OVERRIDES) == {f.name for f in dataclasses.fields(GanConfig)}
    assert set(CLASSIFIER_OVERRIDES) == {f.name for f in dataclasses.fields(ClassifierConfig)}
    assert set(SPEED_OPTIONS) == {f.name for f in dataclasses.fields(TrainSpeed)}
    assert set(GAN_OVERRIDES["loss"].choices) == set(LOSSES)
    assert set(GAN_OVERRIDES["optimizer"].choices) == set(OPTIMIZERS)
    assert set(GAN_OVERRIDES["augment"].choices) == set(AUGMENTS)
    assert set(GAN_OVERRIDES["diffaug"].choices) == set(DIFFAUG_POLICIES)
    assert set(CLASSIFIER_OVERRIDES["mode"].choices) == set(MODES)
    assert set(CLASSIFIER_OVERRIDES["augment"].choices) == set(CLASSIFIER_AUGMENTS)
    assert set(SPEED_OPTIONS["precision"].choices) == set(PRECISIONS)


def test_the_request_schema_and_the_dashboard_name_every_preset_and_no_other():
    import typing

    assert set(typing.get_args(job_kinds.PresetName)) == set(PRESETS)
    for view in ("training", "experiment"):
        source = (Path(job_kinds.__file__).parent / "web" / "js" / "views" / f"{view}.js").read_text()
        names = re.search(r"const PRESETS = \[([^\]]*)\]", source).group(1)
        assert set(re.findall(r'"([^"]+)"', names)) == set(PRESETS), view


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_within_the_override_bounds(no_checks, preset):
    # every preset value, given as an override, is accepted: the bounds admit real use
    validate_params("train_gan", {**GAN, "preset": preset, "overrides": PRESETS[preset].to_dict()}, None, None)


# -- GAN overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, allowed", [
    ("n_critic", 11, "1..10"), ("n_critic", 0, "1..10"), ("n_critic", 10**9, "1..10"),
    ("width", 3.0, "0.015625..2"), ("width", 0.001, "0.015625..2"), ("latent_dim", 2048, "1..1024"),
    ("fixed_samples", 10_000, "1..256"), ("batch_size", 4096, "1..1024"), ("depth", 9, "2..8"),
    ("seed", -1, "0..2147483647"), ("lr", 0, "1e-08..1"), ("n_critic", 2.5, "an integer"),
    ("n_critic", True, "an integer"), ("loss", "hinge", "'wgan-gp'"), ("equalized_lr", "yes", "true or false"),
    ("gp_lambda", float("nan"), "0..1000"),
])
def test_gan_override_out_of_bounds_is_a_422_naming_field_and_range(no_checks, key, value, allowed):
    problem = refused("train_gan", {**GAN, "overrides": {key: value}})
    assert set(locs(problem)) == {("overrides", key)}
    assert allowed in locs(problem)[("overrides", key)]
    assert f"overrides.{key}" in problem.detail and allowed in problem.detail


def test_unknown_override_and_several_wrong_keys_are_each_named(no_checks):
    problem = refused("train_gan", {**GAN, "overrides": {"colour": 1, "n_critic": 50, "width": 1 / 32}})
    errors = locs(problem)
    assert set(errors) == {("overrides", "colour"), ("overrides", "n_critic")}  # width is fine
    assert "not a GanConfig field" in errors[("overrides", "colour")]
    # an experiment's GAN overrides are the same table
    problem = refused("experiment", {"dataset_id": "d1", "overrides": {"fixed_samples": 257}})
    assert ("overrides", "fixed_samples") in locs(problem) and "1..256" in problem.detail


def test_gan_bounds_at_the_edges_pass(no_checks):
    edges = {"n_critic": 10, "width": 2, "latent_dim": 1024, "fixed_samples": 256, "batch_size": 1024, "depth": 8}
    stored = validate_params("train_gan", {**GAN, "overrides": edges}, None, None)
    assert stored["overrides"] == edges
    for d_width in (None, 1 / 64, 2):  # null mirrors the generator's width
        stored = validate_params("train_gan", {**GAN, "overrides": {"d_width": d_width}}, None, None)
        assert stored["overrides"] == {"d_width": d_width}
    problem = refused("train_gan", {**GAN, "overrides": {"d_width": 4}})
    assert "0.015625..2 or null" in locs(problem)[("overrides", "d_width")]
    for d_lr in (None, 1e-8, 1):
        assert validate_params("train_gan", {**GAN, "overrides": {"d_lr": d_lr}}, None, None)["overrides"] == {"d_lr": d_lr}
    assert ("overrides", "d_lr") in locs(refused("train_gan", {**GAN, "overrides": {"d_lr": 2}}))


def test_steps_past_the_lr_decays_end_are_a_422_naming_the_end():
    decay = {"lr_decay_start": 3000, "lr_decay_steps": 3000}
    assert job_kinds._gan_config("cpu-small-he", decay, 6000, "Invalid").lr_factor(5999) > 0
    assert job_kinds._gan_config("cpu-small-he", decay, 4500, "Invalid").lr_decay_steps == 3000  # a partial decay
    assert job_kinds._gan_config("cpu-small-he", {}, 10**6, "Invalid").lr_decay_steps == 0  # no schedule, no end
    with pytest.raises(Problem) as exc:
        job_kinds._gan_config("cpu-small-he", decay, 6001, "Invalid GAN overrides")
    assert exc.value.status == 422 and exc.value.title == "Invalid GAN overrides"
    assert "decay to 0 at step 6000" in exc.value.detail and "steps <= 6000" in exc.value.detail


def test_speed_options_are_bounded(no_checks):
    problem = refused("train_gan", {**GAN, "speed": {"read_ahead": 1000, "sync_every": 0, "warp": 1}})
    assert set(locs(problem)) == {("speed", "read_ahead"), ("speed", "sync_every"), ("speed", "warp")}
    assert "0..64" in locs(problem)[("speed", "read_ahead")]
    validate_params("train_gan", {**GAN, "speed": {"read_ahead": None, "sync_every": 50, "cuda_graph": None}},
                    None, None)


def test_steps_are_bounded(no_checks):
    problem = refused("train_gan", {**GAN, "steps": 5_000_001, "sample_every": 0, "checkpoint_every": 0})
    assert ("steps",) in locs(problem)
    assert ("steps",) in locs(refused("experiment", {"dataset_id": "d1", "steps": 10**9}))


# -- sample grids and checkpoints ------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample_every", "checkpoint_every"])
@pytest.mark.parametrize("value", [1, 9, -1])
def test_every_has_a_minimum(no_checks, name, value):
    problem = refused("train_gan", {**GAN, name: value})
    assert set(locs(problem)) == {(name,)}
    assert "0 (off) or in 10.." in locs(problem)[(name,)]


@pytest.mark.parametrize("name", ["sample_every", "checkpoint_every"])
def test_outputs_per_job_are_capped(no_checks, name):
    other = "checkpoint_every" if name == "sample_every" else "sample_every"
    raw = {**GAN, "label": "both", "steps": 1_000_000, other: 0}
    problem = refused("train_gan", {**raw, name: 500})
    message = locs(problem)[(name,)]
    assert "4000 outputs" in message and f"{name} >= 1997" in message
    stored = validate_params("train_gan", {**raw, name: 1997}, None, None)  # 2 x 500 grids: at the cap
    assert stored[name] == 1997
    refused("train_gan", {**raw, name: 1996})  # 2 x 501
    validate_params("train_gan", {**raw, name: 0}, None, None)  # off
    # one label: half the outputs, so half the cadence
    validate_params("train_gan", {**raw, "label": 1, name: 1000}, None, None)
    refused("train_gan", {**raw, "label": 1, name: 999})


def test_snapshot_selection_is_bounded(no_checks):
    assert ("select_every",) in locs(refused("train_gan", {**GAN, "select_every": 5}))  # 0 (off) or >= 10
    assert ("select_samples",) in locs(refused("train_gan", {**GAN, "select_every": 250, "select_samples": 10}))
    for kind, base in (("train_gan", GAN), ("experiment", {"dataset_id": "d1"})):
        assert ("select_size",) in locs(refused(kind, {**base, "select_every": 250, "select_size": 32}))
        assert validate_params(kind, {**base, "select_every": 250}, None, None)["select_size"] == 50
    raw = {**GAN, "steps": 5000, "select_every": 10}  # 500 scored snapshots
    message = locs(refused("train_gan", raw))[("select_every",)]
    assert "500 snapshots" in message and "at most 200" in message
    stored = validate_params("train_gan", {**raw, "select_start": 3010}, None, None)  # 200: at the cap
    assert stored["select_every"] == 10 and stored["select_start"] == 3010
    refused("train_gan", {**raw, "select_start": 3000})  # 201
    # a classifier for the scores means nothing without them
    problem = refused("train_gan", {**GAN, "select_classifier_model_id": "m1"})
    assert "needs select_every > 0" in locs(problem)[("select_classifier_model_id",)]
    assert validate_params("train_gan", GAN, None, None)["select_every"] == 0  # off by default, as the paper
    # the experiment passes the same bounds on to its train_gan child
    assert ("select_every",) in locs(refused("experiment", {"dataset_id": "d1", "steps": 5000, "select_every": 10}))
    validate_params("experiment", {"dataset_id": "d1", "steps": 4000, "select_every": 250, "select_start": 2000},
                    None, None)


def test_selection_needs_a_classifier(monkeypatch):
    class Row:
        def __init__(self, kind: str) -> None:
            self.id, self.kind = f"{kind}-1", kind

    class Session:
        def get(self, table, row_id):  # noqa: ANN001, ANN202
            return {"gen-1": Row("generator"), "cls-1": Row("classifier")}.get(row_id)

    monkeypatch.setattr(job_kinds.model_registry, "promoted", lambda session, kind, label=None: None)
    with pytest.raises(Problem) as exc:
        job_kinds._selection_classifier(Session(), None)  # none named, none promoted
    assert exc.value.status == 409 and "select_classifier_model_id" in exc.value.detail
    for named in ("gen-1", "missing"):
        with pytest.raises(Problem) as exc:
            job_kinds._selection_classifier(Session(), named)
        assert exc.value.status == 422 and "not a classifier" in exc.value.detail
    assert job_kinds._selection_classifier(Session(), "cls-1") == "classifier-1"
    monkeypatch.setattr(job_kinds.model_registry, "promoted", lambda session, kind, label=None: Row(kind))
    assert job_kinds._selection_classifier(Session(), None) == "classifier-1"  # the promoted one


@pytest.mark.parametrize("steps", [1, 3, 9, 300, 4001, 123_457, 5_000_000])
@pytest.mark.parametrize("n_labels", [1, 2])
def test_smallest_every_keeps_a_job_within_the_cap(no_checks, steps, n_labels):
    every = smallest_every(steps, n_labels)
    assert every >= 10 and n_labels * (steps // every) <= MAX_GRIDS
    assert every == 10 or n_labels * (steps // (every - 1)) > MAX_GRIDS  # and is the smallest
    # what worker/experiment.py gives its train_gan child (label both)
    child = {"dataset_id": "d1", "label": "both", "steps": steps, "sample_every": 0,
             "checkpoint_every": max(smallest_every(steps, 2), min(500, steps // 4))}
    validate_params("train_gan", child, None, None)


# -- classifier params and overrides ---------------------------------------------------------


@pytest.mark.parametrize("kind, base", [("train_classifier", {"dataset_id": "d1"}),
                                        ("evaluate", {"real_dataset_id": "r", "synthetic_dataset_ids": ["s"]}),
                                        ("experiment", {"dataset_id": "d1"})])
def test_classifier_epochs_and_input_size_cannot_pass_their_bounds(no_checks, kind, base):
    key = "classifier_overrides" if kind == "experiment" else "overrides"
    for field, value, allowed in (("epochs", 201, "1..200"), ("input_size", 1024, "32..512"),
                                  ("input_size", 16, "32..512")):
        top = refused(kind, {**base, field: value})
        assert (field,) in locs(top)
        over = refused(kind, {**base, key: {field: value}})
        assert allowed in locs(over)[(key, field)]
    problem = refused(kind, {**base, key: {"weights": "/etc/passwd", "batch_size": 0, "augment": "colour"}})
    assert "top-level 'weights'" in locs(problem)[(key, "weights")]
    assert "1..1024" in locs(problem)[(key, "batch_size")]
    assert "dihedral" in locs(problem)[(key, "augment")]
    stored = validate_params(kind, {**base, "epochs": 200, "input_size": 512,
                                    key: {"epochs": 3, "lr": 0.01, "augment": "dihedral"}}, None, None)
    assert stored[key] == {"epochs": 3, "lr": 0.01, "augment": "dihedral"}


def test_classifier_settings_stay_within_bounds_after_the_merge(no_checks):
    from app.job_kinds import TrainClassifierParams
    from models.classifier import config_from

    params = TrainClassifierParams(dataset_id="d1", epochs=5, overrides={"epochs": 200, "input_size": 32})
    config = config_from(params.classifier_settings())
    assert config.epochs == 200 and config.input_size == 32  # overrides still win, within bounds


def test_seeds_and_ids_are_bounded(no_checks):
    assert ("seed",) in locs(refused("evaluate", {"real_dataset_id": "r", "synthetic_dataset_ids": ["s"], "seed": -1}))
    assert ("holdout_seed",) in locs(refused("train_gan", {**GAN, "holdout_seed": 2**40}))
    assert ("dataset_id",) in locs(refused("train_gan", {**GAN, "dataset_id": "x" * 65}))
    problem = refused("evaluate", {"real_dataset_id": "r", "synthetic_dataset_ids": ["s"] * 17})
    assert ("synthetic_dataset_ids",) in locs(problem)


# -- over HTTP: a problem+json -----------------------------------------------------------------


def _app(tmp_path):
    from app.main import create_app
    from app.migrate import upgrade_head
    from app.settings import Settings

    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)
    return settings, create_app(settings)


def _run(app, scenario):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await scenario(client)
    return asyncio.run(go())


def test_out_of_bounds_override_is_a_problem_json_422(tmp_path):
    _, app = _app(tmp_path)

    async def scenario(client):
        return await client.post("/v1/jobs", json={"kind": "train_gan", "params": {
            "dataset_id": "d1", "label": 1, "overrides": {"n_critic": 1000}, "sample_every": 1}})

    resp = _run(app, scenario)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert {(tuple(e["loc"])) for e in body["errors"]} == {("overrides", "n_critic"), ("sample_every",)}
    assert "overrides.n_critic: must be an integer in 1..10, got 1000" in body["detail"]


# -- the critic loop checks the abort ------------------------------------------------------------


PATCHES = np.random.default_rng(0).integers(0, 256, (10, 50, 50, 3), dtype=np.uint8)
TINY = {"width": 1 / 64, "latent_dim": 16, "batch_size": 4, "fixed_samples": 4}


def test_a_huge_n_critic_aborts_between_critic_updates(one_torch_thread):
    from models.gan_trainer import GanTrainer
    from models.msggan import config_from

    # models/ takes any n_critic (only jobs are bounded): one step here is a million D updates
    trainer = GanTrainer(config_from("paper", {**TINY, "n_critic": 1_000_000}), PATCHES)
    resume = trainer.state_dict()
    d0 = [p.clone() for p in trainer.D.parameters()]
    calls = []
    start = time.monotonic()
    finished = trainer.train(5, abort_fn=lambda: calls.append(1) or len(calls) >= 4)
    assert not finished and time.monotonic() - start < 60
    # asked before the step, then before critic updates 2, 3 and 4: three D updates ran
    assert len(calls) == 4 and trainer.step == 0 and trainer.history == []
    assert any(not torch.equal(a, b) for a, b in zip(d0, trainer.D.parameters()))
    with pytest.raises(RuntimeError, match="part-way"):  # a torn step is never a checkpoint
        trainer.state_dict()
    trainer.load_state_dict(resume)  # what a resume does: whole again
    assert trainer.state_dict()["step"] == 0
    trainer.close()


def test_critic_inputs_drawn_per_update_are_the_same_stream(one_torch_thread):
    """Drawing each critic update's inputs just before it (so an abort need not draw them all)
    consumes the data order and the noise stream exactly as drawing them all first did."""
    from models.gan_trainer import GanTrainer
    from models.msggan import config_from

    config = config_from("paper", {**TINY, "n_critic": 3})
    lazy, eager = GanTrainer(config, PATCHES), GanTrainer(config, PATCHES)
    lazy.train(2, abort_fn=lambda: False)
    for _ in range(2):
        drawn = [eager._draw_one(k) for k in range(3)]  # all three first, as before
        eager._pending.append(eager._step_math(lambda k: drawn[k]))
        eager.step += 1
    a, b = lazy.state_dict(), eager.state_dict()
    for part in ("G", "D", "G_ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["history"], b["history"]) and a["position"] == b["position"]
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])
    lazy.close(), eager.close()


# -- artifacts and checkpoints are paged ---------------------------------------------------------


def test_job_json_embeds_a_bounded_page_and_the_list_pages_through_all(tmp_path):
    from app.api.schemas import EMBEDDED
    from app.db import session_scope
    from app.tables import Artifact, Checkpoint, Job

    settings, app = _app(tmp_path)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    n_art, n_ckpt = 1234, 75
    with session_scope(settings.resolved_database_url) as s:
        s.add(Job(id="j" * 32, kind="train_gan", params={}, state="running"))
        s.add(Job(id="k" * 32, kind="train_gan", params={}, state="queued"))
        s.flush()
        s.add_all(Artifact(id=f"a{i:031d}", job_id="j" * 32, name=f"samples/label1/step{i:07d}.png",
                           media_type="image/png", key=f"artifacts/j/{i}", size_bytes=1,
                           created_at=t0 + timedelta(seconds=i)) for i in range(n_art))
        s.add(Artifact(id="b" * 32, job_id="j" * 32, name="loss_curves_label1.png", media_type="image/png",
                       key="artifacts/j/loss", size_bytes=1, created_at=t0 + timedelta(days=1)))
        s.add_all(Checkpoint(id=f"c{i:031d}", job_id="j" * 32, name="label1", step=10 * (i + 1), key=f"c/{i}",
                             size_bytes=1, created_at=t0 + timedelta(seconds=i)) for i in range(n_ckpt))

    async def scenario(client):
        job = (await client.get(f"/v1/jobs/{'j' * 32}")).json()
        listed = (await client.get("/v1/jobs", params={"limit": 500})).json()
        pages, offset = [], 0
        while True:
            page = (await client.get(job["artifacts_url"], params={"limit": 500, "offset": offset})).json()
            pages.append(page)
            offset += 500
            if offset >= page["count"]:
                break
        samples = (await client.get(job["artifacts_url"], params={"name_prefix": "samples/", "limit": 1})).json()
        too_big = await client.get(job["artifacts_url"], params={"limit": 501})
        unknown = await client.get(f"/v1/jobs/{'x' * 32}/artifacts")
        empty = (await client.get(f"/v1/jobs/{'k' * 32}/artifacts")).json()
        ckpts = (await client.get(job["checkpoints_url"], params={"limit": 50, "offset": 50})).json()
        return job, listed, pages, samples, too_big, unknown, empty, ckpts

    job, listed, pages, samples, too_big, unknown, empty, ckpts = _run(app, scenario)
    assert job["artifact_count"] == n_art + 1 and len(job["artifacts"]) == EMBEDDED
    # the newest, oldest first: the final outputs are there, the early grids are paged
    assert job["artifacts"][-1]["name"] == "loss_curves_label1.png"
    assert job["artifacts"][0]["name"] == f"samples/label1/step{n_art - EMBEDDED + 1:07d}.png"
    assert job["artifacts_url"] == f"/v1/jobs/{'j' * 32}/artifacts"
    assert job["checkpoint_count"] == n_ckpt and [c["step"] for c in job["checkpoints"]] == \
        [10 * (i + 1) for i in range(n_ckpt - EMBEDDED, n_ckpt)]
    (listed_job,) = [j for j in listed["data"] if j["id"] == "j" * 32]
    assert len(listed_job["artifacts"]) == EMBEDDED and listed_job["artifact_count"] == n_art + 1

    assert [len(p["data"]) for p in pages] == [500, 500, 235] and all(p["count"] == n_art + 1 for p in pages)
    names = [a["name"] for p in pages for a in p["data"]]
    assert names == [f"samples/label1/step{i:07d}.png" for i in range(n_art)] + ["loss_curves_label1.png"]
    assert len({a["id"] for p in pages for a in p["data"]}) == n_art + 1
    assert samples["count"] == n_art and len(samples["data"]) == 1
    assert too_big.status_code == 422 and too_big.headers["content-type"].startswith("application/problem+json")
    assert unknown.status_code == 404
    assert empty == {"data": [], "count": 0, "limit": 100, "offset": 0}
    assert ckpts["count"] == n_ckpt and [c["step"] for c in ckpts["data"]] == [10 * (i + 1) for i in range(50, n_ckpt)]
