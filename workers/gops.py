"""GOP planning and the per-GOP encode stage (plain Python, no Ray).

A job's video is cut into GOPs of ``gop`` frames (the last one may be
shorter), frame-exactly: GOP ``i`` covers frames ``[i*gop, min((i+1)*gop, n))``.
Each GOP's payload lives under a deterministic key,
``<output_prefix>gops/<index:06d>.gop``, so a resumed job finds the GOPs an
earlier attempt finished and skips them.

:class:`EncodeGopStage` is what a Ray task runs for one GOP: encode the frames,
write the payload to storage atomically, return small stats. Tests call
``process`` directly without Ray.

Fault injection (tests and chaos drills): when ``fault_dir`` is set, a marker
file ``<fault_dir>/gop-<index:06d>`` makes the first attempt at that GOP
misbehave and is consumed (renamed to ``*.consumed``) on the way, so a retry
runs normally. Its content picks how: ``raise`` (a retryable
:class:`TransientGopError`), ``exit`` (the worker process dies, as on a crash
or OOM kill), ``sleep <seconds>`` (the task hangs there, to be cancelled or
to have its runner killed) or ``hold <frames>`` (the task stops after encoding that
many frames, their progress reported, until a file ``<fault_dir>/release-<index:06d>``
appears, at most ``HOLD_LIMIT_S``: tests observe a job part way through a GOP without
racing the encoder). Every task also writes
``<fault_dir>/started-<index:06d>-<pid>-<random>`` when it starts, so tests can find and
watch the worker process.

Progress within a GOP: :meth:`EncodeGopStage.process` takes a ``progress`` callable that
gets the number of the GOP's frames encoded so far after every frame (codec's
``encode_gop_report`` progress hook); the Ray task passes one that reports to the job's
progress board (``workers/tasks.py``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from infra.settings import Settings
    from infra.storage import Storage

GOPS_DIRNAME = "gops"
HOLD_LIMIT_S = 600.0  # a ``hold`` fault never keeps a task longer than this

FramesDoneFn = Callable[[int], None]  # frames of this GOP encoded so far


class TransientGopError(RuntimeError):
    """A GOP task failed for a reason worth retrying (storage hiccup, injected fault)."""


def gops_prefix(output_prefix: str) -> str:
    """The storage prefix holding a job's GOP payloads."""
    if output_prefix and not output_prefix.endswith("/"):
        raise ValueError(f"output_prefix={output_prefix!r} must end with '/'")
    return f"{output_prefix}{GOPS_DIRNAME}/"


def gop_key(output_prefix: str, index: int) -> str:
    """Storage key of GOP ``index``'s payload: ``<output_prefix>gops/<index:06d>.gop``."""
    if index < 0:
        raise ValueError(f"GOP index {index} must be >= 0")
    return f"{gops_prefix(output_prefix)}{index:06d}.gop"


@dataclass(frozen=True)
class GopSpec:
    """One GOP of a job: which frames, and where its payload goes."""

    index: int
    first_frame: int
    n_frames: int
    key: str

    @property
    def end_frame(self) -> int:
        """One past the last frame."""
        return self.first_frame + self.n_frames


@dataclass(frozen=True)
class GopPlan:
    """A video of ``n_frames`` frames cut into GOPs of ``gop`` frames."""

    n_frames: int
    gop: int
    gops: tuple[GopSpec, ...]

    def __len__(self) -> int:
        return len(self.gops)

    def __iter__(self) -> Iterator[GopSpec]:
        return iter(self.gops)

    def for_first_frame(self, first_frame: int) -> GopSpec:
        """The GOP starting at ``first_frame``; raises ``ValueError`` off the GOP grid."""
        index, rem = divmod(first_frame, self.gop)
        if rem or not 0 <= index < len(self.gops):
            raise ValueError(
                f"frame {first_frame} does not start a GOP of this plan "
                f"({len(self.gops)} GOPs of {self.gop} frames over {self.n_frames} frames)"
            )
        return self.gops[index]


def frames_to_process(n_frames: int, max_frames: int | None) -> int:
    """How many frames a job encodes: all of them, or the first ``max_frames``."""
    if n_frames < 0:
        raise ValueError(f"n_frames={n_frames} must be >= 0")
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames={max_frames} must be at least 1")
        return min(n_frames, max_frames)
    return n_frames


def plan_gops(
    n_frames: int, gop: int, output_prefix: str, max_frames: int | None = None
) -> GopPlan:
    """Cut ``n_frames`` (capped at ``max_frames``) into GOPs of ``gop`` frames."""
    if gop < 1:
        raise ValueError(f"gop={gop} must be at least 1")
    total = frames_to_process(n_frames, max_frames)
    gops = tuple(
        GopSpec(
            index=i,
            first_frame=first,
            n_frames=min(gop, total - first),
            key=gop_key(output_prefix, i),
        )
        for i, first in enumerate(range(0, total, gop))
    )
    return GopPlan(n_frames=total, gop=gop, gops=gops)


