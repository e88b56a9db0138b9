"""Render speed of the player in headless Chromium (Debian's chromium, software GL: SwiftShader).

Serves the player page and the given ``.gsv`` files on 127.0.0.1, then with
``tests/player/browser.mjs``: opens each file in the player, plays it for a few seconds (the
player's own render-time figure) and times 20 renders of one frame at zoom 1 and 2; and once,
a sweep of random Gaussians (1-4 px, 720x528 by default) to find how many Gaussians per frame
it renders at 30 fps. Saves ``bench/results/player_render.json``.

    .venv/bin/python bench/player_render.py bench/results/tmp/player/*.gsv
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.player_static import mount_player

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SWEEP = "100,250,500,1000,2000,5000,10000,20000"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*")
    parser.add_argument("--sweep", default=SWEEP)
    parser.add_argument("--size", default="720x528")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/player_render.json")
    args = parser.parse_args(argv)
    node = shutil.which("node")
    if node is None:
        parser.error("node is missing: run `make setup`")
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp)
        for f in args.files:
            shutil.copy(f, media / f.name)
        app = FastAPI()
        mount_player(app)
        app.mount("/media", StaticFiles(directory=media))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        results: dict = {"files": [], "sweep": None}
        try:
            for f in args.files:
                out = media / f"out-{f.stem}"
                subprocess.run(
                    [node, str(REPO / "tests/player/browser.mjs"), f"{base}/player/?src=/media/{f.name}",
                     str(out), "--play-ms", "4000", "--bench", "20"],
                    check=True, timeout=600,
                )  # fmt: skip
                r = json.loads((out / "result.json").read_text())
                row = {"file": f.name, "bench": r.get("bench"), "played": r.get("played")}
                results["files"].append(row)
                b, p = r["bench"], r["played"]
                print(
                    f"{f.name}: {b['gaussians']} Gaussians, {b['renderer']}: render {b['zoom1_ms']:.1f} ms at zoom 1 "
                    f"({1000 / b['zoom1_ms']:.0f} fps), {b['zoom2_ms']:.1f} ms at zoom 2; while playing: "
                    f"frame {p['frame']} after 4 s, render {p['renderMs']:.1f} ms, decode {p['decodeMs']:.1f} ms",
                    flush=True,
                )
            out = media / "out-sweep"
            subprocess.run(
                [node, str(REPO / "tests/player/browser.mjs"), f"{base}/player/", str(out),
                 "--sweep", args.sweep, "--size", args.size],
                check=True, timeout=600,
            )  # fmt: skip
            results["sweep"] = json.loads((out / "result.json").read_text())["sweep"]
            for s in results["sweep"]:
                print(
                    f"{s['gaussians']} Gaussians at {args.size}: upload {s['upload_ms']:.1f} ms, "
                    f"draw {s['draw_ms']:.1f} ms, {1000 / s['frame_ms']:.1f} fps",
                    flush=True,
                )
        finally:
            server.should_exit = True
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
