"""GOP tasks on a real local Ray cluster: encode + store, retries, cancellation.

Failures are injected with the marker files documented in ``workers/gops.py``
(``settings.fault_dir``): a marker is consumed by the first attempt at its GOP,
so a retry runs normally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codec.config import CodecConfig
from codec.gop import decode_gop
from infra.settings import Settings
from infra.storage import LocalStorage
from tests.workers.helpers import (
    TINY_CODEC,
    marker_pid,
    pid_alive,
    started_markers,
    synthetic_frames,
    wait_for,
    wait_for_exit,
    wait_for_gop_start,
    write_fault,
)
from workers.gops import GopResult, plan_gops
from workers.tasks import GopExecutor, GopTaskError

PREFIX = "jobs/j/"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var",
        "storage_backend": "local",
        "storage_root": tmp_path / "storage",
        "fault_dir": tmp_path / "faults",
        "gops_in_flight": 2,
    }
    values.update(overrides)
    return Settings(**values)


def _config(gop: int) -> dict[str, Any]:
    return CodecConfig.preset("fast", 1).with_overrides(gop=gop, **TINY_CODEC).to_dict()


def _started(tmp_path: Path, index: int) -> list[Path]:
    return started_markers(tmp_path / "faults", index)


def _run_all(executor: GopExecutor, frames: np.ndarray, gop: int) -> dict[int, GopResult]:
    plan = plan_gops(len(frames), gop, PREFIX)
    results = {}
    for spec in plan:
        while executor.full:
            for r in executor.wait(5.0):
                results[r.index] = r
        executor.submit(spec, frames[spec.first_frame : spec.end_frame])
    while executor.in_flight:
        for r in executor.wait(5.0):
            results[r.index] = r
    return results


@pytest.mark.slow
def test_gops_encode_on_ray_and_land_in_storage(ray_local: str, tmp_path: Path) -> None:
    frames = synthetic_frames(5)
    settings = _settings(tmp_path)
    executor = GopExecutor(settings, _config(3))
    results = _run_all(executor, frames, 3)
    assert sorted(results) == [0, 1]
    store = LocalStorage(tmp_path / "storage")
    assert store.list_keys(PREFIX) == [f"{PREFIX}gops/000000.gop", f"{PREFIX}gops/000001.gop"]
    for index, n in ((0, 3), (1, 2)):
        r = results[index]
        payload = store.get_bytes(r.key)
        assert len(payload) == r.payload_bytes
        assert r.n_frames == n and r.psnr_db > 10
        assert decode_gop(payload).shape == (n, 32, 48, 3)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raise", "exit"])
def test_gop_failing_once_is_retried(ray_local: str, tmp_path: Path, fault: str) -> None:
    frames = synthetic_frames(2)
    settings = _settings(tmp_path, gop_max_retries=2)
    write_fault(tmp_path / "faults", 0, fault)
    executor = GopExecutor(settings, _config(2))
    results = _run_all(executor, frames, 2)
    assert list(results) == [0]
    assert (tmp_path / "faults" / "gop-000000.consumed").exists()
    started = _started(tmp_path, 0)
    assert len(started) == 2  # the failed attempt and the retry
    if fault == "exit":  # the first worker died; the retry ran in a new process
        assert marker_pid(started[0]) != marker_pid(started[1])
    assert LocalStorage(tmp_path / "storage").exists(f"{PREFIX}gops/000000.gop")


@pytest.mark.slow
def test_without_retries_the_failure_surfaces(ray_local: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, gop_max_retries=0)
    write_fault(tmp_path / "faults", 0, "raise")
    executor = GopExecutor(settings, _config(2))
    with pytest.raises(GopTaskError) as info:
        _run_all(executor, synthetic_frames(2), 2)
    assert info.value.retryable
    assert "injected transient failure" in str(info.value)


def test_codec_config_error_is_not_retried(ray_local: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path, gop_max_retries=3)
    bad = _config(2)
    bad["fit"] = {**bad["fit"], "iframe_iters": -5}
    executor = GopExecutor(settings, bad)
    with pytest.raises(GopTaskError) as info:
        _run_all(executor, synthetic_frames(2), 2)
    assert not info.value.retryable
    assert "iframe_iters" in str(info.value)
    assert len(_started(tmp_path, 0)) == 1  # ran once: no Ray retry for a config error


def test_cancel_kills_running_tasks(ray_local: str, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    write_fault(tmp_path / "faults", 0, "sleep 120")
    executor = GopExecutor(settings, _config(2))
    plan = plan_gops(2, 2, PREFIX)
    executor.submit(plan.gops[0], synthetic_frames(2))
    pid = wait_for_gop_start(tmp_path / "faults", 0)
    assert pid_alive(pid)
    assert executor.cancel_all() == 1
    wait_for_exit(pid, "ray.cancel(force=True) to stop the worker")
    assert executor.in_flight == 0
    assert not LocalStorage(tmp_path / "storage").exists(plan.gops[0].key)


def test_frames_done_within_a_gop_reach_the_runner(ray_local: str, tmp_path: Path) -> None:
    """A GOP task reports each encoded frame to the runner's progress board: held after 3 of
    its 5 frames (fault ``hold 3``), the executor sees 3 frames in flight; released, the GOP
    finishes and nothing is in flight."""
    settings = _settings(tmp_path)
    write_fault(tmp_path / "faults", 0, "hold 3")
    executor = GopExecutor(settings, _config(5))
    spec = plan_gops(5, 5, PREFIX).gops[0]
    executor.submit(spec, synthetic_frames(5))
    seen: list[int] = []

    def three_frames_in() -> bool:
        seen.append(executor.frames_in_flight())
        assert executor.wait(0.1) == []  # held: the GOP cannot have finished
        return seen[-1] == 3

    wait_for(three_frames_in, 120, "the held GOP to report 3 frames")
    assert seen == sorted(seen)  # never backwards
    (tmp_path / "faults" / "release-000000").touch()
    results: list[GopResult] = []
    while executor.in_flight:
        results += executor.wait(5.0)
    assert [r.n_frames for r in results] == [5]
    assert executor.frames_in_flight() == 0
    executor.close()
