"""ffmpeg habits of the command line: --version, global options anywhere, - for stdin/stdout,
-y/-n, frame ranges, messages that name the flag, atomic outputs, salvage of damaged files."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec.api import iter_decoded
from codec.bitstream import GOP_FORMAT_VERSION
from codec.cli import main
from codec.container import ContainerReader, ContainerWriter
from codec.video import iter_frames
from frontdoor.cli import main as splatpack
from tests.codec.test_cli import FAST_ARGS, write_clip
from tests.codec.test_gop import moving_blob_frames

FIXTURE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "gsv" / "gop_v5.gsv"
)  # 6 frames, 25 fps
REPO = Path(__file__).resolve().parents[2]


def reference_frames() -> np.ndarray:
    return np.stack(list(iter_decoded(FIXTURE)))


def y4m_frames(path: Path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def four_gop_file(tmp_path: Path) -> Path:
    """A .gsv of 4 GOPs (3 frames each) made of the fixture's first GOP."""
    reader = ContainerReader(FIXTURE)
    payload = reader.read_gop(0)
    out = tmp_path / "four.gsv"
    with ContainerWriter(out, reader.header) as w:
        for g in range(4):
            w.add_gop(g, 3 * g, 3, payload)
    return out


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    for entry in (main, splatpack):
        with pytest.raises(SystemExit) as exit_info:
            entry(["--version"])
        assert exit_info.value.code == 0
        assert f"GOP format {GOP_FORMAT_VERSION}" in capsys.readouterr().out


def test_global_options_before_or_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert splatpack(["-v", "info", str(FIXTURE)]) == 0
    assert splatpack(["info", str(FIXTURE), "-v"]) == 0
    assert main(["-v", "info", str(FIXTURE), "--json"]) == 0
    capsys.readouterr()


def test_info_shows_duration_bitrate_gops_and_frame_kinds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["info", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    size = FIXTURE.stat().st_size
    assert "0.24 s" in out and f"{size * 8 / 0.24 / 1000:.1f} kb/s" in out
    assert "2 GOPs" in out and "2 I, 3 P, 1 scene-cut I" in out


def test_overwrite_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.y4m"
    out.write_bytes(b"precious")
    assert main(["decode", str(FIXTURE), "-o", str(out)]) == 2
    assert "exists already; add -y" in capsys.readouterr().err
    assert main(["-n", "decode", str(FIXTURE), "-o", str(out)]) == 2
    assert "-n" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["decode", str(FIXTURE), "-o", str(out), "-y"]) == 0
    np.testing.assert_array_equal(y4m_frames(out), reference_frames())
    assert no_temp_files(tmp_path)


def test_decode_frame_ranges_by_number_and_time(tmp_path: Path) -> None:
    ref = reference_frames()
    a, b = tmp_path / "a.y4m", tmp_path / "b.y4m"
    assert main(["decode", str(FIXTURE), "-o", str(a), "--start", "2", "--frames", "3"]) == 0
    np.testing.assert_array_equal(y4m_frames(a), ref[2:5])
    # 25 fps: 0.12 s is frame 3 (a GOP boundary: decoding seeks straight to GOP 1)
    assert main(["decode", str(FIXTURE), "-o", str(b), "-ss", "0.12", "-t", "0.08"]) == 0
    np.testing.assert_array_equal(y4m_frames(b), ref[3:5])


def test_messages_name_the_users_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = write_clip(tmp_path / "c.mp4", moving_blob_frames(t=2, h=16, w=16))
    gsv = str(tmp_path / "x.gsv")
    cases = {
        ("encode", str(clip), "-o", gsv, "--frames", "0"): "--frames 0",
        ("encode", str(clip), "-o", gsv, "--set", "foo=1"): "--set foo",
        ("encode", str(clip), "-o", gsv, "--start", "-3"): "--start -3",
        ("encode", str(clip), "-o", gsv, "--start", "5"): "--start",
        ("encode", str(clip), "-o", gsv, "-ss", "9"): "-ss",
        ("encode", str(tmp_path / "missing.mp4"), "-o", gsv): "missing.mp4",
        ("encode", str(clip), "-o", str(tmp_path / "wrong.mp4")): ".gsv",
        ("encode", str(clip), "-o", gsv, "--quality", "11"): "--quality",
        ("decode", str(FIXTURE), "-o", str(tmp_path / "o.y4m"), "--start", "99"): "--start",
        ("decode", str(FIXTURE), "-o", str(tmp_path / "o.y4m"), "-t", "soon"): "-t soon",
        ("decode", str(FIXTURE), "-o", str(tmp_path / "o.avi")): "-o",
        ("decode", str(tmp_path / "none.gsv"), "-o", str(tmp_path / "o.y4m")): "none.gsv",
    }
    for argv, needle in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err, (argv, err)
        assert "None" not in err and "__init__" not in err and "max_frames" not in err
    assert not (tmp_path / "x.gsv").exists() and not (tmp_path / "wrong.mp4").exists()
    assert no_temp_files(tmp_path)


