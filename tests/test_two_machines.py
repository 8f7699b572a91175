"""Two worker machines and an API machine, simulated honestly: three HISTOSYNTH_HOMEs and no
shared folder. Only Postgres, Redis and the S3 object store are in common, as in a cloud."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import pytest

from app.migrate import upgrade_head
from tests.conftest import MID_JOB_GAN, Service, fresh_database, service_env

pytestmark = pytest.mark.integration


def _zip_of(shared_data: Path, patients: list[str], per_label: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for patient in patients:
            for label in ("0", "1"):
                for f in sorted((shared_data / patient / label).glob("*.png"))[:per_label]:
                    zf.write(f, f"{patient}/{label}/{f.name}")
    return buf.getvalue()


def _files_under(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def test_worker_b_resumes_what_worker_a_was_killed_in_and_the_api_serves_it(
        tmp_path_factory, s3_endpoint, redis_url, shared_data):
    prefix = f"two-machines-{uuid.uuid4().hex[:8]}"
    homes = {name: tmp_path_factory.mktemp(name) for name in ("machine_a", "machine_b", "machine_api")}
    with fresh_database() as db:
        upgrade_head(db)
        envs = {name: service_env(home, db, redis_url, **s3_endpoint.storage_env(prefix))
                for name, home in homes.items()}
        api = Service(envs["machine_api"], homes["machine_api"])
        a = Service(envs["machine_a"], homes["machine_a"])
        b = Service(envs["machine_b"], homes["machine_b"])
        api.start_api()
        try:
            worker_a = a.start_worker()
            c = api.client
            upload = c.post("/v1/uploads", content=_zip_of(shared_data, ["10255", "10273", "10275"], 30),
                            headers={"Content-Type": "application/zip"})
            assert upload.status_code == 201, upload.text
            ingest = api.wait_job(c.post("/v1/jobs", json={"kind": "ingest", "params": {
                "upload_id": upload.json()["upload_id"]}}).json()["id"])
            assert ingest["state"] == "succeeded", ingest["error"]
            dataset_id = ingest["result"]["dataset_id"]

            body = {"kind": "train_gan", "params": {"dataset_id": dataset_id, "label": 1, "steps": 80,
                                                    "checkpoint_every": 10, "sample_every": 40, "overrides": MID_JOB_GAN}}
            job_id = c.post("/v1/jobs", json=body).json()["id"]
            api.wait_past_a_checkpoint(job_id, timeout=240)
            a.kill_worker(worker_a)  # machine A is gone, and with it everything on its disk
            last_ckpt = max(ck["step"] for ck in c.get(f"/v1/jobs/{job_id}").json()["checkpoints"])

            b.start_worker()
            job = api.wait_job(job_id, timeout=400)
            assert job["state"] == "succeeded", job["error"]
            metrics = job["metrics"]["label1"]
            assert metrics["step"] == 80 and metrics["resumed_from_step"] >= last_ckpt > 0

            # The API machine serves what B wrote, straight from the object store.
            grid = next(x for x in job["artifacts"] if x["name"] == "samples/label1/step0000080.png")
            png = c.get(grid["url"])
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"

            cls = api.wait_job(c.post("/v1/jobs", json={"kind": "train_classifier", "params": {
                "dataset_id": dataset_id, "weights": "none", "mode": "finetune", "epochs": 1,
                "input_size": 32}}).json()["id"])
            assert cls["state"] == "succeeded", cls["error"]
            model_id = cls["result"]["model_id"]
            assert c.post(f"/v1/models/{model_id}/promote").json()["promoted"] is True
            patch = sorted((shared_data / "10255" / "1").glob("*.png"))[0]
            pred = c.post("/v1/predictions", files=[("files", (patch.name, patch.read_bytes(), "image/png"))])
            assert pred.status_code == 200, pred.text
            assert pred.json()["model"]["id"] == model_id
            assert 0.0 <= pred.json()["predictions"][0]["probability_idc"] <= 1.0

            gen = api.wait_job(c.post("/v1/generations", json={"label": "IDC+", "n": 6, "size": 50}).json()["id"])
            assert gen["state"] == "succeeded", gen["error"]
            with zipfile.ZipFile(io.BytesIO(c.get(f"/v1/artifacts/{gen['result']['zip_artifact_id']}").content)) as zf:
                assert len(zf.namelist()) == 6
        finally:
            for svc in (a, b, api):
                svc.stop()
        # Nothing durable was written to a machine's own storage folder: keys live in the store.
        for home in homes.values():
            assert not (home / "storage").exists() or not _files_under(home / "storage")
