"""The Ray side of the pipeline: one remote task per GOP (the only module importing Ray).

:class:`GopExecutor` submits GOPs as their frames are cut from the video
(``ray.put`` per GOP, so the runner never holds the whole video), keeps at most
``max_in_flight`` tasks outstanding, hands back finished :class:`GopResult` s,
and cancels what is left with ``ray.cancel(ref, force=True)``.

Retries: ``max_retries`` covers worker deaths (crash, OOM kill, node loss);
``retry_exceptions`` only :class:`TransientGopError` (storage hiccups,
injected faults). A codec configuration error is not retried. Failures come
back as :class:`GopTaskError` with ``retryable`` telling the runner whether a
new job attempt could help.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import (
    GetTimeoutError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from infra.ray_conn import cluster_cpus, connect_ray
from workers.gops import GopResult, GopSpec, TransientGopError, encode_gop_in_worker

if TYPE_CHECKING:
    from infra.settings import Settings


class GopTaskError(RuntimeError):
    """A GOP task failed after Ray's retries; ``retryable`` says if a new job attempt may help."""

    def __init__(self, index: int, message: str, *, retryable: bool, cause: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.retryable = retryable
        self.cause = cause


@ray.remote
def encode_gop_task(
    spec: GopSpec, frames: np.ndarray, config: dict[str, Any], settings: Settings
) -> GopResult:
    """Encode one GOP on a Ray worker and store its payload (see workers.gops)."""
    return encode_gop_in_worker(spec, frames, config, settings)


def _classify(index: int, exc: BaseException) -> GopTaskError:
    """Turn what ``ray.get`` raised into a :class:`GopTaskError`."""
    from codec.errors import CodecConfigError, VideoInputError

    if isinstance(exc, RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if isinstance(cause, CodecConfigError | VideoInputError | ValueError):
            return GopTaskError(
                index, f"GOP {index}: {cause}", retryable=False, cause=type(cause).__name__
            )
        name = type(cause).__name__ if cause is not None else "RayTaskError"
        detail = str(cause) if cause is not None else str(exc).splitlines()[0]
        return GopTaskError(
            index, f"GOP {index} failed: {name}: {detail}", retryable=True, cause=name
        )
    if isinstance(exc, WorkerCrashedError):
        return GopTaskError(
            index,
            f"GOP {index}: the Ray worker died on every retry (out of memory or crashed)",
            retryable=True,
            cause="WorkerCrashedError",
        )
    return GopTaskError(
        index,
        f"GOP {index} failed: {type(exc).__name__}: {exc}",
        retryable=True,
        cause=type(exc).__name__,
    )


@dataclass
class GopExecutor:
    """Runs one job's GOP tasks on Ray with a bounded number in flight."""

    settings: Settings
    config: dict[str, Any]  # CodecConfig.to_dict()
    max_in_flight: int = 0  # 0: settings.gops_in_flight, or 2 x cluster CPUs

    def __post_init__(self) -> None:
        connect_ray(self.settings)
        if self.max_in_flight <= 0:
            self.max_in_flight = self.settings.gops_in_flight or 2 * cluster_cpus()
        s = self.settings
        self._task = encode_gop_task.options(
            num_cpus=s.gop_num_cpus,
            num_gpus=s.gop_num_gpus,
            max_retries=s.gop_max_retries,
            retry_exceptions=[TransientGopError],
        )
        self._pending: dict[ray.ObjectRef[Any], GopSpec] = {}

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_in_flight

    def submit(self, spec: GopSpec, frames: np.ndarray) -> None:
        """Start encoding ``spec`` with ``frames`` (uint8 [T, H, W, 3])."""
        frames_ref = ray.put(np.ascontiguousarray(frames))
        ref = self._task.remote(spec, frames_ref, self.config, self.settings)
        self._pending[ref] = spec

    def wait(self, timeout_s: float | None) -> list[GopResult]:
        """Results of tasks finished within ``timeout_s`` (at least one, unless it times out).

        Raises :class:`GopTaskError` for a failed task (the others keep running;
        call :meth:`cancel_all`).
        """
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout_s)
        if ready:  # collect everything else that is already done too
            ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        results: list[GopResult] = []
        for ref in ready:
            spec = self._pending.pop(ref)
            try:
                results.append(ray.get(ref, timeout=0))
            except (GetTimeoutError, TaskCancelledError) as exc:
                raise _classify(spec.index, exc) from exc
            except Exception as exc:
                raise _classify(spec.index, exc) from exc
        return results

    def cancel_all(self) -> int:
        """Force-cancel every outstanding task (kills their workers); returns how many."""
        refs = list(self._pending)
        for ref in refs:
            with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
                ray.cancel(ref, force=True)
        self._pending.clear()
        return len(refs)
