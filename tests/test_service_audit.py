"""The audit job over REST: a generator trained with a patient holdout, its samples audited
against its training patients and the held-out ones; every missing input is a 4xx."""

from __future__ import annotations

import pytest

from tests.conftest import copy_patches
from tests.test_service_ingest import assert_problem

pytestmark = pytest.mark.integration
TINY_GAN = {"width": 1 / 32, "latent_dim": 32, "batch_size": 8, "fixed_samples": 4}
PATIENTS = ["10255", "10273", "10275", "10299", "10302", "10303"]


@pytest.fixture(scope="module")
def pipeline(service, shared_data, tmp_path_factory):
    c = service.client
    root = copy_patches(shared_data, tmp_path_factory.mktemp("audit_slice"), PATIENTS, per_label=30)
    ingest = service.wait_job(c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}}).json()["id"])
    assert ingest["state"] == "succeeded", ingest["error"]
    dataset_id = ingest["result"]["dataset_id"]
    train = service.wait_job(c.post("/v1/jobs", json={"kind": "train_gan", "params": {
        "dataset_id": dataset_id, "label": 1, "steps": 3, "checkpoint_every": 0, "sample_every": 0,
        "overrides": TINY_GAN, "holdout_fraction": 0.34, "holdout_seed": 1}}).json()["id"])
    assert train["state"] == "succeeded", train["error"]
    generator_id = train["result"]["model_ids"]["1"]
    gen = service.wait_job(c.post("/v1/generations", json={"label": 1, "n": 60, "model_id": generator_id,
                                                           "size": 50}).json()["id"])
    assert gen["state"] == "succeeded", gen["error"]
    return {"dataset_id": dataset_id, "generator_id": generator_id, "synthetic_id": gen["result"]["dataset_id"]}


def test_generator_records_its_training_and_holdout_patients(service, pipeline):
    config = service.client.get(f"/v1/models/{pipeline['generator_id']}").json()["config"]
    assert len(config["holdout_patients"]) == 2 and config["holdout_fraction"] == 0.34
    assert set(config["train_patients"]).isdisjoint(config["holdout_patients"])
    assert set(config["train_patients"]) | set(config["holdout_patients"]) <= set(PATIENTS)


def test_audit_needs_its_inputs(service, pipeline):
    c = service.client
    body = {"kind": "audit", "params": {"synthetic_dataset_id": pipeline["synthetic_id"]}}
    assert_problem(c.post("/v1/jobs", json=body), 409, "no classifier")
    body["params"]["features"] = "inception"
    assert_problem(c.post("/v1/jobs", json=body), 422, "inception_v3_google-0cc3c7bd.pth")
    real = {"kind": "audit", "params": {"synthetic_dataset_id": pipeline["dataset_id"]}}
    assert_problem(c.post("/v1/jobs", json=real), 422, "not a synthetic dataset")
    assert_problem(c.post("/v1/jobs", json={"kind": "audit", "params": {"synthetic_dataset_id": "nope"}}), 422)
    no_holdout = service.wait_job(c.post("/v1/jobs", json={"kind": "train_gan", "params": {
        "dataset_id": pipeline["dataset_id"], "label": 1, "steps": 2, "checkpoint_every": 0, "sample_every": 0,
        "overrides": TINY_GAN}}).json()["id"])
    gen = service.wait_job(c.post("/v1/generations", json={"label": 1, "n": 20,
                                                           "model_id": no_holdout["result"]["model_ids"]["1"]}).json()["id"])
    body = {"kind": "audit", "params": {"synthetic_dataset_id": gen["result"]["dataset_id"]}}
    assert_problem(c.post("/v1/jobs", json=body), 422, "holdout_fraction")


