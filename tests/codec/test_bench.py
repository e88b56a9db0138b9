"""codec.bench: classic-codec rate points and the report, on a tiny synthetic clip."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codec import bench
from codec.bench import RatePoint, bd_rate_table, classic_codec_points, run_bench, write_report
from codec.errors import CodecConfigError
from codec.video import VideoWriter

FPS = Fraction(30000, 1001)


def tiny_frames(t: int = 4, h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        out[i, ..., 0] = 128 + 90 * np.sin((xx + 3 * i) / 6.0)
        out[i, ..., 1] = 128 + 90 * np.cos((yy + i) / 4.0)
        out[i, ..., 2] = 128 + 80 * np.sin((xx + yy) / 9.0 + i / 3.0)
    return out


@pytest.fixture(scope="module")
def x264_points() -> list[RatePoint]:
    return classic_codec_points(tiny_frames(), FPS, "x264", [20, 30, 40, 50])


def test_classic_points_are_consistent(x264_points: list[RatePoint]) -> None:
    frames = tiny_frames()
    assert [p.setting for p in x264_points] == [20, 30, 40, 50]
    for p in x264_points:
        assert p.codec == "x264"
        assert p.bpp == pytest.approx(p.extra["n_bytes"] * 8 / (64 * 48 * 4))
        assert len(p.extra["psnr_db_per_frame"]) == frames.shape[0]
        assert p.psnr_db == round(float(np.mean(p.extra["psnr_db_per_frame"])), 2)
        assert p.extra["ms_ssim_is_ssim"] is True  # 48 px is below MS-SSIM's minimum
        assert p.extra["clip_fps"] == "30000/1001" and p.extra["rc_fps"] == "25"
        assert p.encode_fps > 0 and p.decode_fps > 0
    bpps = [p.bpp for p in x264_points]
    psnrs = [p.psnr_db for p in x264_points]
    assert bpps == sorted(bpps, reverse=True) and psnrs == sorted(psnrs, reverse=True)
    assert psnrs[0] > 28 and psnrs[0] - psnrs[-1] > 5


def test_x264_frame_threading_is_reproducible(x264_points: list[RatePoint]) -> None:
    again = classic_codec_points(tiny_frames(), FPS, "x264", [30])
    assert again[0].extra["n_bytes"] == x264_points[1].extra["n_bytes"]
    assert again[0].psnr_db == x264_points[1].psnr_db


def test_classic_points_reject_bad_input() -> None:
    with pytest.raises(CodecConfigError, match="even width and height"):
        classic_codec_points(tiny_frames(2, 47, 64), FPS, "x264", [30])
    with pytest.raises(CodecConfigError, match="uint8"):
        classic_codec_points(tiny_frames().astype(np.float32), FPS, "x264", [30])
    with pytest.raises(CodecConfigError, match="unknown classic codec"):
        classic_codec_points(tiny_frames(), FPS, "mpeg1", [30])  # type: ignore[arg-type]


def test_bd_rate_table_cases(x264_points: list[RatePoint]) -> None:
    cheaper = [replace(p, codec="ours", bpp=p.bpp * 0.9) for p in x264_points]
    far = [replace(p, codec="far", psnr_db=p.psnr_db + 100) for p in x264_points]
    few = [replace(p, codec="few") for p in x264_points[:3]]
    table = bd_rate_table(x264_points + cheaper + far + few)
    assert table["ours"]["x264"] == pytest.approx(-10.0, abs=0.01)
    assert table["far"]["x264"] == "no overlap"
    assert str(table["few"]["x264"]).startswith("n/a")
    assert table["x264"] == {}


def test_run_bench_writes_json_md_png(tmp_path: Path, x264_points: list[RatePoint]) -> None:
    clip = tmp_path / "tiny.y4m"
    with VideoWriter(clip, 64, 48, FPS) as w:
        for f in tiny_frames(6):
            w.write(f)

    seen: dict[str, object] = {}

    extra: dict[str, object] = {"preset": "fast"}

    def our_codec(frames: np.ndarray, fps: Fraction) -> list[RatePoint]:
        seen["shape"], seen["fps"] = frames.shape, fps
        extra["filled_in_by_our_codec"] = 42
        return [
            replace(p, codec="gauss", bpp=p.bpp * 0.9, setting=i) for i, p in enumerate(x264_points)
        ]

    out = tmp_path / "report"
    doc = run_bench(clip, out, 4, our_codec, classic=("x264",), extra=extra)
    assert seen == {"shape": (4, 48, 64, 3), "fps": FPS}
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "rd.png"}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == doc
    assert [p["codec"] for p in doc["points"]] == ["x264"] * 5 + ["gauss"] * 4
    assert doc["extra"]["frames"] == 4 and doc["extra"]["unavailable"] == "none"
    assert doc["extra"]["preset"] == "fast" and doc["extra"]["filled_in_by_our_codec"] == 42
    assert isinstance(doc["bd_rate_psnr"]["gauss"]["x264"], float)
    md = (out / "results.md").read_text()
    assert "| x264 | 23 |" in md and "| gauss | 0 |" in md
    assert "| codec | vs x264 |" in md and "single-scale SSIM" in md
    assert "no overlap" not in md
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_encoder_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = bench._SPECS["svtav1"]
    monkeypatch.setitem(bench._SPECS, "svtav1", replace(spec, encoder="libnosuchencoder"))
    clip = tmp_path / "tiny.y4m"
    with VideoWriter(clip, 64, 48, FPS) as w:
        for f in tiny_frames(2):
            w.write(f)
    doc = run_bench(clip, tmp_path / "r", 2, None, classic=("svtav1",))
    assert doc["points"] == []
    assert "libnosuchencoder" in doc["extra"]["unavailable"]["svtav1"]
    assert "libnosuchencoder" in (tmp_path / "r" / "results.md").read_text()


def test_odd_sized_clip_marks_classic_codecs_unavailable(tmp_path: Path) -> None:
    clip = tmp_path / "odd.y4m"
    with VideoWriter(clip, 37, 23, FPS) as w:
        w.write(np.zeros((23, 37, 3), np.uint8))
    doc = run_bench(clip, tmp_path / "r", None, None, classic=("x264",))
    assert "even width and height" in doc["extra"]["unavailable"]["x264"]


def test_report_says_no_overlap(tmp_path: Path, x264_points: list[RatePoint]) -> None:
    far = [replace(p, codec="far", psnr_db=p.psnr_db + 100) for p in x264_points]
    write_report(x264_points + far, tmp_path, "t", {})
    md = (tmp_path / "results.md").read_text()
    assert "| far | no overlap |" in md and "nothing is extrapolated" in md


def test_write_report_without_points(tmp_path: Path) -> None:
    write_report([], tmp_path, "empty", {"note": "nothing measured"})
    assert json.loads((tmp_path / "results.json").read_text())["points"] == []
    assert "nothing measured" in (tmp_path / "results.md").read_text()


def test_report_labels_ssim_fallback_points_honestly(tmp_path: Path) -> None:
    """A value computed as single-scale SSIM is never shown under a bare MS-SSIM heading."""
    big = RatePoint("x264", 23, 0.1, 30.0, 0.95, 10.0, 10.0, {"ms_ssim_is_ssim": False})
    small = RatePoint("gsv", 4, 0.1, 29.0, 0.90, 1.0, 10.0, {"ms_ssim_is_ssim": True})
    write_report([big, small], tmp_path, "mixed", {})
    md = (tmp_path / "results.md").read_text()
    assert "MS-SSIM (SSIM where marked)" in md and "0.9000 (SSIM)" in md
    write_report([small], tmp_path, "small", {})
    md = (tmp_path / "results.md").read_text()
    assert "| SSIM |" in md and "MS-SSIM |" not in md


def test_ssim_label() -> None:
    from codec.metrics import ssim_label

    assert ssim_label(True) == "SSIM" and ssim_label(False) == "MS-SSIM"
