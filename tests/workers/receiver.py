"""A real HTTP(S) callback receiver on 127.0.0.1 for worker tests.

The SSRF guard refuses loopback by default, so tests that expect a delivery allow
private addresses explicitly.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = int | tuple[int, dict[str, str]]


class Receiver:
    """A tiny HTTP(S) server answering POSTs with a scripted list of status codes
    (or ``(status, headers)`` pairs).

    It records each request as it arrives (``bodies`` parsed, ``raw_bodies`` as sent,
    ``headers``); the first ``hold_first`` requests then wait for ``release`` (a receiver
    that hangs) before answering.
    """

    def __init__(
        self, statuses: list[Answer], tls: ssl.SSLContext | None = None, hold_first: int = 0
    ) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.hold_first = hold_first
        self.release = threading.Event()
        self.answered = 0
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with lock:
                    receiver.raw_bodies.append(raw)
                    receiver.bodies.append(json.loads(raw))
                    receiver.headers.append(dict(self.headers))
                    held = len(receiver.bodies) <= receiver.hold_first
                    answer = receiver.statuses.pop(0) if receiver.statuses else 200
                if held:
                    receiver.release.wait(60)
                code, extra = answer if isinstance(answer, tuple) else (answer, {})
                try:
                    self.send_response(code)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client is gone (killed, timed out)
                    return
                with lock:
                    receiver.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url_for(self, host: str) -> str:
        """This receiver's URL with ``host`` in place of 127.0.0.1."""
        return self.url.replace("127.0.0.1", host, 1)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
