"""No Docker engine runs here, so the compose file is checked by reading it."""

from __future__ import annotations

import yaml

from app.settings import Settings
from tests.conftest import ROOT


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_healthchecks():
    services = load()["services"]
    assert set(services) == {"postgres", "redis", "s3", "s3-init", "migrate", "api", "worker"}
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["command"] == ["histosynth", "migrate"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]  # never every interface of the host


def test_environment_matches_settings(monkeypatch):
    services = load()["services"]
    fields = {f"HISTOSYNTH_{name.upper()}" for name in Settings.model_fields}
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        unknown = {k for k in env if k.startswith("HISTOSYNTH_")} - fields
        assert not unknown, f"{name} sets variables Settings does not read: {unknown}"
        assert env["HISTOSYNTH_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["HISTOSYNTH_BROKER_URL"].startswith("redis://redis:6379")
        # Every value must parse as Settings parses it inside the container: from the environment.
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert not settings.is_embedded and str(settings.ingest_roots[0]) == "/datasets"
        assert settings.auth == "keys" and "127.0.0.1" in settings.trusted_hosts
    assert services["postgres"]["environment"]["POSTGRES_DB"] in services["api"]["environment"]["HISTOSYNTH_DATABASE_URL"]


def test_object_store_service():
    services = load()["services"]
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs")
    assert s3["command"][:2] == ["server", "-s3"] and "-master.telemetry=false" in s3["command"]
    assert "8333/healthz" in " ".join(s3["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in s3["volumes"])
    assert s3["volumes"][0].split(":")[0] in load()["volumes"]  # a named volume
    # The server's one identity is the key and secret api and worker sign with.
    assert s3["environment"]["AWS_ACCESS_KEY_ID"] == "${HISTOSYNTH_S3_KEY:-histosynth}"
    assert s3["environment"]["AWS_SECRET_ACCESS_KEY"] == "${HISTOSYNTH_S3_SECRET:-histosynth-secret}"

    init = services["s3-init"]
    assert init["image"] == s3["image"] and init["restart"] == "no"
    assert init["depends_on"]["s3"]["condition"] == "service_healthy"
    script = "\n".join(init["command"])
    assert "s3.bucket.create -name histosynth" in script and "already exists" in script

    for name in ("api", "worker"):
        deps, env = services[name]["depends_on"], services[name]["environment"]
        assert deps["s3"]["condition"] == "service_healthy", name
        assert deps["s3-init"]["condition"] == "service_completed_successfully", name
        assert env["HISTOSYNTH_STORAGE_URL"] == "s3://histosynth/store"
        assert env["HISTOSYNTH_S3_ENDPOINT_URL"] == "http://s3:8333"
        assert env["HISTOSYNTH_S3_KEY"] == s3["environment"]["AWS_ACCESS_KEY_ID"]
        assert env["HISTOSYNTH_S3_SECRET"] == s3["environment"]["AWS_SECRET_ACCESS_KEY"]
        assert env["HISTOSYNTH_S3_REGION"] == "us-east-1"
        # The merge keeps the shared variables too.
        assert env["HISTOSYNTH_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_dockerfile_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    for part in ("COPY app", "COPY worker", "COPY models", "COPY migrations", "pip install ."):
        assert part in text