def test_encode_range_and_refuses_a_start_past_the_end(tmp_path: Path) -> None:
    frames = moving_blob_frames(t=5, h=24, w=32)
    clip = write_clip(tmp_path / "c.mp4", frames)
    gsv = tmp_path / "r.gsv"
    assert (
        main(["encode", str(clip), "-o", str(gsv), "--start", "2", "--frames", "2", *FAST_ARGS])
        == 0
    )
    decoded = list(iter_decoded(gsv))
    assert len(decoded) == 2

    def err(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(int) - b.astype(int)).mean())

    assert err(decoded[0], frames[2]) < err(decoded[0], frames[0])  # it starts at frame 2
    late = tmp_path / "late.gsv"
    assert main(["encode", str(clip), "-o", str(late), "--start", "9", *FAST_ARGS]) == 2
    assert not late.exists() and no_temp_files(tmp_path)


def test_failed_decode_leaves_no_output_and_salvage_keeps_intact_gops_bit_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(FIXTURE.read_bytes())
    second = ContainerReader(FIXTURE).gops[1]
    data[second.offset + 28 + second.length // 2] ^= 0x10  # one flipped byte in GOP 1's payload
    bad = tmp_path / "bad.gsv"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.y4m"
    assert main(["decode", str(bad), "-o", str(out)]) == 2
    assert "--salvage" in capsys.readouterr().err
    assert not out.exists() and no_temp_files(tmp_path)

    assert main(["decode", str(bad), "-o", str(out), "--salvage"]) == 1
    err = capsys.readouterr().err
    assert "GOP 1 (frames 3..5)" in err
    np.testing.assert_array_equal(y4m_frames(out), reference_frames()[:3])

    assert main(["info", str(bad)]) == 1
    assert "damaged: GOP 1" in capsys.readouterr().err


def test_salvage_of_a_cut_file_decodes_its_complete_gops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = four_gop_file(tmp_path)
    ref = np.stack(list(iter_decoded(whole)))
    cut = tmp_path / "cut.gsv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    assert main(["info", str(cut)]) == 1
    capsys.readouterr()
    out = tmp_path / "cut.y4m"
    assert main(["decode", str(cut), "-o", str(out)]) == 2
    assert not out.exists()
    assert main(["decode", str(cut), "-o", str(out), "--salvage"]) == 1
    got = y4m_frames(out)
    assert len(got) >= 3 and len(got) % 3 == 0
    np.testing.assert_array_equal(got, ref[: len(got)])
    assert "frames from" in capsys.readouterr().err


def test_stdin_and_stdout_round_trip(tmp_path: Path) -> None:
    y4m_in = tmp_path / "in.y4m"
    assert main(["decode", str(FIXTURE), "-o", str(y4m_in)]) == 0  # any y4m will do as input
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "codec"]
    enc = subprocess.run(
        [*cmd, "encode", "-", "-o", "-", *FAST_ARGS, "--frames", "3"],
        input=y4m_in.read_bytes(),
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert enc.returncode == 0, enc.stderr.decode()
    assert b"bpp" in enc.stderr  # messages go to stderr when stdout carries the file
    gsv = enc.stdout
    assert ContainerReader(io.BytesIO(gsv)).n_frames == 3
    dec = subprocess.run(
        [*cmd, "decode", "-", "-o", "-"], input=gsv, capture_output=True, cwd=REPO, env=env,
        timeout=300,
    )  # fmt: skip
    assert dec.returncode == 0, dec.stderr.decode()
    out = tmp_path / "out.y4m"
    out.write_bytes(dec.stdout)
    np.testing.assert_array_equal(y4m_frames(out), np.stack(list(iter_decoded(gsv))))


def test_a_black_or_flat_clip_costs_a_few_hundred_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (("black", 0), ("grey", 128)):
        clip = write_clip(tmp_path / f"{name}.mp4", np.full((3, 144, 176, 3), value, np.uint8))
        gsv = tmp_path / f"{name}.gsv"
        assert main(["encode", str(clip), "-o", str(gsv), "--quality", "5", "--quiet"]) == 0
        out = capsys.readouterr().out
        reader = ContainerReader(gsv)
        assert sum(g.length for g in reader.gops) < 400, name  # was 13.5 KB at 176x144
        if value == 0:
            assert "lossless" in out  # not a bare "PSNR 100.00 dB"
        else:
            assert "dB" in out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_hostile_file_is_refused_by_the_command_before_loading_the_decoder(
    tmp_path: Path,
) -> None:
    """The 281-byte file claiming an 8192x8192 frame took 2.7 GB and 6-15 s; the whole command now
    refuses it from the index, without importing torch: well under 300 MB and 1 s of CPU."""
    from tests.codec.test_decode_limits import CRAFTED

    evil = tmp_path / "evil.gsv"
    evil.write_bytes(CRAFTED["one_8192_frame"]())
    out = tmp_path / "evil.y4m"
    # the child reports its own peak (VmHWM: per process image, unlike ru_maxrss after fork)
    script = (
        "import sys, time\n"
        "from codec.cli import main\n"
        f"rc = main(['decode', {str(evil)!r}, '-o', {str(out)!r}])\n"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('PEAK_KB', hwm, 'CPU_S', time.process_time(), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "memory budget" in proc.stderr, proc.stderr
    words = proc.stderr.split()
    peak_kb = int(words[words.index("PEAK_KB") + 1])
    cpu_s = float(words[words.index("CPU_S") + 1])
    assert peak_kb < 300 * 1024 and cpu_s < 1.0, proc.stderr
    assert not out.exists()
