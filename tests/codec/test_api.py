"""encode_video's parallel GOP encode: the same file as a sequential encode, speed figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from codec.api import encode_video, plan_parallelism, usable_cores
from codec.config import CodecConfig
from codec.errors import CodecConfigError
from tests.codec.test_cli import write_clip
from tests.codec.test_gop import moving_blob_frames


def test_parallel_and_sequential_encodes_write_the_same_file(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", moving_blob_frames(t=7, h=24, w=32))
    cfg = CodecConfig.preset("fast", 4, gop=3, fit__iframe_iters=25, fit__pframe_iters=6)
    # the default plan: a worker process per core, at most one per GOP (3 here), the cores
    # split between them as threads; forced to two workers where the machine has one core
    workers, threads = plan_parallelism(3, None, None)
    workers = max(workers, 2)
    par = encode_video(clip, tmp_path / "par.gsv", cfg, workers=workers)
    assert (par.workers, par.threads) == (workers, max(1, usable_cores() // workers))
    seq = encode_video(clip, tmp_path / "seq.gsv", cfg, workers=1, threads=par.threads)
    assert seq.workers == 1
    assert (tmp_path / "seq.gsv").read_bytes() == (tmp_path / "par.gsv").read_bytes()
    assert [f["index"] for f in par.frames] == list(range(7))  # stats in frame order
    assert [f["n_bytes"] for f in par.frames] == [f["n_bytes"] for f in seq.frames]
    # speed figures: seconds and iterations per I- and P-frame
    assert seq.i_frame_seconds_mean > 0 and seq.p_frame_seconds_mean is not None
    assert seq.i_frame_iters_mean == 25 and seq.p_frame_iters_mean is not None


def test_parallelism_plan() -> None:
    cores = usable_cores()
    assert plan_parallelism(1, None, None) == (1, cores)  # one GOP: one process, every core
    assert plan_parallelism(100, None, None) == (cores, 1)
    assert plan_parallelism(None, None, None)[0] == cores  # length unknown
    assert plan_parallelism(100, 4, None) == (4, max(1, cores // 4))
    assert plan_parallelism(2, 8, 3) == (2, 3)  # never more workers than GOPs
    assert plan_parallelism(100, None, None, device="cuda")[0] == 1
    for bad in (0, -1, 10_000):
        with pytest.raises(CodecConfigError):
            plan_parallelism(4, bad, None)
        with pytest.raises(CodecConfigError):
            plan_parallelism(4, None, bad)
