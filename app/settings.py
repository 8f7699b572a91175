"""One typed Settings object (pydantic-settings, env prefix HISTOSYNTH_).

With no environment at all the service is *embedded*: a SQLite file, Celery's filesystem
transport and the storage directory, all under ``$HISTOSYNTH_HOME`` (default ``./var``).
Setting ``HISTOSYNTH_DATABASE_URL=postgresql+psycopg://...`` and
``HISTOSYNTH_BROKER_URL=redis://...`` gives the production shape.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HISTOSYNTH_", extra="ignore")

    home: Path = Field(default=Path("var"), description="Root of everything embedded mode writes.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under home.")
    broker_url: str | None = Field(default=None, description="Celery broker; default filesystem under home.")
    storage_dir: Path | None = Field(default=None, description="Datasets, checkpoints, artifacts; default home/storage.")
    # An object store instead of the folder: s3://bucket/prefix (AWS S3, MinIO, SeaweedFS).
    storage_url: str | None = Field(default=None, description="s3://bucket/prefix; default the storage_dir folder.")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint; unset for AWS S3.")
    s3_key: str | None = Field(default=None, description="Access key id; unset: the AWS credential chain.")
    s3_secret: str | None = None
    s3_region: str | None = None
    # Local copies of stored datasets/models on a worker or API host using an object store.
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    api_url: str = Field(default="http://127.0.0.1:8000", description="Where the CLI finds the API.")
    # Install the shipped starter models into empty slots at `serve`/`migrate` (app.starter_models).
    starter_models: bool = True
    api_key: str | None = Field(default=None, description="The CLI's key (Authorization: Bearer), when keys are required.")

    # "open": no keys, loopback clients only (the embedded default); "keys": every /v1 request
    # needs an API key (app.auth). Compose runs with keys.
    auth: Literal["open", "keys"] = "open"
    # /docs and /openapi.json: None = on when open, off when keys are required.
    docs: bool | None = None
    # /metrics: None = public when open, an admin key when keys are required.
    metrics_public: bool | None = None
    # Host headers the API answers to (Starlette's TrustedHostMiddleware); ["*"]: any.
    trusted_hosts: list[str] = Field(default_factory=lambda: ["*"])

    # Leases: a running job whose worker stops heart-beating goes back to queued after this.
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    reaper_interval_seconds: float = 5.0
    # A running job writes its progress row at most once per this many seconds (and always at
    # its last step): a write per training step would be one database commit per step.
    progress_interval_seconds: float = Field(default=0.5, ge=0)
    # A queued job whose message may have been lost is re-sent after this many seconds.
    requeue_after_seconds: float = 30.0
    max_attempts: int = 3

    # Server-side ingest paths must sit under one of these roots (empty: anywhere in open mode,
    # nowhere when keys are required; app.job_kinds.path_refusal).
    ingest_roots: list[Path] = Field(default_factory=list)
    # Server-side classifier weights files (`weights` = a path) must sit under one of these.
    weights_roots: list[Path] = Field(default_factory=list)
    max_upload_bytes: int = 2 * 1024**3
    # Zip caps, counted on the bytes really decompressed (app/uploads.py), and upload expiry.
    zip_max_total_bytes: int = Field(default=8 * 1024**3, ge=1)
    zip_max_entries: int = Field(default=500_000, ge=1)
    zip_max_entry_bytes: int = Field(default=1024**2, ge=1)
    zip_max_ratio: float = Field(default=100.0, gt=0)
    upload_ttl_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    # How long a download link (app.download_links) stays valid: the browser uses it at once.
    download_link_seconds: int = Field(default=60, ge=1, le=3600)
    # Caps for generation and predictions (bad input gets a 4xx, never a 500).
    max_generate_n: int = 100_000
    max_prediction_files: int = 64
    max_prediction_bytes: int = 32 * 1024**2
    # Sized for patches (50x50 in the public dataset): a 1024x1024 tile is generous. Checked
    # from the image header, before anything is decoded, per image and summed per request.
    max_image_pixels: int = Field(default=1024 * 1024, ge=1)
    max_request_pixels: int = Field(default=16 * 1024 * 1024, ge=1)
    # Larger images are shrunk (in PIL, antialiased, on uint8) to this long side right after
    # decoding, before any float copy: the classifier sees input_size (224) pixels anyway.
    predict_max_side: int = Field(default=512, ge=32)
    # Decodes running at once in one API process (threads, off the event loop).
    predict_decode_threads: int = Field(default=2, ge=1, le=64)
    # Images admitted (decoding, queued or in a forward pass) at once per API process; a
    # request beyond it gets 503 with Retry-After instead of growing the queue without bound.
    predict_max_inflight_images: int = Field(default=256, ge=1)
    # Per client (its API key; its address before keys exist): token buckets, 429 beyond them.
    rate_prediction_images_per_minute: float = Field(default=6000.0, gt=0)
    rate_jobs_per_minute: float = Field(default=60.0, gt=0)
    # Per key, when keys are required (app.quotas): jobs queued or running, bytes stored.
    max_active_jobs_per_key: int = Field(default=20, ge=1)
    max_stored_bytes_per_key: int = Field(default=200 * 1024**3, ge=0)
    # Serving the promoted classifier: "fp32" (default, the numbers evaluation reports) or
    # "bf16" (autocast; much faster on AMX CPUs and GPUs, probabilities move by < 5e-3).
    predict_precision: Literal["fp32", "bf16"] = "fp32"
    # Where the API process runs the classifier: "auto" takes a GPU when the process sees one.
    predict_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Most images one forward pass takes; requests that arrive while one runs form the next.
    predict_max_batch: int = Field(default=32, ge=1, le=1024)

    # The audit's "inception" features: torchvision's Inception-v3 weights file (nothing is
    # downloaded); unset: looked for in torch.hub's checkpoints folder.
    inception_weights: Path | None = None
    log_level: str = "INFO"

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'histosynth.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.resolved_home / "storage").expanduser().resolve()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.resolved_storage_dir)

    @property
    def uses_object_store(self) -> bool:
        return "://" in self.resolved_storage_url and not self.resolved_storage_url.startswith("file://")

    def s3_options(self) -> dict:
        """s3fs options from the settings (None values left to boto's defaults and env)."""
        client = {k: v for k, v in (("endpoint_url", self.s3_endpoint_url), ("region_name", self.s3_region)) if v}
        opts: dict = {"client_kwargs": client} if client else {}
        if self.s3_key:
            opts.update(key=self.s3_key, secret=self.s3_secret)
        return opts

    @property
    def broker_folder(self) -> Path:
        return self.resolved_home / "broker"

    @property
    def is_embedded(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem")

    def ensure_dirs(self) -> None:
        """Create the folders embedded mode writes to (idempotent)."""
        if not self.uses_object_store:
            self.resolved_storage_dir.mkdir(parents=True, exist_ok=True)
        if self.is_embedded:
            (self.broker_folder / "queue").mkdir(parents=True, exist_ok=True)
            (self.broker_folder / "processed").mkdir(parents=True, exist_ok=True)
            (self.broker_folder / "control").mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
