"""MSG-GAN as jobs over REST: train a tiny generator on real patches, sample it through
/v1/generations, bad input, and resume after the worker is SIGKILLed mid-training."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST_GAN, MID_JOB_GAN, copy_patches
from tests.test_service_ingest import assert_problem

pytestmark = pytest.mark.integration
TINY = {"width": 1 / 32, "latent_dim": 32, "batch_size": 8, "fixed_samples": 4}


@pytest.fixture(scope="module")
def real_slice(service, shared_data, tmp_path_factory):
    root = copy_patches(shared_data, tmp_path_factory.mktemp("gan_slice"), ["10255", "10273", "10275"], per_label=40)
    job = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}}).json()
    job = service.wait_job(job["id"])
    assert job["state"] == "succeeded", job["error"]
    return job["result"]["dataset_id"]


@pytest.fixture(scope="module")
def negatives_only(service, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("neg_only")
    copy_patches(shared_data, root, ["10305"], per_label=30)
    for f in (root / "10305" / "1").glob("*.png"):
        f.unlink()
    job = service.wait_job(service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}}).json()["id"])
    assert job["result"]["by_label"] == {"0": 30}
    return job["result"]["dataset_id"]


@pytest.fixture(scope="module")
def trained(service, real_slice):
    body = {"kind": "train_gan", "params": {"dataset_id": real_slice, "label": "IDC+", "preset": "cpu-small",
                                            "steps": 20, "checkpoint_every": 10, "sample_every": 10, "overrides": TINY}}
    resp = service.client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job


def test_train_gan_job_outputs(service, trained):
    model_id = trained["result"]["model_ids"]["1"]
    names = {a["name"] for a in trained["artifacts"]}
    assert {"samples/label1/step0000010.png", "samples/label1/step0000020.png", "loss_curves_label1.png"} <= names
    assert [c["step"] for c in trained["checkpoints"]] == [10, 20]
    assert trained["metrics"]["label1"]["step"] == 20
    grid = next(a for a in trained["artifacts"] if a["name"] == "samples/label1/step0000020.png")
    img = Image.open(io.BytesIO(service.client.get(grid["url"]).content))
    # 5 scales (rows) x 4 fixed latents (columns) of 64 px tiles with 2 px padding.
    assert img.size == (2 + 4 * 66, 2 + 5 * 66)
    model = service.client.get(f"/v1/models/{model_id}").json()
    assert model["kind"] == "generator" and model["label"] == 1 and model["promoted"] is True
    assert model["config"]["width"] == TINY["width"] and model["config"]["optimizer"] == "adam"


def _zip_images(service, job) -> list[np.ndarray]:
    (art,) = [a for a in job["artifacts"] if a["media_type"] == "application/zip"]
    blob = service.client.get(art["url"]).content
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in sorted(zf.namelist())]


def test_generations_yield_pngs_of_requested_size(service, trained):
    resp = service.client.post("/v1/generations", json={"label": "IDC+", "n": 64})
    assert resp.status_code == 202, resp.text
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["params"]["model_id"] == trained["result"]["model_ids"]["1"]  # the promoted one
    images = _zip_images(service, job)
    assert len(images) == 64 and all(im.shape == (64, 64, 3) for im in images)
    dataset = service.client.get(f"/v1/datasets/{job['result']['dataset_id']}").json()
    assert dataset["kind"] == "synthetic" and dataset["n_patches"] == 64 and dataset["counts"]["by_label"] == {"1": 64}

    small = service.wait_job(service.client.post("/v1/generations", json={"label": 1, "n": 5, "size": 50, "seed": 7}).json()["id"])
    again = service.wait_job(service.client.post("/v1/generations", json={"label": 1, "n": 5, "size": 50, "seed": 7}).json()["id"])
    other = service.wait_job(service.client.post("/v1/generations", json={"label": 1, "n": 5, "size": 50, "seed": 8}).json()["id"])
    a, b, c = _zip_images(service, small), _zip_images(service, again), _zip_images(service, other)
    assert all(im.shape == (50, 50, 3) for im in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same images
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_generations_replay_an_idempotency_key(service, trained):
    # /v1/generations answers a replayed key exactly as /v1/jobs does (app/api/submission.py)
    body, headers = {"label": 1, "n": 3, "seed": 11}, {"Idempotency-Key": "generation-replay-1"}
    first = service.client.post("/v1/generations", json=body, headers=headers)
    again = service.client.post("/v1/generations", json=body, headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["location"] == again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert "idempotent-replayed" not in first.headers and again.headers.get("idempotent-replayed") == "true"
    assert_problem(service.client.post("/v1/generations", json={**body, "seed": 12}, headers=headers),
                   422, "idempotency")
    assert service.wait_job(first.json()["id"])["state"] == "succeeded"


def test_generation_and_training_bad_input(service, trained, real_slice, negatives_only):
    c = service.client
    assert_problem(c.post("/v1/generations", json={"label": "IDC?", "n": 4}), 422, "label")
    assert_problem(c.post("/v1/generations", json={"label": True, "n": 4}), 422, "label")
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": 0}), 422)
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": -3}), 422)
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": 10**9}), 422, "cap")
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": 4, "size": 32}), 422)
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": 4, "model_id": "nope"}), 422, "unknown model")
    model_id = trained["result"]["model_ids"]["1"]
    assert_problem(c.post("/v1/generations", json={"label": "IDC-", "n": 4, "model_id": model_id}), 422, "other label")
    assert_problem(c.post("/v1/generations", json={"label": "IDC-", "n": 4}), 409, "no promoted generator")
    bad = {"dataset_id": negatives_only, "label": "IDC+", "steps": 2}
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": bad}), 422, "lacks that label")
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": dict(bad, dataset_id="nope")}), 422, "unknown dataset")
    odd = {"dataset_id": real_slice, "label": 1, "steps": 2, "overrides": {"colour": 3}}
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": odd}), 422, "colour")
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": dict(odd, overrides={}, preset="huge")}), 422)
    speed = dict(odd, overrides={}, speed={"warp_drive": True})
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": speed}), 422, "warp_drive")
    speed = dict(odd, overrides={}, speed={"precision": "fp8"})
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": speed}), 422, "precision")
    assert_problem(c.post("/v1/generations", json={"label": "IDC+", "n": 4, "precision": "fp8"}), 422)
    # best-snapshot selection scores in a classifier's features: a generator's id is refused
    chosen = dict(odd, overrides={}, select_every=10, select_classifier_model_id=model_id)
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": chosen}), 422, "not a classifier")
    assert_problem(c.post("/v1/jobs", json={"kind": "train_gan", "params": dict(chosen, select_every=0)}), 422,
                   "needs select_every")


@pytest.mark.worker_kill
def test_sigkill_mid_training_resumes_from_last_checkpoint(service, real_slice):
    body = {"kind": "train_gan", "params": {"dataset_id": real_slice, "label": 0, "steps": 100,
                                            "checkpoint_every": 10, "sample_every": 0, "overrides": MID_JOB_GAN}}
    job_id = service.client.post("/v1/jobs", json=body).json()["id"]
    service.wait_past_a_checkpoint(job_id)
    (worker,) = [w for w in service.workers if w.poll() is None]
    service.kill_worker(worker)
    killed_at = service.client.get(f"/v1/jobs/{job_id}").json()
    last_ckpt = max(c["step"] for c in killed_at["checkpoints"])
    assert killed_at["state"] == "running" and killed_at["progress"]["current"] >= last_ckpt
    service.start_worker()
    job = service.wait_job(job_id, timeout=400)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    metrics = job["metrics"]["label0"]
    assert metrics["step"] == 100 and metrics["resumed_from_step"] >= last_ckpt
    assert metrics["resumed_from_step"] % 10 == 0
    history = next(a for a in job["artifacts"] if a["name"] == "loss_history_label0.json")
    steps = service.client.get(history["url"]).json()
    assert len(steps) == 100  # restored history + continued steps: nothing lost, nothing doubled


@pytest.mark.worker_kill
def test_sigterm_hands_the_running_job_back(service, real_slice):
    """A worker asked to stop (SIGTERM: a deploy, a scale-down) does not sit on its job until
    it finishes: the job goes back to the queue uncounted and the next worker resumes it."""
    import os
    import signal

    body = {"kind": "train_gan", "params": {"dataset_id": real_slice, "label": 1, "steps": 100,
                                            "checkpoint_every": 10, "sample_every": 0, "overrides": FAST_GAN}}
    job_id = service.client.post("/v1/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 120
    while not (job := service.client.get(f"/v1/jobs/{job_id}").json())["checkpoints"]:
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.1)
    (worker,) = [w for w in service.workers if w.poll() is None]
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(60)  # a warm shutdown that returns promptly, not after 100 training steps
    handed_back = service.client.get(f"/v1/jobs/{job_id}").json()
    assert handed_back["state"] == "queued" and handed_back["attempts"] == 0, handed_back
    service.start_worker()
    job = service.wait_job(job_id, timeout=300)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert job["metrics"]["label1"]["step"] == 100 and job["metrics"]["label1"]["resumed_from_step"] >= 10
