"""The experiment job over REST: the paper's pipeline from one POST, its children, cancel
cascade, and resume after the worker is killed mid-experiment."""

from __future__ import annotations

import pytest

from tests.conftest import copy_patches, past_a_checkpoint
from tests.test_service_ingest import assert_problem

pytestmark = pytest.mark.integration
TINY_GAN = {"width": 1 / 32, "latent_dim": 32, "batch_size": 8, "fixed_samples": 4}
PATIENTS = ["10255", "10273", "10275", "10290", "10292", "10299", "10301", "10302", "10305", "10308"]
CHILD_KINDS = ["train_classifier", "train_gan", "generate", "generate", "evaluate", "audit", "audit"]
FILTERED_KINDS = ["train_classifier", "train_classifier", "train_gan", "generate", "generate", "evaluate", "audit", "audit"]
SELECT = {"select_every": 10, "select_samples": 60, "select_size": 64}  # score every 10 steps, 60 samples at 64 px


@pytest.fixture(scope="module")
def real_dataset(service, shared_data, tmp_path_factory):
    root = copy_patches(shared_data, tmp_path_factory.mktemp("exp_slice"), PATIENTS, per_label=24)
    job = service.wait_job(service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(root)}}).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return job["result"]["dataset_id"]


def experiment(dataset_id: str, steps: int = 3) -> dict:
    return {"dataset_id": dataset_id, "fraction": 0.0015, "holdout_share": 0.2, "steps": steps,
            "overrides": TINY_GAN, "weights": "none", "mode": "finetune", "epochs": 1, "input_size": 32,
            "domain_epochs": 1, "audit_max_samples": 200, "augment_fraction": 0.3}


def child(job: dict, kind: str) -> dict:
    (found,) = [k for k in job["children"] if k["kind"] == kind]
    return found


