"""Typed settings, read from ``XAAS_*`` environment variables (and an optional ``.env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODELS_FILE = PACKAGE_DIR / "models.yaml"


class Settings(BaseSettings):
    """Service settings. Every field can be set as ``XAAS_<FIELD>`` (e.g. ``XAAS_PORT=9000``)."""

    model_config = SettingsConfigDict(env_prefix="XAAS_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    models: Path = Field(DEFAULT_MODELS_FILE, description="Path of the model registry (models.yaml).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device policy for models whose entry says `device: auto`: auto → cuda when available."
    )

    # DICOMweb (PACS) for /dicomweb/*: off unless a URL is given.
    dicomweb_url: str | None = Field(None, description="DICOMweb root of the PACS (e.g. http://pacs/dicom-web).")
    dicomweb_auth_file: Path | None = Field(None, description="File holding one 'Header-Name: value' line sent to "
                                            "the PACS (e.g. 'Authorization: Bearer ...').")
    dicomweb_timeout: float = Field(10.0, gt=0, le=600,
                                    description="Seconds each PACS request (fetch, store) may take in all.")

    # Input limits: checked before any expensive work.
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest accepted request body (bytes).")
    body_timeout: float = Field(30.0, gt=0, le=3600,
                                description="Seconds a client may take to send its request body (408 past it).")
    max_pixels: int = Field(40_000_000, ge=1, le=89_000_000,
                            description="Largest decoded image (width × height): decompression bombs. "
                                        "At most PIL's own 89 M guard.")
    max_frames: int = Field(1000, ge=1, description="Most frames a DICOM/GIF/TIFF may declare.")
    max_voxels: int = Field(160_000_000, ge=1, le=1_000_000_000,
                            description="Most voxels a volume (DICOM series, NIfTI) may hold; checked from headers.")
    max_targets: int = Field(20, ge=1, description="Most targets (explicit or top_k) in one request.")

    # Batching defaults (each model may override them in models.yaml).
    max_batch_size: int = Field(16, ge=1, le=1024, description="Most jobs run in one model pass.")
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000,
                                      description="How long the first job of a batch waits for company.")
    max_queue: int = Field(256, ge=1, description="Jobs waiting per model before new ones get 429.")
    request_timeout: float = Field(30.0, gt=0, description="Deadline of one request in seconds (504 past it).")
    shutdown_grace: float = Field(20.0, ge=0, description="Seconds to finish queued work on shutdown.")

    # Security: optional API keys (Authorization: Bearer <key> or X-API-Key), CORS for browser front-ends.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="Accepted API keys, comma-separated; empty = no auth.")
    api_keys_file: Path | None = Field(None, description="File with one API key per line (added to api_keys).")
    metrics_public: bool = Field(True,
                                 description="Serve /metrics without an API key (for a scraper on a private network).")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="Origins allowed by CORS, comma-separated.")

    # Result cache: computed explanation maps (not PNGs), LRU, bounded by bytes (see service/cache.py).
    cache_bytes: int = Field(256 * 1024 * 1024, ge=0, description="Bytes of explanation maps kept for repeated "
                             "requests (LRU); 0 turns the result cache off.")

    torch_threads: int | None = Field(None, ge=1, le=256,
                                      description="Intra-op threads of torch (default: torch's choice).")
    workers_threads: int = Field(4, ge=1, le=64, description="Thread pool for decoding and rendering.")
    log_level: str = Field("info", description="Logging level.")

    # Asynchronous jobs (slow explanations with Prefer: respond-async, class impressions), run on the model's worker in
    # slices between request batches.
    max_jobs: int = Field(8, ge=1, le=1024, description="Most unfinished jobs at once (more → 429).")
    job_ttl: float = Field(600.0, gt=0, description="Seconds a finished job's result is kept (then 404).")
    job_max_steps: int = Field(1000, ge=1, le=100_000,
                               description="Largest 'steps' a class-impression job may ask for.")
    job_slice_steps: int = Field(10, ge=1, le=1000, description="Most steps of a job per worker slice.")
    job_slice_ms: float = Field(250.0, gt=0, le=60_000, description="Most milliseconds of a job per worker slice.")
    job_step_ms: float = Field(100.0, gt=0, le=60_000,
                               description="Target duration of one step of a chunked explanation job: its chunk of "
                                           "forwards is sized from the model's measured forward time, so live "
                                           "requests wait for at most about this long.")
    job_max_seconds: float = Field(3600.0, gt=0, description="A job running longer fails.")
    # POST /audit: a zip of labels.json + images, bounded before anything is decoded (see service/handlers/audit.py).
    audit_max_images: int = Field(500, ge=1, le=100_000, description="Most images one POST /audit may audit.")
    audit_max_members: int = Field(2000, ge=2, le=100_000, description="Most files in a POST /audit zip.")
    audit_max_inflated_bytes: int = Field(256 * 1024 * 1024, ge=1024,
                                          description="Most bytes a POST /audit zip may inflate to (all members).")
    # Where job records live: in this process (one server), or shared by every replica — Redis for the compose `scale`
    # profile (any replica behind nginx answers a poll); `xaas serve --ray` always shares them through a Ray actor.
    job_store: Literal["memory", "redis"] = Field("memory", description="Job records: memory (this process) or "
                                                  "redis (shared by replicas; needs redis_url).")
    redis_url: str | None = Field(None, description="Redis for job_store=redis (redis://host:6379/0, unix:///path).")
    job_lease: float = Field(15.0, gt=0, le=3600,
                             description="Seconds without a heartbeat after which a replica counts as dead and its "
                                         "unfinished jobs fail (shared job stores).")

    # Ray Serve (`xaas serve --ray`, service/ray_app.py): the deployment's limits, derived from the ones above unless
    # set. Ignored by the single-process server.
    ray_max_ongoing_requests: int | None = Field(
        None, ge=1, description="Requests one replica works on at once (Serve's max_ongoing_requests). Default: twice "
                                "the largest max_batch_size, at most the smallest model queue (max_queue).")
    ray_max_queued_requests: int | None = Field(
        None, ge=0, description="Requests each Serve proxy holds for busy replicas before answering 429 "
                                "(Serve's max_queued_requests). Default: max_ongoing_requests × replicas.")
    ray_retry_after: float = Field(2.0, ge=0, le=3600,
                                   description="Retry-After seconds of Serve's 429 when its queue is full.")
    ray_cpus_per_replica: float = Field(1.0, ge=0, le=512, description="CPUs Ray reserves for each replica.")

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                from .errors import ConfigError

                raise ConfigError(f"XAAS_API_KEYS_FILE: cannot read {self.api_keys_file}: {exc.strerror}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return keys


def get_settings() -> Settings:
    return Settings()
