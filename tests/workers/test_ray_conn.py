"""infra.ray_conn: sizing of a local cluster, forwarded credentials, idempotent connect."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.ray_conn import LOCAL_MAX_CPUS, connect_ray, forwarded_env, local_num_cpus
from infra.settings import Settings


def test_local_num_cpus() -> None:
    assert local_num_cpus(Settings(ray_num_cpus=3)) == 3
    assert local_num_cpus(Settings()) == max(1, min(os.cpu_count() or 1, LOCAL_MAX_CPUS))
    with pytest.raises(ValueError, match="ray_num_cpus"):
        local_num_cpus(Settings(ray_num_cpus=0))


def test_forwarded_env_carries_storage_credentials_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("SPLATPACK_DATABASE_URL", "postgresql://never-forwarded")
    env = forwarded_env()
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA-test" and env["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert "AWS_SESSION_TOKEN" not in env
    assert not any(name.startswith("SPLATPACK_") for name in env)


def test_connect_ray_keeps_an_existing_connection(ray_local: str, tmp_path: Path) -> None:
    import ray

    before = ray.get_runtime_context().gcs_address
    connect_ray(Settings(data_dir=tmp_path, ray_address="127.0.0.1:1"))  # would fail if dialled
    assert ray.is_initialized()
    assert ray.get_runtime_context().gcs_address == before == ray_local