@dataclass
class GopResult:
    """What encoding one GOP produced (the payload itself is in storage under ``key``)."""

    index: int
    first_frame: int
    n_frames: int
    key: str
    payload_bytes: int
    psnr_db: float  # mean over the GOP's frames, 8-bit RGB
    encode_seconds: float
    frames: list[dict[str, Any]] = field(default_factory=list)  # codec FrameStats as dicts
    # target-quality mode: the GOP's search (codec.target.GopTargetReport.to_dict()), else None
    target: dict[str, Any] | None = None

    @property
    def bits(self) -> int:
        return self.payload_bytes * 8


def _consume_marker(path: Path) -> str | None:
    """Atomically take the marker at ``path``: its text if this caller got it, else None."""
    taken = path.with_name(path.name + ".consumed")
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    return taken.read_text().strip()


def apply_fault(fault_dir: Path | None, index: int) -> int | None:
    """Run the injected fault for GOP ``index``, if one is waiting (see module docstring);
    for a ``hold`` fault, return the frame count to hold after (see :func:`hold_here`)."""
    if fault_dir is None:
        return None
    fault_dir = Path(fault_dir)
    fault_dir.mkdir(parents=True, exist_ok=True)
    marker = f"started-{index:06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (fault_dir / marker).write_text(str(time.time()))
    action = _consume_marker(fault_dir / f"gop-{index:06d}")
    if action is None:
        return None
    if action == "raise":
        raise TransientGopError(f"injected transient failure for GOP {index}")
    if action == "exit":
        os._exit(17)
    if action.startswith("sleep"):
        time.sleep(float(action.split()[1]))
        return None
    if action.startswith("hold"):
        return int(action.split()[1])
    raise ValueError(
        f"unknown fault {action!r} for GOP {index}; use raise, exit, 'sleep N' or 'hold N'"
    )


def hold_here(fault_dir: Path, index: int, limit_s: float = HOLD_LIMIT_S) -> None:
    """Wait (bounded by ``limit_s``) for ``<fault_dir>/release-<index:06d>``: a ``hold`` fault."""
    release = Path(fault_dir) / f"release-{index:06d}"
    deadline = time.monotonic() + limit_s
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass(frozen=True)
class EncodeGopStage:
    """Encode one GOP and store its payload; fields are the stage's settings."""

    config: dict[str, Any]  # CodecConfig.to_dict() or to_compact()
    fault_dir: Path | None = None
    device: str = "cpu"  # where the fits run: "cpu", "cuda" or "auto" (codec.gop.resolve_device)

    def process(
        self,
        spec: GopSpec,
        frames: np.ndarray,
        storage: Storage,
        progress: FramesDoneFn | None = None,
    ) -> GopResult:
        """Encode ``frames`` (uint8 [T, H, W, 3]), store the payload, return the stats;
        ``progress(frames_done)`` is called after each encoded frame."""
        from codec.config import CodecConfig
        from codec.target import encode_gop_target

        if frames.ndim != 4 or frames.shape[0] != spec.n_frames or frames.shape[-1] != 3:
            raise ValueError(
                f"GOP {spec.index} expects {spec.n_frames} RGB frames, got an array of "
                f"shape {tuple(frames.shape)}"
            )
        hold_after = apply_fault(self.fault_dir, spec.index)

        def on_frame(done: int, total: int) -> None:
            if progress is not None:
                progress(done)
            if hold_after is not None and done == hold_after and self.fault_dir is not None:
                hold_here(self.fault_dir, spec.index)

        config = CodecConfig.from_dict(self.config)
        start = time.perf_counter()
        if not frames.flags.writeable:  # Ray hands out read-only views of shared memory
            frames = frames.copy()
        # with a quality target the GOP's search runs here (its trials, then the chosen payload;
        # progress then moves once the search is done)
        result, target = encode_gop_target(
            np.ascontiguousarray(frames, dtype=np.uint8),
            config,
            device=self.device,
            progress=on_frame,
        )
        seconds = time.perf_counter() - start
        try:
            storage.put_bytes(spec.key, result.payload)
        except Exception as exc:  # storage hiccups are worth a retry; the key is ours and valid
            raise TransientGopError(
                f"writing GOP {spec.index} to {spec.key!r} failed: {exc}"
            ) from exc
        stats = result.stats_dicts()
        psnr = float(np.mean([float(s["psnr_db"]) for s in stats])) if stats else 0.0  # type: ignore[arg-type]
        return GopResult(
            index=spec.index,
            first_frame=spec.first_frame,
            n_frames=spec.n_frames,
            key=spec.key,
            payload_bytes=len(result.payload),
            psnr_db=psnr,
            encode_seconds=seconds,
            frames=[dict(s) for s in stats],
            target=target.to_dict() if target is not None else None,
        )


def encode_gop_in_worker(
    spec: GopSpec,
    frames: np.ndarray,
    config: dict[str, Any],
    settings: Settings,
    progress: FramesDoneFn | None = None,
) -> GopResult:
    """What the Ray task runs: build this worker's storage client, then the stage."""
    from infra.storage import make_storage

    # a task given GPUs (settings.gop_num_gpus > 0) fits on the GPU Ray assigned it, when there is
    # one; quantisation, entropy coding and the reconstruction stay on the CPU either way
    device = "auto" if settings.gop_num_gpus > 0 else "cpu"
    stage = EncodeGopStage(config=config, fault_dir=settings.fault_dir, device=device)
    return stage.process(spec, frames, make_storage(settings), progress)
