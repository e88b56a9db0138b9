"""``make demo``: start the all-in-one service, transcode a clip through the REST API, report.

Runs ``splatpack serve`` as a child process (embedded Postgres, local storage,
local Ray, API, runner), reads the API key it prints, submits the clip with
``splatpack submit --wait`` (upload, progress bar, download), prints the
quality report and where the outputs are, then stops the service with Ctrl-C
semantics (SIGINT). The clip is ``../shared/data/carphone_pristine.mp4`` when
present, else a synthetic one made here with PyAV.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from codec.metrics import ssim_label

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "carphone_pristine.mp4"
KEY_LINE = "API key for tenant 'default':"


def make_synthetic_clip(
    path: Path, n_frames: int = 30, width: int = 176, height: int = 144
) -> Path:
    """A small H.264 clip: a gradient background with a moving disc."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for t in range(n_frames):
            cx, cy = 30 + 4 * t, height / 2 + 20 * np.sin(t / 5)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 18**2
            frame = np.stack([xx / width * 255, yy / height * 255, np.full_like(xx, 90)], -1)
            frame[disc] = (240, 200, 40)
            video_frame = av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontdoor.demo", description=__doc__)
    parser.add_argument("--clip", type=Path, default=None, help="video to transcode")
    parser.add_argument("--frames", type=int, default=20, help="encode the first N frames")
    parser.add_argument("--gop", type=int, default=10)
    parser.add_argument("--quality", type=int, default=5)
    parser.add_argument("--preset", choices=("ultrafast", "fast", "slow"), default="fast")
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "demo")
    parser.add_argument("--port", type=int, default=8000, help="API port (a free one if taken)")
    args = parser.parse_args(argv)

    data_dir = args.data_dir.resolve()
    clip = args.clip or (DEFAULT_CLIP if DEFAULT_CLIP.is_file() else None)
    if clip is None:
        clip = make_synthetic_clip(data_dir / "synthetic.mp4")
        print(f"no reference clip found; made {clip}")
    port = args.port if _port_free(args.port) else _free_port()
    api_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SPLATPACK_DATA_DIR": str(data_dir),
            "SPLATPACK_API_PORT": str(port),
            "SPLATPACK_PUBLIC_BASE_URL": api_url,
        }
    )
    print(f"starting splatpack serve (data in {data_dir}) ...", flush=True)
    serve = subprocess.Popen(
        [sys.executable, "-m", "frontdoor", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    key_box: list[str] = []
    key_seen = threading.Event()

    def pump() -> None:
        assert serve.stdout is not None
        for line in serve.stdout:
            print(f"  [serve] {line}", end="", flush=True)
            if KEY_LINE in line:
                key_box.append(line.split(KEY_LINE, 1)[1].strip())
                key_seen.set()

    pump_thread = threading.Thread(target=pump, daemon=True)
    pump_thread.start()
    try:
        deadline = time.monotonic() + 300
        while not key_seen.wait(0.5):
            if serve.poll() is not None or time.monotonic() > deadline:
                print("error: splatpack serve did not come up (see its output above)")
                return 1
        from frontdoor.cli import main as splatpack

        out_dir = data_dir / "outputs"
        code = splatpack(
            [
                "submit",
                str(clip),
                "--wait",
                "--api",
                api_url,
                "--key",
                key_box[0],
                "--preset",
                args.preset,
                "--quality",
                str(args.quality),
                "--gop",
                str(args.gop),
                "--frames",
                str(args.frames),
                "--out",
                str(out_dir),
            ]
        )
        if code != 0:
            return code
        report = json.loads((out_dir / "report.json").read_text())
        summary = {k: report.get(k) for k in ("n_frames", "bytes", "bits_per_pixel", "psnr_db")}
        label = ssim_label(bool(report.get("ms_ssim_used_ssim_fallback"))).lower().replace("-", "_")
        summary.update({label: report.get("ms_ssim"), "timings_s": report.get("timings_s")})
        print(json.dumps(summary, indent=2))
        print(
            f"outputs in {out_dir} (decode with: splatpack decode {out_dir / 'video.gsv'} -o out.mp4)"
        )
        return 0
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        pump_thread.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
