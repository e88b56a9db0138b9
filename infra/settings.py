"""One Settings object for every process, read from ``SPLATPACK_*`` env vars.

With nothing set, everything is local and embedded: an embedded Postgres under
``data_dir/pg``, local storage under ``data_dir/storage``, a local Ray.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, IPvAnyNetwork, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob, one field each; the env var is ``SPLATPACK_`` + the field name in capitals.

    Lists and dicts are JSON in the environment. A few that deployments usually set:

    - Database pool (per process, ``infra.db.make_engine``): ``db_pool_size``
      connections kept open (default 5), up to ``db_max_overflow`` more under load
      (default 10), and a request waits ``db_pool_timeout_s`` (default 30 s) for a
      free one before the API answers 503 ``database_busy``. Keep (API replicas +
      runners) x (``db_pool_size`` + ``db_max_overflow``) under Postgres'
      ``max_connections``.
    - Callbacks (SSRF guard, ``infra.callback_urls``): only publicly routable
      addresses unless ``callback_allow_private`` (loopback and private networks:
      the all-in-one demo, tests, in-cluster receivers) or ``callback_allowed_cidrs``
      (listed networks) say otherwise; URLs longer than ``callback_max_url_length``
      are refused.
    - Callback delivery (``workers.callback_dispatch``): ``callback_max_tries`` tries
      with exponential backoff from ``callback_base_delay_s`` capped at
      ``callback_max_delay_s``; ``callback_timeout_s`` per request.
    """

    model_config = SettingsConfigDict(env_prefix="SPLATPACK_", env_file=None, extra="ignore")

    # where local state lives (embedded Postgres data, local storage, scratch)
    data_dir: Path = Path("var")

    # database: a SQLAlchemy URL (postgresql+psycopg://...); empty = start the embedded server
    database_url: str = ""
    # connection pool per process: db_pool_size kept open, up to db_max_overflow more on demand,
    # db_pool_timeout_s to wait for a free one (then the API answers 503)
    db_pool_size: int = Field(default=5, ge=1, le=500)
    db_max_overflow: int = Field(default=10, ge=0, le=1000)
    db_pool_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_root: Path | None = None  # local backend root; default data_dir/storage
    s3_bucket: str = "splatpack"
    s3_endpoint_url: str | None = None  # MinIO / moto / other S3-compatible servers
    # the endpoint clients reach for presigned URLs when it differs from s3_endpoint_url
    # (compose: the API reaches http://minio:9000, the host http://127.0.0.1:9000)
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_multipart_threshold_bytes: int = 64 * 1024 * 1024
    s3_presign_seconds: int = 3600

    # ray: empty = start/attach a local cluster; "auto" or "ray://host:10001" for a real one
    ray_address: str = ""
    gop_num_cpus: float = 1.0
    gop_num_gpus: float = 0.0  # fractional values share one GPU between GOP tasks
    gop_max_retries: int = 3
    ray_num_cpus: int | None = None  # local cluster only; default os.cpu_count() capped at 8
    ray_object_store_bytes: int | None = None  # local cluster only; default Ray's (30% of RAM)
    gops_in_flight: int = 0  # GOP tasks (and their frames) in flight per job; 0 = 2 x cluster CPUs

    # codec: CodecConfig.with_overrides(**codec_overrides) applied after the job's preset/quality/gop
    # (e.g. {"fit__iframe_iters": 20} for tests and smoke runs); JSON in SPLATPACK_CODEC_OVERRIDES
    codec_overrides: dict[str, Any] = Field(default_factory=dict)
    # tests and chaos drills only: marker files here make GOP tasks fail once (workers/gops.py)
    fault_dir: Path | None = None

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # base of the download links the API hands out; empty: the base URL each request came to
    # (behind a proxy that rewrites hosts, set the public URL here)
    public_base_url: str = ""
    # /metrics: with a token, only requests bearing it (Authorization: Bearer <token>); without,
    # only clients on loopback addresses (a scraper on the same host or in the same pod)
    metrics_token: str = ""
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_json_bytes: int = 1024 * 1024
    allowed_input_roots: list[Path] = Field(
        default_factory=list
    )  # file-path inputs must be under one
    # s3:// inputs outside s3_bucket must name one of these buckets (empty: none allowed)
    allowed_input_buckets: list[str] = Field(default_factory=list)
    max_user_metadata_bytes: int = 16 * 1024  # JSON-encoded size of a job's user metadata
    max_batch_inputs: int = 1000  # jobs one batch (or one schedule run) may create
    auto_migrate: bool = True  # the API runs Alembic migrations at startup
    scheduler_interval_seconds: float = 30.0  # how often the API runs due schedules; 0 = never

    # input limits (checked by the runner: bytes before fetching the input, the rest when probing)
    max_input_bytes: int = Field(default=4 * 1024 * 1024 * 1024, ge=1)
    max_input_frames: int = 100_000
    max_input_pixels: int = 3840 * 2160
    max_input_seconds: float = 4 * 3600.0

    # queue
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    poll_seconds: float = 1.0
    # a runner writes a job's frames done (progress within GOPs) at most this often
    progress_write_seconds: float = Field(default=1.0, ge=0, le=3600)

    # callbacks: the SSRF guard (infra/callback_urls.py). By default callbacks go only to
    # publicly routable addresses, checked at submit and again at delivery.
    # true also admits loopback and private networks (all-in-one demo, tests, in-cluster receivers)
    callback_allow_private: bool = False
    # networks admitted whatever their kind; JSON in SPLATPACK_CALLBACK_ALLOWED_CIDRS,
    # e.g. '["10.20.0.0/16", "fd00:1::/64"]'
    callback_allowed_cidrs: list[IPvAnyNetwork] = Field(default_factory=list)
    callback_max_url_length: int = Field(default=2048, ge=32, le=8192)
    # callback delivery (workers/callback_dispatch.py): a dispatcher thread in every runner
    # claims due callbacks; a try that fails transiently is due again after
    # min(callback_max_delay_s, callback_base_delay_s * 2**(tries - 1)); after
    # callback_max_tries tries the callback is failed
    callback_max_tries: int = Field(default=10, ge=1, le=100)
    callback_base_delay_s: float = Field(default=5.0, gt=0)
    callback_max_delay_s: float = Field(default=1800.0, gt=0)
    callback_timeout_s: float = Field(default=10.0, gt=0, le=300)  # per HTTP request
    # a claimed callback is due again this long after its claim (its dispatcher died):
    # must exceed the time one try can take
    callback_lease_seconds: float = Field(default=60.0, gt=0)
    callback_concurrency: int = Field(default=4, ge=1, le=64)  # tries in flight per runner
    callback_poll_seconds: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _callback_lease_covers_a_try(self) -> Settings:
        if self.callback_lease_seconds <= self.callback_timeout_s:
            raise ValueError(
                f"callback_lease_seconds ({self.callback_lease_seconds:g}) must exceed "
                f"callback_timeout_s ({self.callback_timeout_s:g}), or a slow try would be "
                "claimed again while it runs"
            )
        return self

    @property
    def resolved_storage_root(self) -> Path:
        return self.storage_root or (self.data_dir / "storage")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own ``Settings`` and pass it explicitly)."""
    return Settings()
