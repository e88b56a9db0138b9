"""The pipeline's stages called directly (no Ray, no database): encode, assemble, verify, inputs."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from codec.config import CodecConfig
from codec.container import ContainerReader
from codec.video import probe, read_frames
from infra.settings import Settings
from infra.storage import LocalStorage
from tests.workers.helpers import TINY_CODEC, make_video
from workers.assemble import (
    AssembleStage,
    GopRecord,
    VerifyStage,
    build_manifest,
    check_coverage,
)
from workers.gops import EncodeGopStage, plan_gops
from workers.inputs import JobError, check_input, looks_like_video_container

PREFIX = "jobs/stage/"


@pytest.fixture
def encoded(tmp_path: Path) -> tuple[Path, LocalStorage, list[GopRecord], dict[str, object]]:
    """A 5-frame clip encoded GOP by GOP (3 + 2 frames) into local storage."""
    src = make_video(tmp_path / "clip.mp4", n_frames=5)
    storage = LocalStorage(tmp_path / "store")
    config = CodecConfig.preset("fast", 1).with_overrides(gop=3, **TINY_CODEC).to_dict()
    stage = EncodeGopStage(config=config)
    records = []
    for spec in plan_gops(5, 3, PREFIX):
        r = stage.process(spec, read_frames(src, spec.first_frame, spec.n_frames), storage)
        assert storage.size(spec.key) == r.payload_bytes
        records.append(
            GopRecord(r.index, r.first_frame, r.n_frames, r.key, r.payload_bytes, r.psnr_db, 0.1)
        )
    return src, storage, records, config


def test_assemble_in_any_order_then_verify(
    encoded: tuple[Path, LocalStorage, list[GopRecord], dict[str, object]], tmp_path: Path
) -> None:
    src, storage, records, config = encoded
    assemble = AssembleStage(width=48, height=32, fps=Fraction(10), gop=3, codec_params=config)
    gsv = tmp_path / "out" / "video.gsv"
    size = assemble.process(list(reversed(records)), 5, storage, gsv)
    assert size == gsv.stat().st_size
    with ContainerReader(gsv) as reader:
        assert reader.n_frames == 5 and [e.n_frames for e in reader.gops] == [3, 2]
        assert reader.header.codec_params == config

    preview = tmp_path / "out" / "preview.mp4"
    report = VerifyStage(expected_frames=5, gop=3).process(gsv, src, preview)
    assert report.n_frames == 5 and (report.width, report.height) == (48, 32)
    assert report.psnr_db > 15 and 0 < report.ms_ssim <= 1
    assert report.ms_ssim_used_ssim_fallback  # 48x32 is too small for 5-scale MS-SSIM
    assert [g["index"] for g in report.per_gop] == [0, 1]
    # the decoder reproduces the encoder's reconstruction: same PSNR as the tasks measured
    for rec, q in zip(records, report.per_gop, strict=True):
        assert q["psnr_db"] == pytest.approx(rec.psnr_db, abs=0.05)
    info = probe(preview)
    assert (info.width, info.height, info.n_frames) == (48, 32, 5)

    manifest = build_manifest(gsv, records, job_id="j", video_key="k/video.gsv", verify=report)
    json.dumps(manifest)  # serialisable as is
    assert [g["payload_bytes"] for g in manifest["gops"]] == [r.payload_bytes for r in records]


def test_verify_rejects_a_wrong_frame_count(
    encoded: tuple[Path, LocalStorage, list[GopRecord], dict[str, object]], tmp_path: Path
) -> None:
    src, storage, records, config = encoded
    gsv = tmp_path / "video.gsv"
    AssembleStage(48, 32, Fraction(10), 3, config).process(records, 5, storage, gsv)
    with pytest.raises(JobError) as info:
        VerifyStage(expected_frames=6, gop=3).process(gsv, src, None)
    assert info.value.code == "verify_failed"


def test_assemble_detects_gaps_and_damaged_payloads(
    encoded: tuple[Path, LocalStorage, list[GopRecord], dict[str, object]], tmp_path: Path
) -> None:
    _src, storage, records, config = encoded
    stage = AssembleStage(48, 32, Fraction(10), 3, config)
    with pytest.raises(JobError) as info:
        stage.process(records[:1], 5, storage, tmp_path / "a.gsv")
    assert info.value.code == "gop_missing" and info.value.retryable
    storage.put_bytes(records[1].key, b"short")
    with pytest.raises(JobError) as info:
        stage.process(records, 5, storage, tmp_path / "b.gsv")
    assert info.value.code == "gop_missing"
    assert not (tmp_path / "b.gsv").exists()  # the writer aborted: no half-written file


def test_check_coverage() -> None:
    recs = [GopRecord(0, 0, 3, "a", 1), GopRecord(1, 3, 3, "b", 1), GopRecord(2, 6, 1, "c", 1)]
    assert check_coverage(list(reversed(recs)), 7) == recs
    for bad, n in [(recs[:2], 7), ([recs[0], recs[2]], 7), (recs, 8)]:
        with pytest.raises(JobError):
            check_coverage(bad, n)


def test_check_input_codes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    video = make_video(tmp_path / "ok.mp4", n_frames=6)
    checked = check_input(video, settings, max_frames=4)
    assert checked.n_frames == 4 and checked.fps == Fraction(10)
    assert looks_like_video_container(video)

    text = tmp_path / "notes.txt"
    text.write_text("GOP GOP GOP, this is text\n" * 50)
    assert not looks_like_video_container(text)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:300])
    for path, code in [(text, "input_not_video"), (empty, "input_empty"), (cut, "input_corrupt")]:
        with pytest.raises(JobError) as info:
            check_input(path, settings, None)
        assert info.value.code == code and not info.value.retryable

    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_input_frames": 5}, "6 frames"),
        ({"max_input_seconds": 0.3}, "lasts"),
        ({"max_input_pixels": 100}, "48x32"),
    ]
    for limits, needle in cases:
        with pytest.raises(JobError) as info:
            check_input(video, Settings(data_dir=tmp_path, **limits), None)
        assert info.value.code == "input_too_large" and needle in info.value.message
    # max_frames brings a long input under the frame limit
    assert check_input(video, Settings(data_dir=tmp_path, max_input_frames=5), 5).n_frames == 5
