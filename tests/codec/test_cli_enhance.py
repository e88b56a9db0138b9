"""The enhancer through the real CLI (main(argv)): encode --enhance / --no-enhance, the --json
quality summary, decode --no-enhance, info's enhancer bytes, and the errors around them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codec.api import iter_decoded
from codec.bitstream import pack_gop, unpack_gop_enhanced
from codec.cli import main
from codec.container import ContainerReader, ContainerWriter
from codec.enhance import apply_enhancer
from codec.enhance.record import EnhancerRecord, encode_record
from codec.enhance.weights import WEIGHTS_SHA256, model_tag
from codec.video import iter_frames
from tests.codec.test_cli import FAST_ARGS, write_clip
from tests.codec.test_gop import moving_blob_frames

# 4 frames of 40x48: large enough for DSS and HaarPSI (32 px), small enough for SSIM, not MS-SSIM
H, W = 40, 48
ONE_PROCESS = ["--workers", "1"]  # no spawned encoder processes on the shared test machine


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4", moving_blob_frames(t=4, h=H, w=W))


def _encode(clip: Path, gsv: Path, json_path: Path, *extra: str) -> dict:
    argv = ["encode", str(clip), "-o", str(gsv), "--gop", "2", *FAST_ARGS, *ONE_PROCESS]
    argv += ["--json", str(json_path)]
    assert main([*argv, *extra]) == 0
    return json.loads(json_path.read_text())


def test_encode_enhance_json_counts_the_records_and_measures_the_file(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gsv = tmp_path / "on.gsv"
    # lambda 0: a record is kept wherever it lowers the error at all
    s = _encode(clip, gsv, tmp_path / "on.json", "--enhance", "--set", "fit__pframe_rd_lambda=0")
    out = capsys.readouterr().out
    assert "enhancer (filter):" in out and "quality of the written file:" in out
    assert s["enhance"] == "filter"
    assert ContainerReader(gsv).header.codec_params["overrides"]["enhance"] == "filter"
    records = [len(unpack_gop_enhanced(ContainerReader(gsv).read_gop(i))[2]) for i in range(2)]
    assert s["enhancer_bytes_per_gop"] == records and s["enhancer_bytes"] == sum(records)
    assert s["enhancer_share_of_bytes"] == pytest.approx(sum(records) / gsv.stat().st_size)

    q, plain = s["quality"], s["quality_no_enhance"]
    assert q["ssim_label"] == "SSIM" and q["n_frames"] == 4  # 40 px: under MS-SSIM's 161
    for key in ("ms_ssim", "dss", "haarpsi"):
        assert 0.0 < q[key] < 1.0 and 0.0 < plain[key] < 1.0
    # the raw output measured from the file is the encoder's closed-loop reconstruction
    assert plain["psnr_db"] == pytest.approx(s["psnr_db"], abs=0.01)
    decoded = np.stack(list(iter_decoded(gsv)))
    source = np.stack(list(iter_frames(clip)))
    mse = ((decoded.astype(float) - source) ** 2).mean(axis=(1, 2, 3))
    assert q["psnr_db"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), abs=0.01)
    if sum(records):  # lambda 0 keeps only records that lowered the error
        assert q["psnr_db"] >= plain["psnr_db"]
    else:
        assert q == plain

    assert main(["info", str(gsv), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["enhancer_bytes"] == sum(records)
    assert [g["enhancer_bytes"] for g in info["gops"]] == records
    assert all(g["enhancer"]["kind"] == "filter" for g in info["gops"] if g["enhancer_bytes"])


def test_no_enhance_is_the_preset_default_and_costs_no_record(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _encode(clip, tmp_path / "a.gsv", tmp_path / "a.json")
    off = _encode(clip, tmp_path / "b.gsv", tmp_path / "b.json", "--no-enhance")
    assert "enhancer (" not in capsys.readouterr().out
    assert plain["enhance"] == off["enhance"] == "off"
    assert (tmp_path / "a.gsv").read_bytes() == (tmp_path / "b.gsv").read_bytes()
    assert off["enhancer_bytes_per_gop"] == [0, 0] and off["enhancer_share_of_bytes"] == 0.0
    assert off["quality"] == off["quality_no_enhance"]
    assert "enhance" not in ContainerReader(tmp_path / "b.gsv").header.codec_params.get(
        "overrides", {}
    )


def _with_records(src: Path, dst: Path, records: list[bytes]) -> None:
    """A copy of ``src`` whose GOPs carry ``records`` (valid or not) as their enhancer field."""
    reader = ContainerReader(src)
    with ContainerWriter(dst, reader.header) as writer:
        for pos, entry in enumerate(reader.gops):
            header, frames, _ = unpack_gop_enhanced(reader.read_gop(pos))
            payload = pack_gop(header, frames, records[pos])
            writer.add_gop(entry.index, entry.first_frame, entry.n_frames, payload)


@pytest.fixture()
def plain_gsv(clip: Path, tmp_path: Path) -> Path:
    gsv = tmp_path / "plain.gsv"
    assert main(["encode", str(clip), "-o", str(gsv), "--gop", "2", *FAST_ARGS, *ONE_PROCESS]) == 0
    return gsv


def test_decode_no_enhance_gives_the_raw_gaussian_output(
    plain_gsv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a strong base-network record (t = 1) in GOP 0, none in GOP 1: a valid file the encoder's
    # rate-distortion rule would not write with these weights, so the two outputs differ
    tag = model_tag(WEIGHTS_SHA256)
    record = encode_record(EnhancerRecord(tag, 255))
    gsv = tmp_path / "rec.gsv"
    _with_records(plain_gsv, gsv, [record, b""])
    raw = np.stack(list(iter_decoded(plain_gsv)))

    assert main(["decode", str(gsv), "-o", str(tmp_path / "enh.y4m")]) == 0
    assert main(["decode", str(gsv), "-o", str(tmp_path / "raw.y4m"), "--no-enhance"]) == 0
    enhanced = np.stack(list(iter_frames(tmp_path / "enh.y4m")))
    no_enhance = np.stack(list(iter_frames(tmp_path / "raw.y4m")))
    np.testing.assert_array_equal(no_enhance, raw)
    np.testing.assert_array_equal(enhanced[:2], apply_enhancer(record, raw[:2]))
    np.testing.assert_array_equal(enhanced[2:], raw[2:])
    assert not np.array_equal(enhanced[:2], raw[:2])

    capsys.readouterr()
    assert main(["info", str(gsv)]) == 0
    text = capsys.readouterr().out
    share = 100 * len(record) / gsv.stat().st_size
    assert f"enhancer: {len(record)} bytes in 1 of 2 GOPs ({share:.2f}% of the file)" in text
    assert f"enhancer {len(record)} B (base, t 1.000)" in text
    assert main(["info", str(gsv), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gops"][0]["enhancer"] == {"kind": "base", "t": 1.0, "model_tag": f"{tag:04x}"}
    assert info["gops"][1]["enhancer_bytes"] == 0 and "enhancer" not in info["gops"][1]
    assert info["gops_enhanced"] == 1


def test_json_quality_measures_enhanced_and_raw_output(plain_gsv: Path, clip: Path) -> None:
    """The measurement behind ``encode --json`` on a file whose GOP 0 carries a record."""
    import io

    from codec.cli import _measure_written

    record = encode_record(EnhancerRecord(model_tag(WEIGHTS_SHA256), 200))
    gsv = plain_gsv.with_name("rec.gsv")
    _with_records(plain_gsv, gsv, [record, b""])
    text = io.StringIO()
    m = _measure_written(clip, gsv, 0, text)
    plain = _measure_written(clip, plain_gsv, 0, io.StringIO())
    assert m["quality_no_enhance"] == plain["quality"] == plain["quality_no_enhance"]
    assert m["quality"] != m["quality_no_enhance"]
    assert "without the enhancer PSNR" in text.getvalue()
    source = np.stack(list(iter_frames(clip)))
    enhanced = np.stack(list(iter_decoded(gsv)))
    mse = ((enhanced.astype(float) - source) ** 2).mean(axis=(1, 2, 3))
    assert m["quality"]["psnr_db"] == pytest.approx(np.mean(10 * np.log10(255**2 / mse)), abs=0.01)


def test_missing_weights_name_the_way_out(
    plain_gsv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gsv = tmp_path / "rec.gsv"
    _with_records(
        plain_gsv, gsv, [encode_record(EnhancerRecord(model_tag(WEIGHTS_SHA256), 100))] * 2
    )
    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_SHA256", "0" * 64)  # "damaged" weights
    out = tmp_path / "o.y4m"
    assert main(["decode", str(gsv), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "enhancer.pt" in err and "--no-enhance" in err and not out.exists()
    assert main(["decode", str(gsv), "-o", str(out), "--no-enhance"]) == 0


def test_a_damaged_record_is_reported_not_crashed_on(
    plain_gsv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gsv = tmp_path / "bad.gsv"
    _with_records(plain_gsv, gsv, [b"", b"\x00\x00\x10\xf0"])  # unknown flag bits
    assert main(["info", str(gsv)]) == 1
    err = capsys.readouterr().err
    assert "GOP 1" in err and "enhancer record: unknown flag bits" in err
    assert main(["decode", str(gsv), "-o", str(tmp_path / "o.y4m")]) == 2
    assert "unknown flag bits" in capsys.readouterr().err
    # the raw output does not read the record
    assert main(["decode", str(gsv), "-o", str(tmp_path / "r.y4m"), "--no-enhance"]) == 0


def test_enhance_flag_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = write_clip(tmp_path / "c.mp4", moving_blob_frames(t=1, h=16, w=16))
    gsv = str(tmp_path / "x.gsv")
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(clip), "-o", gsv, "--enhance", "--no-enhance"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
    assert main(["encode", str(clip), "-o", gsv, "--enhance", "--set", "enhance=base"]) == 2
    assert "--enhance and --set enhance=base disagree" in capsys.readouterr().err
    assert not Path(gsv).exists()
    help_text = ""
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "off in every preset" in help_text


def test_bench_enhance_puts_the_enhanced_curve_beside_plain(clip: Path, tmp_path: Path) -> None:
    """``splatpack bench --enhance``: one encode per level gives both curves; the plain one is
    the same files without their enhancer records."""
    out = tmp_path / "bench"
    argv = ["bench", str(clip), "--frames", "4", "--gop", "4", "--qualities", "1,2,3,4"]
    argv += ["--no-classic", "--no-baseline", "--iters", "40", "--out", str(out)]
    assert main([*argv, "--enhance"]) == 0
    doc = json.loads((out / "results.json").read_text())
    by = {
        c: [p for p in doc["points"] if p["codec"] == c] for c in ("splatpack", "splatpack+enhance")
    }
    assert [p["setting"] for p in by["splatpack"]] == [
        p["setting"] for p in by["splatpack+enhance"]
    ]
    for plain, enh in zip(by["splatpack"], by["splatpack+enhance"], strict=True):
        extra = enh["extra"]["enhancer_bytes"]
        assert enh["extra"]["bytes"] == plain["extra"]["bytes"] + extra
        if extra:  # kept only where D + lambda R paid: the error fell
            assert enh["psnr_db"] >= plain["psnr_db"]
        else:
            assert enh["psnr_db"] == plain["psnr_db"]
    assert set(doc["extra"]["enhance_bd_rate"]) == {"psnr_db", "ms_ssim_db"}
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0  # without --enhance: one curve
    plain_doc = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert {p["codec"] for p in plain_doc["points"]} == {"splatpack"}
    # the same Gaussians; the files differ only by the header's note of the enhance setting
    for a, b in zip(plain_doc["points"], by["splatpack"], strict=True):
        assert a["psnr_db"] == b["psnr_db"]
        assert abs(a["extra"]["bytes"] - b["extra"]["bytes"]) <= 32
