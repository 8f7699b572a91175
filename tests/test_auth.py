"""API keys, ownership, sharing, admin-only actions, open mode and the audit log (issue 10,
parts 1 and 6), in process over ASGI on SQLite; the CLI's key commands and serve's refusal as
real subprocesses."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from app import auth
from app.db import session_scope
from app.download_links import make_link
from app.main import create_app
from app.migrate import upgrade_head
from app.settings import Settings
from app.storage import Storage
from app.tables import ApiKey, Artifact, Dataset, ModelVersion
from tests.helpers import png_bytes

ROOT = Path(__file__).resolve().parents[1]


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label in (0, 1):
            zf.writestr(f"100/{label}/100_idx5_x50_y{label}_class{label}.png", png_bytes(seed=label))
    return buf.getvalue()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(home=tmp_path, auth="keys")
        upgrade_head(self.settings.resolved_database_url)
        with session_scope(self.settings.resolved_database_url) as s:
            self.admin = auth.create_key(s, "operator", "admin")[1]
            self.alice = auth.create_key(s, "alice", "user")[1]
            self.bob = auth.create_key(s, "bob", "user")[1]
            self.revoked_key, self.revoked = auth.create_key(s, "gone", "user")
            auth.revoke_key(s, self.revoked_key.id)
            self.ids = {k.name: k.id for k in auth.list_keys(s)}

    def run(self, scenario, client_host: str = "127.0.0.1"):  # noqa: ANN001, ANN201
        async def main():  # noqa: ANN202
            transport = httpx.ASGITransport(app=create_app(self.settings), client=(client_host, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await scenario(client)
        return asyncio.run(main())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def test_keys_are_required_and_checked(world):
    async def scenario(c):  # noqa: ANN001, ANN202
        return {
            "none": await c.get("/v1/jobs"), "bad": await c.get("/v1/jobs", headers=bearer("hs_nope")),
            "basic": await c.get("/v1/jobs", headers={"Authorization": "Basic abc"}),
            "revoked": await c.get("/v1/jobs", headers=bearer(world.revoked)),
            "ok": await c.get("/v1/jobs", headers=bearer(world.alice)), "health": await c.get("/healthz"),
            "metrics_user": await c.get("/metrics", headers=bearer(world.alice)),
            "metrics_none": await c.get("/metrics"), "metrics_admin": await c.get("/metrics", headers=bearer(world.admin)),
            "docs": await c.get("/openapi.json"),
        }
    r = world.run(scenario)
    for name in ("none", "bad", "basic", "revoked", "metrics_none"):
        assert r[name].status_code == 401, name
        assert r[name].headers["www-authenticate"] == "Bearer"
        assert r[name].headers["content-type"].startswith("application/problem+json")
    assert "revoked" in r["revoked"].json()["detail"]
    assert r["ok"].status_code == 200 and r["health"].status_code == 200
    assert r["metrics_user"].status_code == 403 and r["metrics_admin"].status_code == 200
    assert r["docs"].status_code == 404  # off by default when keys are required
    with session_scope(world.settings.resolved_database_url) as s:
        keys = {k.name: k for k in auth.list_keys(s)}
    assert keys["alice"].last_used_at is not None and keys["bob"].last_used_at is None
    assert world.alice not in str([(k.secret_sha256, k.prefix) for k in keys.values()])  # only a hash is stored


def test_another_users_objects_are_404_and_shared_ones_read_only(world):
    url = world.settings.resolved_database_url
    alice_id = world.ids["alice"]
    with session_scope(url) as s:
        s.add(Dataset(id="d" * 32, name="alice's", kind="real", key="datasets/x", n_patches=2, patch_size=50,
                      n_patients=1, counts={"by_label": {"0": 1, "1": 1}, "by_patient": {"100": 2}},
                      source={"path": "/srv/lab/secret"}, created_by=alice_id))
        s.add(ModelVersion(id="m" * 32, kind="classifier", label=None, version=1, key="models/m.pt", config={},
                           metrics={}, created_by=alice_id))

    async def scenario(c):  # noqa: ANN001, ANN202
        a, b, admin = bearer(world.alice), bearer(world.bob), bearer(world.admin)
        up = await c.post("/v1/uploads", content=_zip(), headers={**a, "Content-Type": "application/zip"})
        upload_id = up.json()["upload_id"]
        job = await c.post("/v1/jobs", json={"kind": "ingest", "params": {"upload_id": upload_id}}, headers=a)
        job_id = job.json()["id"]
        with session_scope(url) as s:
            s.add(Artifact(id="a" * 32, job_id=job_id, name="x.json", media_type="application/json", key="artifacts/x"))
        out = {
            "job": job,
            "bob_uses_upload": await c.post("/v1/jobs", json={"kind": "ingest", "params": {"upload_id": upload_id}},
                                            headers=b),
            "bob_get_job": await c.get(f"/v1/jobs/{job_id}", headers=b),
            "bob_cancel_job": await c.post(f"/v1/jobs/{job_id}/cancel", headers=b),
            "bob_jobs": await c.get("/v1/jobs", headers=b), "alice_jobs": await c.get("/v1/jobs", headers=a),
            "admin_jobs": await c.get("/v1/jobs", headers=admin),
            "bob_artifact": await c.get(f"/v1/artifacts/{'a' * 32}", headers=b),
            "bob_dataset_before": await c.get(f"/v1/datasets/{'d' * 32}", headers=b),
            "bob_share": await c.post(f"/v1/datasets/{'d' * 32}/share", json={"shared": True}, headers=b),
            "alice_share": await c.post(f"/v1/datasets/{'d' * 32}/share", json={"shared": True}, headers=a),
            "bob_dataset_after": await c.get(f"/v1/datasets/{'d' * 32}", headers=b),
            "bob_unshare": await c.post(f"/v1/datasets/{'d' * 32}/share", json={"shared": False}, headers=b),
            "bob_train_on_it": await c.post("/v1/jobs", headers=b, json={
                "kind": "train_classifier", "params": {"dataset_id": "d" * 32, "weights": "none"}}),
            "bob_model": await c.get(f"/v1/models/{'m' * 32}", headers=b),
            "bob_promote": await c.post(f"/v1/models/{'m' * 32}/promote", headers=b),
            "alice_promote": await c.post(f"/v1/models/{'m' * 32}/promote", headers=a),
            "admin_promote": await c.post(f"/v1/models/{'m' * 32}/promote", headers=admin),
            "bob_model_promoted": await c.get(f"/v1/models/{'m' * 32}", headers=b),
            "bob_path_ingest": await c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": "/etc"}}, headers=b),
            "bob_weights_file": await c.post("/v1/jobs", headers=b, json={
                "kind": "train_classifier", "params": {"dataset_id": "d" * 32, "weights": "/etc/passwd"}}),
            "bob_audit": await c.get("/v1/audit", headers=b),
            "audit": await c.get("/v1/audit", headers=admin, params={"limit": 500}),
        }
        return out, job_id, upload_id
    r, job_id, upload_id = world.run(scenario)
    assert r["job"].status_code == 202
    for name in ("bob_uses_upload", "bob_get_job", "bob_cancel_job", "bob_artifact", "bob_dataset_before"):
        assert r[name].status_code == 404, (name, r[name].text)
    assert "upload_id" in r["bob_uses_upload"].json()["detail"]
    assert r["bob_jobs"].json()["count"] == 0 and r["alice_jobs"].json()["count"] == 1
    assert r["admin_jobs"].json()["count"] == 1
    assert r["bob_share"].status_code == 404  # not even readable yet
    assert r["alice_share"].status_code == 200 and r["alice_share"].json()["shared"] is True
    shared = r["bob_dataset_after"].json()
    assert r["bob_dataset_after"].status_code == 200
    assert "by_patient" not in shared["counts"] and shared["source"] == {}  # no patient ids, no server paths
    assert r["alice_share"].json()["counts"]["by_patient"] == {"100": 2}  # the creator sees everything
    assert r["bob_unshare"].status_code == 403  # shared is read-only
    assert r["bob_train_on_it"].status_code != 404  # a shared dataset may be used
    assert r["bob_model"].status_code == 404
    assert r["bob_promote"].status_code == 404 and r["alice_promote"].status_code == 403
    assert r["admin_promote"].status_code == 200 and r["bob_model_promoted"].status_code == 200
    assert r["bob_path_ingest"].status_code == 403 and r["bob_weights_file"].status_code == 403
    assert r["bob_audit"].status_code == 403
    events = r["audit"].json()["data"]
    by_action = {}
    for e in events:
        by_action.setdefault((e["action"], e["key_id"]), []).append(e)
    created = by_action[("POST /v1/jobs", world.ids["alice"])]
    assert any(e["status"] == 202 and e["object_type"] == "job" and e["object_id"] == job_id for e in created)
    uploads = by_action[("POST /v1/uploads", world.ids["alice"])]
    assert uploads[0]["object_id"] == upload_id and uploads[0]["status"] == 201
    refused = by_action[("POST /v1/models/{model_id}/promote", world.ids["alice"])]
    assert refused[0]["status"] == 403 and refused[0]["object_id"] == "m" * 32
    assert ("GET /v1/audit", world.ids["bob"]) in by_action  # refused reads are recorded too
    assert all("zip" not in str(e["detail"]) for e in events)  # no bodies


def test_open_mode_answers_only_loopback_clients(tmp_path):
    settings = Settings(home=tmp_path)
    upgrade_head(settings.resolved_database_url)

    async def scenario(c):  # noqa: ANN001, ANN202
        return await c.get("/v1/jobs")

    def run(host: str) -> httpx.Response:
        async def main():  # noqa: ANN202
            transport = httpx.ASGITransport(app=create_app(settings), client=(host, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await scenario(client)
        return asyncio.run(main())
    assert run("127.0.0.1").status_code == 200 and run("::1").status_code == 200
    remote = run("10.1.2.3")
    assert remote.status_code == 401 and "local clients" in remote.json()["detail"]


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "HISTOSYNTH_HOME": str(home), **env}
    full.pop("HISTOSYNTH_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


def test_cli_manages_keys_and_serve_refuses_an_open_public_bind(tmp_path):
    made = _cli(tmp_path, "keys", "create", "--name", "pipeline", "--role", "user")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    key_id = made.stdout.split()[1]
    assert secret.startswith("hs_") and len(secret) > 40
    listed = _cli(tmp_path, "keys", "list")
    assert key_id in listed.stdout and "active" in listed.stdout and secret not in listed.stdout
    bad = _cli(tmp_path, "keys", "create", "--name", "x", "--role", "root")
    assert bad.returncode == 2 and "role must be one of" in bad.stderr
    assert _cli(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert "revoked" in _cli(tmp_path, "keys", "list").stdout
    refused = _cli(tmp_path, "serve", "--host", "0.0.0.0", "--no-worker")
    assert refused.returncode == 2 and "without API keys" in refused.stderr and "Traceback" not in refused.stderr
    settings = Settings(home=tmp_path)
    with session_scope(settings.resolved_database_url) as s:
        from app.tables import AuditEvent
        actions = [e.action for e in s.query(AuditEvent).order_by(AuditEvent.id)]
    assert actions == ["keys.create", "keys.revoke"]


def test_ingest_roots_deny_by_default_with_keys_and_the_worker_checks_again(world, tmp_path):
    async def scenario(c):  # noqa: ANN001, ANN202
        return await c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(tmp_path)}},
                            headers=bearer(world.admin))
    refused = world.run(scenario)
    assert refused.status_code == 422 and "server-side ingest is off" in refused.json()["detail"]

    # A job queued while the roots allowed it, run after they changed: the worker refuses it.
    from app import jobs
    from app.tables import Job
    from worker.handlers import HANDLERS

    allowed, other = tmp_path / "allowed", tmp_path / "other"
    other.mkdir()
    settings = Settings(home=tmp_path / "w", ingest_roots=[allowed])
    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        job_id = jobs.create_job(s, "ingest", {"path": str(other)})[0].id
    from worker.context import run_job
    assert run_job(settings, job_id, HANDLERS) == "failed"
    with session_scope(settings.resolved_database_url) as s:
        assert "not under HISTOSYNTH_INGEST_ROOTS" in s.get(Job, job_id).error


def test_per_key_quotas_on_active_jobs_and_stored_bytes(tmp_path):
    w = World(tmp_path)
    w.settings = Settings(home=tmp_path, auth="keys", max_active_jobs_per_key=2, max_stored_bytes_per_key=30_000)
    body = _zip()

    async def scenario(c):  # noqa: ANN001, ANN202
        a, b = bearer(w.alice), bearer(w.bob)
        up = (await c.post("/v1/uploads", content=body, headers={**a, "Content-Type": "application/zip"})).json()
        jobs = [await c.post("/v1/jobs", json={"kind": "ingest", "params": {"upload_id": up["upload_id"], "name": str(i)}},
                             headers=a) for i in range(3)]
        bob_up = await c.post("/v1/uploads", content=body, headers={**b, "Content-Type": "application/zip"})
        big = await c.post("/v1/uploads", content=body * 5, headers={**a, "Content-Type": "application/zip"})
        return jobs, bob_up, big, up
    jobs, bob_up, big, up = w.run(scenario)
    assert [j.status_code for j in jobs] == [202, 202, 429]  # two queued (no worker runs here)
    assert jobs[2].headers["retry-after"] == "30" and "HISTOSYNTH_MAX_ACTIVE_JOBS_PER_KEY" in jobs[2].json()["detail"]
    assert bob_up.status_code == 201  # quotas are per key
    assert up["size_bytes"] + len(body) * 5 > 30_000
    assert big.status_code == 413 and "HISTOSYNTH_MAX_STORED_BYTES_PER_KEY" in big.json()["detail"]


def test_weights_files_only_from_the_weights_roots(world, tmp_path):
    url = world.settings.resolved_database_url
    with session_scope(url) as s:
        s.add(Dataset(id="e" * 32, name="two labels", kind="real", key="datasets/e", n_patches=2, patch_size=50,
                      counts={"by_label": {"0": 1, "1": 1}}, created_by=world.ids["operator"]))
    outside = tmp_path / "weights.pth"
    outside.write_bytes(b"x")

    def post(weights: str):  # noqa: ANN202
        async def scenario(c):  # noqa: ANN001, ANN202
            return await c.post("/v1/jobs", headers=bearer(world.admin), json={
                "kind": "train_classifier", "params": {"dataset_id": "e" * 32, "weights": weights}})
        return world.run(scenario)
    off = post("/etc/passwd")
    assert off.status_code == 422 and "HISTOSYNTH_WEIGHTS_ROOTS is empty" in off.json()["detail"]
    world.settings = Settings(home=world.settings.home, auth="keys", weights_roots=[tmp_path / "allowed"])
    (tmp_path / "allowed").mkdir()
    assert "not under HISTOSYNTH_WEIGHTS_ROOTS" in post(str(outside)).json()["detail"]
    missing = post(str(tmp_path / "allowed" / "nope.pth"))
    assert missing.status_code == 422 and missing.json()["title"] == "Weights file not found"


def test_weights_as_a_classifier_model_id(world, tmp_path):
    import torch

    from app.storage import Storage
    from models.classifier import build_resnet18, classifier_state, config_from
    from worker.classify import _config
    from worker.context import JobContext

    url = world.settings.resolved_database_url
    torch.manual_seed(3)
    start = build_resnet18("none", "finetune")
    buf = io.BytesIO()
    torch.save(classifier_state(start, config_from({"weights": "none", "input_size": 32})), buf)
    Storage.from_settings(world.settings).put_bytes("models/start.pt", buf.getvalue())
    with session_scope(url) as s:
        s.add(Dataset(id="e" * 32, name="two labels", kind="real", key="datasets/e", n_patches=2, patch_size=50,
                      counts={"by_label": {"0": 1, "1": 1}}, created_by=world.ids["operator"]))
        s.add(ModelVersion(id="c" * 32, kind="classifier", label=None, version=1, key="models/start.pt", config={},
                           metrics={}, created_by=world.ids["operator"]))

    def post(secret: str, weights: str):  # noqa: ANN202
        async def scenario(c):  # noqa: ANN001, ANN202
            return await c.post("/v1/jobs", headers=bearer(secret), json={
                "kind": "train_classifier", "params": {"dataset_id": "e" * 32, "weights": weights, "epochs": 1}})
        return world.run(scenario)
    assert post(world.admin, "nosuchmodel").json()["title"] == "Unknown classifier model"
    assert post(world.alice, "c" * 32).status_code == 404  # not hers and not shared
    job = post(world.admin, "c" * 32)
    assert job.status_code == 202, job.text
    # The worker trains from that model's file and records the model, not the file's path.
    ctx = JobContext(world.settings, job.json()["id"], "train_classifier", job.json()["params"], "w", 1)
    config, recorded = _config(ctx, ctx.p)
    assert recorded.weights == f"model:{'c' * 32}" and Path(config.weights).is_file()
    loaded = build_resnet18(config.weights, "finetune")
    assert torch.equal(loaded.conv1.weight, start.conv1.weight)


def test_download_links_open_one_artifact_without_the_key_until_they_expire(world):
    url = world.settings.resolved_database_url
    payload = os.urandom(3000)
    Storage.from_settings(world.settings).put_bytes("artifacts/link.bin", payload)
    mine, other = "e" * 32, "f" * 32

    async def scenario(c):  # noqa: ANN001, ANN202
        a = bearer(world.alice)
        up = await c.post("/v1/uploads", content=_zip(), headers={**a, "Content-Type": "application/zip"})
        job_id = (await c.post("/v1/jobs", json={"kind": "ingest", "params": {"upload_id": up.json()["upload_id"]}},
                               headers=a)).json()["id"]
        with session_scope(url) as s:
            for artifact_id in (mine, other):
                s.add(Artifact(id=artifact_id, job_id=job_id, name=f"{artifact_id[0]}.zip", media_type="application/zip",
                               key="artifacts/link.bin"))
        link = await c.post(f"/v1/artifacts/{mine}/link", headers=a)
        link_url = link.json()["url"]
        token = link_url.split("link=", 1)[1]
        tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
        with session_scope(url) as s:
            expired, _ = make_link(s.get(ApiKey, world.ids["alice"]), mine, 60, now=time.time() - 61)
        out = {
            "link": link, "get": await c.get(link_url),
            "other_artifact": await c.get(f"/v1/artifacts/{other}?link={token}"),
            "other_route": await c.get(f"/v1/jobs/{job_id}?link={token}"),
            "tampered": await c.get(f"/v1/artifacts/{mine}?link={tampered}"),
            "expired": await c.get(f"/v1/artifacts/{mine}?link={expired}"),
            "bob_link": await c.post(f"/v1/artifacts/{mine}/link", headers=bearer(world.bob)),
            "no_key": await c.post(f"/v1/artifacts/{mine}/link"),
        }
        with session_scope(url) as s:
            auth.revoke_key(s, world.ids["alice"])
        out["after_revoke"] = await c.get(link_url)
        return out

    out = world.run(scenario)
    assert out["link"].status_code == 200, out["link"].text
    body = out["link"].json()
    assert body["url"].startswith(f"/v1/artifacts/{mine}?link={world.ids['alice']}.") and world.alice not in body["url"]
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert 0 < (expires - datetime.now(timezone.utc)).total_seconds() <= 61
    assert out["get"].status_code == 200 and out["get"].content == payload  # no Authorization header sent
    for case in ("other_artifact", "other_route", "tampered", "expired", "no_key", "after_revoke"):
        assert out[case].status_code == 401, (case, out[case].text)
        assert out[case].headers["content-type"].startswith("application/problem+json"), case
    assert out["bob_link"].status_code == 404  # another user's artifact does not exist for bob
