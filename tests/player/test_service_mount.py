"""The service serves the player page and its modules under /player, with range requests."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.player_static import PLAYER_DIR, mount_player


def test_player_is_served_under_player_with_ranges() -> None:
    app = FastAPI()
    assert mount_player(app)
    client = TestClient(app)
    page = client.get("/player/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'import { Player } from "./src/player.js"' in page.text
    assert client.get("/player", follow_redirects=False).status_code == 307
    js = client.get("/player/src/gop.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    part = client.get("/player/src/gop.js", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == js.content[10:20]
    # only the page and its modules: not the tests, not node_modules
    assert client.get("/player/test/decoder.test.js").status_code == 404
    assert client.get("/player/package.json").status_code == 404


def test_no_player_folder_means_no_mount(tmp_path: object) -> None:
    app = FastAPI()
    assert not mount_player(app, PLAYER_DIR / "does-not-exist")
    assert TestClient(app).get("/player/").status_code == 404
