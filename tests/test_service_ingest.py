"""The service end to end in its production shape: real HTTP to a uvicorn process, Postgres,
Redis and real `celery worker` processes, ingesting the shared IDC data."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, copy_patches
from tests.helpers import png_bytes, write_patch, zip_bytes

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"


def assert_problem(resp, status: int, *title_words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"]
    text = (body["title"] + " " + body.get("detail", "")).lower()
    for word in title_words:
        assert word.lower() in text, body
    assert "Traceback" not in resp.text
    return body


def test_ingest_shared_data_end_to_end(service, shared_data):
    resp = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(shared_data)}})
    assert resp.status_code == 202, resp.text
    location = resp.headers["location"]
    assert location == f"/v1/jobs/{resp.json()['id']}"
    seen_progress = []
    while True:
        job = service.client.get(location).json()
        seen_progress.append((job["state"], job["progress"]["current"], job["progress"]["total"]))
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert job["state"] == "succeeded", job["error"]
    assert any(s == "running" and 0 < cur < tot for s, cur, tot in seen_progress), seen_progress
    result = job["result"]
    assert result["n_patches"] == 18933
    assert result["by_label"] == {"0": 11337, "1": 7596}
    assert result["n_patients"] == 103
    assert result["n_edge_patches"] > 0 and result["n_bad_files"] == 0
    dataset = service.client.get(f"/v1/datasets/{result['dataset_id']}").json()
    assert dataset["n_patches"] == 18933 and dataset["n_patients"] == 103
    assert dataset["counts"]["by_patient"]["10255"] == {"0": 181, "1": 91}
    assert sum(sum(v.values()) for v in dataset["counts"]["by_patient"].values()) == 18933
    assert dataset["n_edge_patches"] == result["n_edge_patches"]
    (artifact,) = job["artifacts"]
    fetched = service.client.get(artifact["url"])
    assert fetched.status_code == 200 and fetched.json() == []
    listed = service.client.get("/v1/datasets").json()
    assert listed["count"] >= 1 and any(d["id"] == dataset["id"] for d in listed["data"])


def test_idempotency_key_over_http(service, tmp_path):
    write_patch(tmp_path, "300", 0, 1, 1)
    body = {"kind": "ingest", "params": {"path": str(tmp_path)}}
    first = service.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-key-1"})
    again = service.client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "same-key-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    other = dict(body, params={"path": str(tmp_path), "name": "other"})
    assert_problem(service.client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "same-key-1"}),
                   422, "idempotency")
    assert service.wait_job(first.json()["id"])["state"] == "succeeded"


def test_bad_requests_are_problems(service, tmp_path):
    c = service.client
    assert_problem(c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": "/no/such/folder"}}), 422, "does not exist")
    assert_problem(c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": "relative/x"}}), 422, "absolute")
    assert_problem(c.post("/v1/jobs", json={"kind": "paint", "params": {}}), 422, "unknown job kind", "ingest")
    assert_problem(c.post("/v1/jobs", json={"kind": "ingest", "params": {}}), 422, "exactly one")
    assert_problem(c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": "/", "color": 1}}), 422, "color")
    assert_problem(c.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_problem(c.post("/v1/jobs", json=[1, 2]), 422)
    assert_problem(c.get("/v1/jobs/doesnotexist"), 404, "not found")
    assert_problem(c.post("/v1/jobs/doesnotexist/cancel"), 404)
    assert_problem(c.get("/v1/jobs", params={"state": "exploded"}), 422)
    assert_problem(c.get("/v1/jobs", params={"limit": 0}), 422)
    assert_problem(c.get("/v1/artifacts/nope"), 404)
    assert_problem(c.get("/v1/datasets/nope"), 404)
    assert_problem(c.get("/v1/nothing-here"), 404)
    # Uploads: path traversal, symlinks, not a zip, empty.
    evil = zip_bytes({"ok/100/0/100_idx5_x1_y1_class0.png": png_bytes(), "../../evil.png": b"x"})
    assert_problem(c.post("/v1/uploads", content=evil, headers={"content-type": "application/zip"}), 422, "outside")
    link = zip_bytes({}, symlinks={"100/0/link.png": "/etc/passwd"})
    assert_problem(c.post("/v1/uploads", content=link, headers={"content-type": "application/zip"}), 422, "symbolic")
    assert_problem(c.post("/v1/uploads", content=b"hello", headers={"content-type": "application/zip"}), 422, "zip")
    assert_problem(c.post("/v1/uploads", content=b""), 422, "empty")
    # A zip file on the server with a traversal entry is refused before anything is queued.
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(evil)
    assert_problem(c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(bad_zip)}}), 422, "zip refused")
    assert not list(service.home.rglob("evil.png"))


def test_upload_zip_then_ingest_and_corrupt_files_are_listed(service, tmp_path):
    entries = {
        "IDC_regular_ps50_idx5/100/0/100_idx5_x1_y1_class0.png": png_bytes(seed=1),
        "IDC_regular_ps50_idx5/100/1/100_idx5_x51_y1_class1.png": png_bytes(seed=2),
        "IDC_regular_ps50_idx5/100/1/100_idx5_x99_y1_class1.png": b"\x89PNG\r\n\x1a\ngarbage",
        "IDC_regular_ps50_idx5/100/1/readme.png": png_bytes(),
    }
    up = service.client.post("/v1/uploads", content=zip_bytes(entries), headers={"content-type": "application/zip"})
    assert up.status_code == 201, up.text
    resp = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"upload_id": up.json()["upload_id"]}})
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["result"]["n_patches"] == 2 and job["result"]["n_bad_files"] == 2
    files = {b["file"]: b["reason"] for b in job["result"]["bad_files"]}
    assert files["100/1/100_idx5_x99_y1_class1.png"].startswith("unreadable")
    assert "name is not" in files["100/1/readme.png"]


def test_only_bad_files_fails_the_job_with_a_reason(service, tmp_path):
    write_patch(tmp_path, "100", 0, 1, 1, data=b"not a png at all")
    resp = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(tmp_path)}})
    job = service.wait_job(resp.json()["id"])
    assert job["state"] == "failed" and "no readable patches" in job["error"]


def test_cli_lists_jobs(service):
    env = dict(service.env, HISTOSYNTH_API_URL=service.url)
    out = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "list", "--kind", "ingest"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ingest" in out.stdout and "succeeded" in out.stdout
    down = dict(env, HISTOSYNTH_API_URL="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "list"], cwd=ROOT, env=down,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot reach the API" in out.stderr and "Traceback" not in out.stderr


def _wait_running(service, job_id: str, min_progress: int = 1) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = service.client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]["current"] >= min_progress:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(job)


def test_cancel_queued_and_running(service, shared_data, tmp_path):
    slice_root = copy_patches(shared_data, tmp_path / "slice", ["10255", "10273", "10275"], per_label=400)
    first = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(shared_data)}}).json()
    _wait_running(service, first["id"])
    # The one worker is busy, so this one stays queued until we cancel it.
    second = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(slice_root)}}).json()
    cancelled = service.client.post(f"/v1/jobs/{second['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    running = service.client.post(f"/v1/jobs/{first['id']}/cancel").json()
    assert running["state"] == "running" and running["cancel_requested"] is True
    assert service.wait_job(first["id"], timeout=60)["state"] == "cancelled"
    assert service.wait_job(second["id"], timeout=5)["state"] == "cancelled"
    assert_problem(service.client.post(f"/v1/jobs/{first['id']}/cancel"), 409, "already cancelled")
    datasets = service.client.get("/v1/datasets", params={"limit": 500}).json()["data"]
    assert not any(d["job_id"] in (first["id"], second["id"]) for d in datasets)


def test_sigkill_worker_requeues_and_finishes_once(service, shared_data):
    resp = service.client.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(shared_data)}})
    job_id = resp.json()["id"]
    _wait_running(service, job_id, min_progress=2000)
    (worker,) = [w for w in service.workers if w.poll() is None]
    service.kill_worker(worker)
    stuck = service.client.get(f"/v1/jobs/{job_id}").json()
    assert stuck["state"] == "running" and stuck["attempts"] == 1  # nobody knows yet
    service.start_worker()
    job = service.wait_job(job_id, timeout=240)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    assert job["result"]["n_patches"] == 18933
    datasets = service.client.get("/v1/datasets", params={"limit": 500}).json()["data"]
    mine = [d for d in datasets if d["job_id"] == job_id]
    assert len(mine) == 1 and mine[0]["n_patches"] == 18933
