"""No Docker engine runs here, so the compose file is checked by reading it."""

from __future__ import annotations

import yaml

from app.settings import Settings
from tests.conftest import ROOT


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_healthchecks():
    services = load()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
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
    assert services["api"]["ports"] == ["8000:8000"]


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
    assert services["postgres"]["environment"]["POSTGRES_DB"] in services["api"]["environment"]["HISTOSYNTH_DATABASE_URL"]


def test_dockerfile_installs_the_project():
    text = (ROOT / "Dockerfile").read_text()
    for part in ("COPY app", "COPY worker", "COPY models", "COPY migrations", "pip install ."):
        assert part in text
