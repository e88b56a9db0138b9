"""Connect this process to Ray: a real cluster (``settings.ray_address``) or a local one.

Idempotent: when Ray is already initialised in this process (a test fixture, an
earlier call) the existing connection is kept. Storage credentials present in
this process's environment (``AWS_*``) are forwarded to the workers through
the job's ``runtime_env``, so GOP tasks on remote nodes can reach the same
bucket as the runner.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.settings import Settings

LOCAL_MAX_CPUS = 8  # a local cluster never takes more cores than this unless asked
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
)


def local_num_cpus(settings: Settings) -> int:
    """CPUs a local cluster gets: ``settings.ray_num_cpus`` or the machine's, capped."""
    if settings.ray_num_cpus is not None:
        if settings.ray_num_cpus < 1:
            raise ValueError(
                f"ray_num_cpus={settings.ray_num_cpus} must be at least 1 (SPLATPACK_RAY_NUM_CPUS)"
            )
        return settings.ray_num_cpus
    return max(1, min(os.cpu_count() or 1, LOCAL_MAX_CPUS))


def forwarded_env() -> dict[str, str]:
    """The storage credential variables set here, to be set on Ray workers too."""
    return {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}


def connect_ray(settings: Settings) -> None:
    """Initialise Ray for this process once (no dashboard, quiet logs)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "ignore_reinit_error": True,
    }
    env = forwarded_env()
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
        return
    if settings.ray_object_store_bytes:
        kwargs["object_store_memory"] = settings.ray_object_store_bytes
    ray.init(num_cpus=local_num_cpus(settings), include_dashboard=False, **kwargs)


def cluster_cpus() -> int:
    """CPUs the connected cluster has (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
