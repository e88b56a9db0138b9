"""One Settings object for every process, read from ``SPLATPACK_*`` env vars.

With nothing set, everything is local and embedded: an embedded Postgres under
``data_dir/pg``, local storage under ``data_dir/storage``, a local Ray.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLATPACK_", env_file=None, extra="ignore")

    # where local state lives (embedded Postgres data, local storage, scratch)
    data_dir: Path = Path("var")

    # database: a SQLAlchemy URL (postgresql+psycopg://...); empty = start the embedded server
    database_url: str = ""

    # storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_root: Path | None = None  # local backend root; default data_dir/storage
    s3_bucket: str = "splatpack"
    s3_endpoint_url: str | None = None  # MinIO / moto / other S3-compatible servers
    s3_region: str = "us-east-1"
    s3_multipart_threshold_bytes: int = 64 * 1024 * 1024
    s3_presign_seconds: int = 3600

    # ray: empty = start/attach a local cluster; "auto" or "ray://host:10001" for a real one
    ray_address: str = ""
    gop_num_cpus: float = 1.0
    gop_num_gpus: float = 0.0  # fractional values share one GPU between GOP tasks
    gop_max_retries: int = 3

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_json_bytes: int = 1024 * 1024
    allowed_input_roots: list[Path] = Field(default_factory=list)  # file-path inputs must be under one

    # input limits (checked when probing)
    max_input_frames: int = 100_000
    max_input_pixels: int = 3840 * 2160
    max_input_seconds: float = 4 * 3600.0

    # queue
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    poll_seconds: float = 1.0
    callback_max_tries: int = 5

    @property
    def resolved_storage_root(self) -> Path:
        return self.storage_root or (self.data_dir / "storage")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own ``Settings`` and pass it explicitly)."""
    return Settings()