def test_audit_reports_fidelity_floor_and_memorization(service, pipeline):
    c = service.client
    clf = service.wait_job(c.post("/v1/jobs", json={"kind": "train_classifier", "params": {
        "dataset_id": pipeline["dataset_id"], "weights": "none", "mode": "finetune", "epochs": 1,
        "input_size": 32}}).json()["id"])
    assert clf["state"] == "succeeded", clf["error"]
    params = {"synthetic_dataset_id": pipeline["synthetic_id"], "classifier_model_id": clf["result"]["model_id"],
              "max_samples": 200}
    resp = c.post("/v1/jobs", json={"kind": "audit", "params": params})
    assert resp.status_code == 202, resp.text
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["params"]["generator_id"] == pipeline["generator_id"] and job["params"]["label"] == 1
    m = job["metrics"]
    assert m["features"]["name"] == "domain" and len(m["features"]["sha256"]) == 64
    assert m["features"]["model_id"] == clf["result"]["model_id"]
    assert m["counts"]["synthetic"] == 60 and m["counts"]["holdout"] > 0 and m["counts"]["train"] > 0
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert isinstance(m["fidelity"][key], float) and isinstance(m["real_floor"][key], float)
    assert 0.0 <= m["memorization"]["flagged_fraction"] <= 1.0
    assert m["datasets"]["holdout"]["patients"] == 2
    # the classifier was trained on this very dataset: the audit says it saw these patients
    assert m["extractor_overlap"]["known"] and m["extractor_overlap"]["train_patients"] > 0
    names = {a["name"]: a for a in job["artifacts"]}
    assert {"audit.md", "audit.json", "distances_pixels.png", "distances_features.png", "closest_pairs.png"} <= set(names)
    report = c.get(names["audit.md"]["url"]).text
    assert "## Fidelity" in report and "## Memorization" in report and pipeline["generator_id"] in report
    assert "**Warning:** the feature extractor was trained on" in report
    assert c.get(names["closest_pairs.png"]["url"]).content.startswith(b"\x89PNG")
    model = c.get(f"/v1/models/{pipeline['generator_id']}").json()
    assert model["metrics"]["audit"]["job_id"] == job["id"]
    assert model["metrics"]["audit"]["flagged_fraction"] == m["memorization"]["flagged_fraction"]
    assert model["metrics"]["step"] == 3  # the training metrics are kept beside the audit


def test_generate_with_a_label_filter(service, pipeline):
    """generate's filter_model_id keeps only candidates the classifier puts on the label, records
    what it kept and which classifier (sha256) it was; its params are checked at submission."""
    c = service.client
    clf = service.wait_job(c.post("/v1/jobs", json={"kind": "train_classifier", "params": {
        "dataset_id": pipeline["dataset_id"], "weights": "none", "mode": "finetune", "epochs": 1,
        "input_size": 32}}).json()["id"])
    assert clf["state"] == "succeeded", clf["error"]
    clf_id = clf["result"]["model_id"]
    base = {"label": 1, "n": 20, "model_id": pipeline["generator_id"], "size": 50}
    job = service.wait_job(c.post("/v1/jobs", json={"kind": "generate", "params": {
        **base, "filter_model_id": clf_id, "filter_min_prob": 0.5, "filter_max_draw": 20}}).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    f = job["result"]["label_filter"]
    assert f["model_id"] == clf_id and len(f["sha256"]) == 64 and f["min_prob"] == 0.5
    assert f["kept"] == 20 and f["candidates"] >= 20 and f["acceptance"] == round(20 / f["candidates"], 4)
    assert job["metrics"]["filter_acceptance"] == f["acceptance"] and job["result"]["n"] == 20
    dataset = c.get(f"/v1/datasets/{job['result']['dataset_id']}").json()
    assert dataset["n_patches"] == 20 and dataset["source"]["label_filter"]["kept"] == 20

    def refused(extra: dict, status: int, *needles: str) -> None:
        assert_problem(c.post("/v1/jobs", json={"kind": "generate", "params": {**base, **extra}}), status, *needles)

    refused({"filter_model_id": pipeline["generator_id"]}, 422, "filter_model_id", "not a classifier")
    refused({"filter_model_id": "nope"}, 422, "filter_model_id")
    refused({"filter_min_prob": 0.7}, 422, "need filter_model_id")
    refused({"filter_model_id": clf_id, "filter_min_prob": 1.0}, 422, "filter_min_prob")
    refused({"filter_model_id": clf_id, "filter_max_draw": 50}, 422, "filter_max_draw")
