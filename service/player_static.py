"""The browser player (``player/`` at the repository root) served under ``/player``.

Only the page and its ES modules are served (``/player/`` and ``/player/src/...``), not the
player's tests or ``node_modules``. Static files go through Starlette's ``FileResponse``, which
answers HTTP range requests; so do a job's outputs on local storage
(``/v1/jobs/{id}/outputs/{name}``), which is how the player fetches one GOP at a time.
When the package is installed without the ``player/`` folder the mount is skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

# `splatpack serve` (frontdoor/cli.py) prints the player's address beside the API's.
PLAYER_DIR = Path(__file__).resolve().parent.parent / "player"
PLAYER_PATH = "/player"

log = logging.getLogger(__name__)


def mount_player(app: FastAPI, directory: Path = PLAYER_DIR) -> bool:
    """Serve the player page at ``/player/``; False (and a log line) when it is not there."""
    index = directory / "index.html"
    if not index.is_file() or not (directory / "src").is_dir():
        log.warning("player not found at %s; /player is not served", directory)
        return False

    @app.get(PLAYER_PATH, include_in_schema=False)
    def player_redirect() -> RedirectResponse:
        return RedirectResponse(f"{PLAYER_PATH}/", status_code=307)

    @app.get(f"{PLAYER_PATH}/", include_in_schema=False)
    def player_page() -> FileResponse:
        return FileResponse(index, media_type="text/html")

    app.mount(f"{PLAYER_PATH}/src", StaticFiles(directory=directory / "src"), name="player-src")
    return True
