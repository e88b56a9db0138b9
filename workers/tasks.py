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

Progress within a GOP (decision): a GOP task runs in another process, often on
another node, so it cannot write to the runner's memory, and it should not write to
Postgres either (GPU workers would need database credentials and a connection each,
and every write would have to be fenced by the job's lease, which only the runner
holds). So each runner process keeps one small Ray actor, :class:`ProgressBoard`
(0 CPUs, owned by the runner, so it dies with it), and every GOP task reports
``(executor token, GOP index, frames done)`` to it after each encoded frame, as a
fire-and-forget actor call (one small message per frame; frames take 0.1 s and more
outside tests). The runner reads the board without blocking while it waits for GOP
results (at most one read in flight, one every ``PROGRESS_READ_S``) and writes the
job's ``frames_done`` to Postgres through its lease-fenced handle, throttled to one
write per ``Settings.progress_write_seconds`` (``workers.runner.JobHandle``). The board
keeps the largest count per GOP, so a GOP whose task Ray retries never moves the job
backwards; an executor's entries are dropped when it closes, and reports for a token
the board does not know (a task cancelled after its job ended) are ignored. If the board
is unreachable, progress only moves per GOP: encoding never depends on it. The same
works for a runner connected through Ray Client (``ray://``, as in docker/compose.yaml):
tried by hand against a ``ray start --head`` cluster (a held GOP's 3 frames seen).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
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

log = logging.getLogger("splatpack.tasks")

PROGRESS_READ_S = 0.5  # the runner reads its progress board at most this often


class GopTaskError(RuntimeError):
    """A GOP task failed after Ray's retries; ``retryable`` says if a new job attempt may help."""

    def __init__(self, index: int, message: str, *, retryable: bool, cause: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.retryable = retryable
        self.cause = cause


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Frames done per GOP of each open executor (token), reported by GOP tasks."""

    def __init__(self) -> None:
        self._frames: dict[str, dict[int, int]] = {}

    def open(self, token: str) -> None:
        self._frames.setdefault(token, {})

    def report(self, token: str, index: int, frames_done: int) -> None:
        per_gop = self._frames.get(token)
        if per_gop is not None and frames_done > per_gop.get(index, 0):
            per_gop[index] = frames_done

    def read(self, token: str) -> dict[int, int]:
        return dict(self._frames.get(token, {}))

    def close(self, token: str) -> None:
        self._frames.pop(token, None)


_board: tuple[str, Any] | None = None  # (Ray job id, this process's ProgressBoard handle)


def progress_board() -> Any:
    """This process's :class:`ProgressBoard` on the connected cluster (made on first use,
    again after a reconnect)."""
    global _board
    job_id = ray.get_runtime_context().get_job_id()
    if _board is None or _board[0] != job_id:
        _board = (job_id, ProgressBoard.remote())  # type: ignore[attr-defined]
    return _board[1]


@ray.remote
def encode_gop_task(
    spec: GopSpec,
    frames: np.ndarray,
    config: dict[str, Any],
    settings: Settings,
    board: Any = None,
    token: str = "",
) -> GopResult:
    """Encode one GOP on a Ray worker and store its payload (see workers.gops), reporting
    frames done to ``board`` (a :class:`ProgressBoard` handle) under ``token``."""

    def report(frames_done: int) -> None:
        with contextlib.suppress(Exception):  # progress is best effort, never the encode's end
            board.report.remote(token, spec.index, frames_done)

    return encode_gop_in_worker(
        spec, frames, config, settings, report if board is not None else None
    )


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
        # progress within GOPs: this executor's entries on the runner's board
        self._token = uuid.uuid4().hex
        self._board: Any = None
        try:
            self._board = progress_board()
            self._board.open.remote(self._token)
        except Exception:  # no board: progress moves per GOP only
            log.warning("no progress board; job progress will move per GOP", exc_info=True)
        self._read: ray.ObjectRef[Any] | None = None
        self._read_at = 0.0
        self._frames_done: dict[int, int] = {}  # GOP index -> frames done, as last read

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_in_flight

    def submit(self, spec: GopSpec, frames: np.ndarray) -> None:
        """Start encoding ``spec`` with ``frames`` (uint8 [T, H, W, 3])."""
        frames_ref = ray.put(np.ascontiguousarray(frames))
        ref = self._task.remote(
            spec, frames_ref, self.config, self.settings, self._board, self._token
        )
        self._pending[ref] = spec

    def frames_in_flight(self) -> int:
        """Frames the GOPs still in flight have reported encoded (never blocks: uses the last
        board read and starts the next one when due)."""
        if self._board is not None:
            if self._read is not None:
                ready, _ = ray.wait([self._read], timeout=0)
                if ready:
                    try:
                        for index, done in ray.get(self._read, timeout=0).items():
                            self._frames_done[index] = max(done, self._frames_done.get(index, 0))
                    except Exception:  # the board is gone: keep what we had
                        log.warning("progress board read failed", exc_info=True)
                    self._read = None
            now = time.monotonic()
            if self._read is None and now - self._read_at >= PROGRESS_READ_S:
                self._read, self._read_at = self._board.read.remote(self._token), now
        return sum(
            min(self._frames_done.get(spec.index, 0), spec.n_frames)
            for spec in self._pending.values()
        )

    def close(self) -> None:
        """Drop this executor's progress entries (call once its GOPs are done or cancelled)."""
        if self._board is not None:
            with contextlib.suppress(Exception):
                self._board.close.remote(self._token)

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