def test_experiment_runs_the_pipeline_as_child_jobs(service, real_dataset):
    c = service.client
    resp = c.post("/v1/experiments", json={**experiment(real_dataset, steps=20), **SELECT, "label_filter": True,
                                           # 0: every candidate kept (a tiny GAN's noise is all one label to
                                           # any classifier), so the filter's path runs whatever it scores
                                           "label_filter_min_prob": 0.0})
    assert resp.status_code == 202, resp.text
    job = service.wait_job(resp.json()["id"], timeout=600)
    assert job["state"] == "succeeded", job["error"]
    kids = job["children"]
    assert [k["kind"] for k in kids] == FILTERED_KINDS and all(k["state"] == "succeeded" for k in kids)
    listed = c.get("/v1/jobs", params={"parent_id": job["id"]}).json()
    assert listed["count"] == len(FILTERED_KINDS) and all(j["parent_id"] == job["id"] for j in listed["data"])
    parts = job["result"]["parts"]
    assert set(parts) == {"gan", "classify", "holdout"}
    patients = [set(c.get(f"/v1/datasets/{p['dataset_id']}").json()["source"]["patients"]) for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for part in parts.values():
        assert part["by_label"].get("0", 0) > 0 and part["by_label"].get("1", 0) > 0
    assert set(job["result"]["table"]) >= {"TRTR", "TSTS", "TRTS", "TSTR", "AUG_REAL", "AUG_MIX", "GRTR"}
    evaluate = c.get(f"/v1/jobs/{job['result']['children']['evaluate']}").json()
    assert evaluate["params"]["reference_dataset_id"] == parts["gan"]["dataset_id"]  # GRTR: the GAN part
    assert set(job["result"]["audit"]) == {"0", "1"}
    audit_job = c.get(f"/v1/jobs/{job['result']['children']['audit_1']}").json()
    overlap = audit_job["metrics"]["extractor_overlap"]  # its classifier saw neither audit set
    assert overlap["known"] and overlap["train_patients"] == overlap["holdout_patients"] == 0
    gan_job = c.get(f"/v1/jobs/{job['result']['children']['train_gan']}").json()
    assert gan_job["params"]["dataset_id"] == parts["gan"]["dataset_id"]
    # each generator is its best snapshot, scored in the experiment's own domain classifier's features
    assert gan_job["params"]["select_classifier_model_id"] == job["result"]["domain_classifier"]
    for label in ("0", "1"):
        chosen = gan_job["metrics"][f"label{label}"]["selection"]
        assert set(chosen["fid_train"]) == {"10", "20"} and chosen["samples"] == 60 and chosen["size"] == 64
        assert chosen["selected_fid_train"] == min(chosen["fid_train"].values())
        assert chosen["fid_train"][str(chosen["selected_step"])] == chosen["selected_fid_train"]
        assert job["result"]["selected_steps"][label] == chosen["selected_step"]
        model = c.get(f"/v1/models/{job['result']['generators'][label]}").json()
        assert model["config"]["selected_step"] == chosen["selected_step"]
        assert chosen["features"]["model_id"] == job["result"]["domain_classifier"]
    # the label filter: a classifier trained on the GAN part only, used by both generate steps
    filter_job = c.get(f"/v1/jobs/{job['result']['children']['filter_classifier']}").json()
    assert filter_job["params"]["dataset_id"] == parts["gan"]["dataset_id"]
    for label in ("0", "1"):
        gen = c.get(f"/v1/jobs/{job['result']['children'][f'generate_{label}']}").json()
        assert gen["params"]["filter_model_id"] == filter_job["result"]["model_id"]
        kept = job["result"]["label_filter"][label]
        assert kept == gen["result"]["label_filter"] and kept["kept"] == gen["result"]["n"] <= kept["candidates"]
        assert kept["min_prob"] == 0.0 and 0.0 <= kept["agreement"] <= 1.0
    names = {a["name"]: a for a in job["artifacts"]}
    report = c.get(names["report.md"]["url"]).text
    for section in ("Patients, split three ways", "beside the paper's Table 3", "Does synthetic data help?",
                    "## Audit", "## Steps (child jobs)", "TSTR", "best snapshot, scored every 10 steps",
                    "on samples drawn at 64 px", "label-filtered", filter_job["result"]["model_id"],
                    "GRTR, what TSTR could reach"):
        assert section in report
    assert c.get(names["report.json"]["url"]).json()["generators"] == job["result"]["generators"]


def test_experiment_params_are_checked(service, real_dataset):
    c = service.client
    assert_problem(c.post("/v1/experiments", json={**experiment(real_dataset), "dataset_id": "nope"}), 422)
    assert_problem(c.post("/v1/experiments", json={**experiment(real_dataset), "fraction": 0}), 422)
    assert_problem(c.post("/v1/experiments", json={**experiment(real_dataset), "overrides": {"colour": 1}}), 422, "colour")
    assert_problem(c.post("/v1/experiments", json={**experiment(real_dataset), "weights": "/no/file.pth"}), 422)
    assert_problem(c.post("/v1/experiments", json={**experiment(real_dataset), "label_filter": True,
                                                   "label_filter_min_prob": 1.0}), 422, "label_filter_min_prob")


def test_cancelling_the_experiment_cancels_its_children(service, real_dataset):
    c = service.client
    job_id = c.post("/v1/experiments", json=experiment(real_dataset, steps=3000)).json()["id"]
    service.wait_until(job_id, lambda j: any(k["kind"] == "train_gan" and k["state"] == "running" for k in j["children"]),
                       poll=0.2, while_active=True)
    assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = service.wait_job(job_id, timeout=120)
    assert job["state"] == "cancelled"
    # the domain classifier had finished; the generators' training was cancelled; no later step started
    assert [(k["kind"], k["state"]) for k in job["children"]] == [("train_classifier", "succeeded"),
                                                                   ("train_gan", "cancelled")]


@pytest.mark.worker_kill
def test_killed_worker_resumes_the_experiment_at_the_running_child(service, real_dataset):
    c = service.client
    # 60 steps checkpoint every 15 (worker/experiment.py): the kill lands mid-way through label 0
    job_id = c.post("/v1/experiments", json={**experiment(real_dataset, steps=60), **SELECT}).json()["id"]

    def gan_checkpointed(j):
        gans = [k for k in j["children"] if k["kind"] == "train_gan"]
        return bool(gans) and past_a_checkpoint(c.get(gans[0]["url"]).json(), by=1)

    service.wait_until(job_id, gan_checkpointed, poll=0.2, while_active=True)
    (worker,) = [w for w in service.workers if w.poll() is None]
    service.kill_worker(worker)
    service.start_worker()
    job = service.wait_job(job_id, timeout=900)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert [k["kind"] for k in job["children"]] == CHILD_KINDS  # the children were found again, not repeated
    gan = c.get(child(job, "train_gan")["url"]).json()
    assert gan["attempts"] == 2
    assert gan["metrics"]["label0"]["resumed_from_step"] > 0  # label 0 trains first: it was mid-way at the kill
    # the scores made before the kill came back with the checkpoint: every step scored once, none lost
    for label in ("label0", "label1"):
        chosen = gan["metrics"][label]["selection"]
        assert sorted(map(int, chosen["fid_train"])) == [10, 20, 30, 40, 50, 60]
        assert chosen["selected_fid_train"] == min(chosen["fid_train"].values())
    datasets = [d for d in c.get("/v1/datasets", params={"limit": 500}).json()["data"] if d["job_id"] == job_id]
    assert len(datasets) == 3  # the three parts, written once
