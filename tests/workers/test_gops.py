"""GOP planning, storage keys and fault markers (no Ray, no database)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.storage import validate_key
from workers.gops import (
    GopSpec,
    TransientGopError,
    apply_fault,
    frames_to_process,
    gop_key,
    gops_prefix,
    plan_gops,
)

PREFIX = "tenants/t1/jobs/j1/"


@pytest.mark.parametrize(
    ("n_frames", "gop", "max_frames", "expected"),
    [
        (6, 3, None, [(0, 3), (3, 3)]),
        (7, 3, None, [(0, 3), (3, 3), (6, 1)]),
        (1, 30, None, [(0, 1)]),
        (30, 30, None, [(0, 30)]),
        (31, 30, None, [(0, 30), (30, 1)]),
        (100, 4, 10, [(0, 4), (4, 4), (8, 2)]),
        (5, 4, 50, [(0, 4), (4, 1)]),
        (0, 4, None, []),
        (5, 1, None, [(i, 1) for i in range(5)]),
    ],
)
def test_plan_is_frame_exact(
    n_frames: int, gop: int, max_frames: int | None, expected: list[tuple[int, int]]
) -> None:
    plan = plan_gops(n_frames, gop, PREFIX, max_frames)
    assert [(g.first_frame, g.n_frames) for g in plan] == expected
    assert [g.index for g in plan] == list(range(len(expected)))
    assert plan.n_frames == sum(n for _, n in expected)
    covered = [f for g in plan for f in range(g.first_frame, g.end_frame)]
    assert covered == list(range(plan.n_frames))  # every frame exactly once, in order


def test_plan_keys_are_deterministic_and_valid() -> None:
    a = plan_gops(25, 10, PREFIX)
    b = plan_gops(25, 10, PREFIX)
    assert [g.key for g in a] == [g.key for g in b]
    assert [g.key for g in a] == [
        "tenants/t1/jobs/j1/gops/000000.gop",
        "tenants/t1/jobs/j1/gops/000001.gop",
        "tenants/t1/jobs/j1/gops/000002.gop",
    ]
    for g in a:
        validate_key(g.key)
        assert g.key.startswith(gops_prefix(PREFIX))
    assert gop_key(PREFIX, 123456) == "tenants/t1/jobs/j1/gops/123456.gop"
    # keys sort in GOP order (zero padding), so listings come back in order
    keys = [gop_key(PREFIX, i) for i in (0, 2, 10, 100)]
    assert sorted(keys) == keys


def test_for_first_frame() -> None:
    plan = plan_gops(10, 4, PREFIX)
    assert plan.for_first_frame(4) == GopSpec(1, 4, 4, gop_key(PREFIX, 1))
    assert plan.for_first_frame(8).n_frames == 2
    for bad in (1, 12, -4):
        with pytest.raises(ValueError):
            plan.for_first_frame(bad)


def test_bad_plan_arguments() -> None:
    with pytest.raises(ValueError):
        plan_gops(10, 0, PREFIX)
    with pytest.raises(ValueError):
        plan_gops(10, 3, PREFIX, max_frames=0)
    with pytest.raises(ValueError):
        plan_gops(10, 3, "no-trailing-slash")
    with pytest.raises(ValueError):
        frames_to_process(-1, None)
    with pytest.raises(ValueError):
        gop_key(PREFIX, -1)


def test_fault_markers_fire_once(tmp_path: Path) -> None:
    apply_fault(None, 0)  # no fault dir: nothing happens
    (tmp_path / "gop-000002").write_text("raise")
    apply_fault(tmp_path, 1)  # another GOP: nothing happens
    with pytest.raises(TransientGopError):
        apply_fault(tmp_path, 2)
    apply_fault(tmp_path, 2)  # consumed: the retry runs normally
    assert (tmp_path / "gop-000002.consumed").exists()
    started = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("started-*"))
    assert started == [
        f"started-000001-{os.getpid()}",
        f"started-000002-{os.getpid()}",
        f"started-000002-{os.getpid()}",
    ]


def test_unknown_fault_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "gop-000000").write_text("explode")
    with pytest.raises(ValueError, match="unknown fault"):
        apply_fault(tmp_path, 0)
